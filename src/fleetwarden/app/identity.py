"""The identity services: the device CA on disk, certificates in the store, API operators.

Files: the CA lives in ``FLEETWARDEN_HOME/ca/`` (directory mode 0700): ``ca.crt`` (the public
certificate) and ``ca.key`` (mode 0600, PKCS#8 encrypted under the CA passphrase).  The
passphrase comes from ``--passphrase-file FILE``, else the ``FLEETWARDEN_CA_PASSPHRASE``
environment variable, else the file ``ca init`` generated when given neither:
``FLEETWARDEN_HOME/secrets/ca-passphrase`` (32 random bytes, URL-safe, mode 0600 in a 0700 folder
apart from ``ca/``).  That default keeps the command-line contract (``ca init`` then ``ca issue``
with no other set-up) working on a single node; the key file alone (a copied ``ca/`` folder, a
backup) is still useless.  Blind spot: anyone who reads both folders as this user has the key; in
production, move the passphrase to a secret manager and pass it by the variable or
``--passphrase-file``, then delete the generated file.  Device keys that FleetWarden generates are written next to the
certificate (``DIR/DEVICE_ID.key``, mode 0600) and never stored.

Order of effects: a certificate is recorded in the store (audited) *before* its files are written,
so a failure can leave a recorded certificate nobody received (harmless, revocable) but never a
valid certificate the store does not know.

Operators: ``add_user`` returns a fresh token (32 random bytes, URL-safe base64 with a ``fwt_``
prefix so secret scanners recognise it) exactly once; only its SHA-256 is stored, and
:func:`authenticate` looks a presented token up by that hash.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetwarden.config import home
from fleetwarden.control import ca as x509ca
from fleetwarden.core.errors import InputError
from fleetwarden.store import Store
from fleetwarden.store import identity as ids
from fleetwarden.store.models import OPERATOR_ROLES

__all__ = [
    "PASSPHRASE_ENV",
    "CAInfo",
    "CrlResult",
    "IdentityError",
    "IssueResult",
    "Operator",
    "add_user",
    "authenticate",
    "certificate_record",
    "ca_dir",
    "ca_export",
    "ca_init",
    "crl",
    "disable_user",
    "issue",
    "list_certificates",
    "list_users",
    "load_authority",
    "revoke",
    "rotate",
]

PASSPHRASE_ENV = "FLEETWARDEN_CA_PASSPHRASE"
CA_CERT, CA_KEY = "ca.crt", "ca.key"
GENERATED_PASSPHRASE = "ca-passphrase"  # under FLEETWARDEN_HOME/secrets, written by `ca init` only
MIN_PASSPHRASE = 8
MAX_PASSPHRASE = 1024
MAX_FILE_BYTES = 64 * 1024
TOKEN_PREFIX = "fwt_"
MAX_TOKEN_CHARS = 200
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
TOUCH_EVERY_S = 60.0  # last_used_at is refreshed at most once a minute per operator


class IdentityError(InputError):
    """Bad input to an identity service: no CA, no passphrase, a bad name, file or role."""


@dataclass(frozen=True)
class CAInfo:
    cert_path: Path
    key_path: Path
    subject: str
    fingerprint: str
    not_after: datetime
    # the passphrase file `ca init` generated (no passphrase was given), else None
    generated_passphrase: Path | None = None


@dataclass(frozen=True)
class IssueResult:
    device_id: str
    serial: str
    fingerprint: str
    key_type: str
    not_after: datetime
    cert_path: Path
    key_path: Path | None  # None when the certificate was made for a CSR's key
    in_inventory: bool
    superseded: tuple[str, ...] = ()


@dataclass(frozen=True)
class CrlResult:
    path: Path
    number: int
    entries: int
    next_update: datetime


@dataclass(frozen=True)
class Operator:
    """An authenticated API user (what :func:`authenticate` returns)."""

    id: int
    name: str
    role: str


# ---------------------------------------------------------------------- files and secrets


def ca_dir() -> Path:
    """``FLEETWARDEN_HOME/ca`` (not created here)."""
    return home() / "ca"


def _read_small(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise IdentityError(f"{path}: no such {what} file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise IdentityError(f"{path}: {what} file larger than {MAX_FILE_BYTES // 1024} KiB")
    return path.read_bytes()


def generated_passphrase_path() -> Path:
    """Where ``ca init`` keeps the passphrase it generated (see the module docstring)."""
    return home() / "secrets" / GENERATED_PASSPHRASE


def read_passphrase(passphrase_file: Path | None = None, *, new: bool = False) -> bytes:
    """The CA passphrase: ``passphrase_file`` (its first line) > ``FLEETWARDEN_CA_PASSPHRASE`` > the
    file ``ca init`` generated.  Raises :class:`IdentityError` when there is none (``new``: the
    caller will generate one instead)."""
    if passphrase_file is not None:
        secret = _first_line(passphrase_file)
    elif os.environ.get(PASSPHRASE_ENV):
        secret = os.environ[PASSPHRASE_ENV].encode()
    elif not new and generated_passphrase_path().is_file():
        secret = _first_line(generated_passphrase_path())
    else:
        secret = b""
    if not secret:
        raise IdentityError(
            f"the CA key needs a passphrase: set {PASSPHRASE_ENV} or pass --passphrase-file FILE"
        )
    if len(secret) > MAX_PASSPHRASE:
        raise IdentityError(f"the CA passphrase is longer than {MAX_PASSPHRASE} bytes")
    if new and len(secret) < MIN_PASSPHRASE:
        raise IdentityError(f"the CA passphrase must have at least {MIN_PASSPHRASE} characters")
    return secret


def _first_line(path: Path) -> bytes:
    raw = _read_small(path, "passphrase").splitlines()
    return raw[0] if raw else b""


def _new_passphrase(passphrase_file: Path | None) -> tuple[bytes, Path | None]:
    """The passphrase for a new CA, and the file it was generated into (None when given)."""
    if passphrase_file is not None or os.environ.get(PASSPHRASE_ENV):
        return read_passphrase(passphrase_file, new=True), None
    path = generated_passphrase_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    secret = secrets.token_urlsafe(32).encode()
    _write_private(path, secret + b"\n", 0o600, exclusive=True)
    return secret, path


def _write_private(path: Path, data: bytes, mode: int, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` atomically, created with ``mode`` (never briefly wider).  With
    ``exclusive`` an existing ``path`` is never replaced (:class:`IdentityError`)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # fails when path exists, unlike rename
        else:
            os.replace(tmp, path)
    except FileExistsError:
        raise IdentityError(f"{path} already exists; refusing to replace it") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _out_dir(path: Path) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise IdentityError(f"{path}: not a directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _utc(ts: datetime) -> float:
    return ts.timestamp()


# ---------------------------------------------------------------------- the CA


def ca_init(
    store: Store,
    *,
    passphrase_file: Path | None = None,
    name: str = "FleetWarden device CA",
    days: int = 3650,
    actor: str = "cli",
) -> CAInfo:
    """Create the CA under :func:`ca_dir`; refuses when one is already there (it is never replaced:
    every certificate it issued would die with it)."""
    folder = ca_dir()
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    if cert_path.exists() or key_path.exists():
        raise IdentityError(
            f"a CA already exists in {folder}; refusing to replace it (move that folder away to start over)"
        )
    passphrase, generated = _new_passphrase(passphrase_file)
    authority = x509ca.create_ca(now=datetime.now(UTC), name=name, days=days)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    _write_private(key_path, x509ca.encrypted_key_pem(authority.key, passphrase), 0o600, exclusive=True)
    _write_private(cert_path, x509ca.certificate_pem(authority.certificate), 0o644, exclusive=True)
    info = _ca_info(authority.certificate, cert_path, key_path, generated)
    details = {
        "fingerprint": info.fingerprint,
        "subject": info.subject,
        "not_after": info.not_after.isoformat(),
    }
    ids.record_ca_event(store, "ca.init", details, actor=actor)
    return info


def _ca_info(cert: Any, cert_path: Path, key_path: Path, generated: Path | None = None) -> CAInfo:
    return CAInfo(
        cert_path,
        key_path,
        cert.subject.rfc4514_string(),
        x509ca.fingerprint(cert),
        cert.not_valid_after_utc,
        generated,
    )


def _ca_cert_pem() -> bytes:
    path = ca_dir() / CA_CERT
    if not path.is_file():
        raise IdentityError(f"no CA in {ca_dir()}: run `fleetwarden ca init` first")
    return _read_small(path, "CA certificate")


def load_authority(passphrase_file: Path | None = None) -> x509ca.CertificateAuthority:
    """The CA with its decrypted key (in memory only)."""
    cert_pem = _ca_cert_pem()
    key_path = ca_dir() / CA_KEY
    if not key_path.is_file():
        raise IdentityError(f"{key_path}: the CA key is missing")
    return x509ca.load_ca(cert_pem, _read_small(key_path, "CA key"), read_passphrase(passphrase_file))


def ca_export(out: Path) -> CAInfo:
    """Write the CA certificate (PEM) to ``out``; needs no passphrase."""
    pem = _ca_cert_pem()
    out = Path(out)
    _out_dir(out.parent if str(out.parent) else Path("."))
    _write_private(out, pem, 0o644)
    cert = x509ca.load_certificate(pem, "CA certificate")
    return _ca_info(cert, out, ca_dir() / CA_KEY)


# ---------------------------------------------------------------------- certificates


def issue(
    store: Store,
    device_id: str,
    *,
    out_dir: Path,
    csr: Path | None = None,
    days: int = 365,
    key_type: str = "ecdsa-p256",
    passphrase_file: Path | None = None,
    actor: str = "cli",
) -> IssueResult:
    """A certificate for ``device_id`` (for the key of ``csr``, else for a new ``key_type`` key),
    recorded and audited, written to ``out_dir/DEVICE_ID.crt`` (and ``.key``).  A device that is
    not in the inventory is accepted; the audit entry says so (``in_inventory``)."""
    return _issue(store, device_id, out_dir, csr, days, key_type, passphrase_file, actor, rotate=False)


def rotate(
    store: Store,
    device_id: str,
    *,
    out_dir: Path,
    csr: Path | None = None,
    days: int = 365,
    key_type: str = "ecdsa-p256",
    passphrase_file: Path | None = None,
    actor: str = "cli",
) -> IssueResult:
    """Like :func:`issue`, and the device's previous active certificates become ``superseded``
    (listed on the next CRL with that reason)."""
    return _issue(store, device_id, out_dir, csr, days, key_type, passphrase_file, actor, rotate=True)


def _issue(
    store: Store,
    device_id: str,
    out_dir: Path,
    csr: Path | None,
    days: int,
    key_type: str,
    passphrase_file: Path | None,
    actor: str,
    *,
    rotate: bool,
) -> IssueResult:
    x509ca.validate_device_id(device_id)
    csr_pem = _read_small(csr, "CSR") if csr is not None else None
    if csr_pem is not None:
        x509ca.load_csr(csr_pem)  # a forged or weak request is refused before the passphrase is asked
    folder = _out_dir(out_dir)
    authority = load_authority(passphrase_file)
    now = datetime.now(UTC)
    if csr_pem is not None:
        cert, key = x509ca.issue_from_csr(authority, device_id, csr_pem, now=now, days=days), None
    else:
        cert, key = x509ca.issue_with_key(authority, device_id, now=now, days=days, key_type=key_type)
    recorded = ids.record_certificate(store, certificate_record(device_id, cert, _utc(now)), actor=actor, supersede=rotate)
    cert_path, key_path = _write_issued(folder, device_id, cert, key)
    row = recorded.row
    return IssueResult(
        device_id,
        row.serial,
        row.fingerprint,
        row.key_type,
        cert.not_valid_after_utc,
        cert_path,
        key_path,
        recorded.in_inventory,
        recorded.superseded,
    )


def certificate_record(device_id: str, cert: Any, issued_at: float) -> dict[str, Any]:
    """The store's row of an issued certificate (:data:`fleetwarden.store.identity.CERTIFICATE_FIELDS`):
    its identity, key, validity and PEM (never a private key), issued at ``issued_at``."""
    key_type, key_size = x509ca.describe_key(cert.public_key())
    return {
        "serial": x509ca.serial_hex(cert.serial_number),
        "device_id": device_id,
        "fingerprint": x509ca.fingerprint(cert),
        "key_type": key_type,
        "key_size": key_size,
        "subject": cert.subject.rfc4514_string(),
        "issued_at": issued_at,
        "not_before": _utc(cert.not_valid_before_utc),
        "not_after": _utc(cert.not_valid_after_utc),
        "pem": x509ca.certificate_pem(cert).decode("ascii"),
    }


def _write_issued(folder: Path, device_id: str, cert: Any, key: Any) -> tuple[Path, Path | None]:
    cert_path, key_path = folder / f"{device_id}.crt", None
    if key is not None:
        key_path = folder / f"{device_id}.key"
        _write_private(key_path, x509ca.private_key_pem(key), 0o600)
    _write_private(cert_path, x509ca.certificate_pem(cert), 0o644)
    return cert_path, key_path


def revoke(store: Store, device_id: str, *, reason: str = "unspecified", actor: str = "cli") -> list[str]:
    """Revoke every active certificate of ``device_id``; returns their serials.  Takes effect for
    relying parties at the next ``crl``."""
    x509ca.validate_device_id(device_id)
    if reason not in x509ca.REVOCATION_REASONS or reason == "superseded":
        choices = ", ".join(r for r in x509ca.REVOCATION_REASONS if r != "superseded")
        raise IdentityError(f"unknown revocation reason {reason!r}: one of {choices}")
    rows = ids.revoke_device(store, device_id, reason, now=time.time(), actor=actor)
    return [r.serial for r in rows]


def crl(
    store: Store,
    out: Path,
    *,
    passphrase_file: Path | None = None,
    next_update_days: int = 7,
    actor: str = "cli",
) -> CrlResult:
    """Sign and write the CRL (PEM) of every revoked or superseded, unexpired certificate."""
    authority = load_authority(passphrase_file)
    out = Path(out)
    _out_dir(out.parent if str(out.parent) else Path("."))
    now = datetime.now(UTC)

    def sign(rows: Any, number: int) -> tuple[bytes, int, int]:
        entries = [
            x509ca.Revocation(
                int(r.serial, 16), datetime.fromtimestamp(r.revoked_at, UTC), r.revocation_reason
            )
            for r in rows
        ]
        made = x509ca.build_crl(authority, entries, now=now, number=number, next_update_days=next_update_days)
        return x509ca.crl_pem(made), number, len(entries)

    pem, number, entries = ids.publish_crl(store, sign, now=now.timestamp(), actor=actor)
    _write_private(out, pem, 0o644)
    return CrlResult(
        out, number, entries, datetime.fromtimestamp(now.timestamp() + next_update_days * 86400, UTC)
    )


def list_certificates(store: Store, *, device_id: str | None = None, status: str | None = None) -> list[dict]:
    """Certificates as plain dicts (without the PEM), oldest first."""
    rows = ids.list_certificates(store, device_id=device_id, status=status)
    return [{k: v for k, v in r.to_dict().items() if k != "pem"} for r in rows]


# ---------------------------------------------------------------------- operators


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        shown = repr(name[:60]) if isinstance(name, str) else type(name).__name__
        raise IdentityError(
            f"invalid user name {shown}: 1-100 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
        )
    return name


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_user(store: Store, name: str, role: str, *, actor: str = "cli") -> tuple[dict, str]:
    """Create operator ``name`` with ``role``; returns (its row, its token).  The token exists only
    in this return value: show it once."""
    _check_name(name)
    if role not in OPERATOR_ROLES:
        raise IdentityError(f"unknown role {role!r}: one of {', '.join(OPERATOR_ROLES)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ids.add_operator(store, name, role, _token_hash(token), actor=actor)
    return _public(row), token


def _public(row: Any) -> dict:
    return {k: v for k, v in row.to_dict().items() if k != "token_hash"}


def list_users(store: Store) -> list[dict]:
    """Operators (never their token hashes), by name."""
    return [_public(r) for r in ids.list_operators(store)]


def disable_user(store: Store, name: str, *, actor: str = "cli") -> dict:
    _check_name(name)
    return _public(ids.disable_operator(store, name, actor=actor))


def authenticate(store: Store, token: str) -> Operator | None:
    """The enabled operator holding ``token``, or None (unknown, malformed or disabled)."""
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_CHARS:
        return None
    row = ids.operator_by_token_hash(store, _token_hash(token))
    if row is None or row.disabled:
        return None
    now = time.time()
    if row.last_used_at is None or now - row.last_used_at >= TOUCH_EVERY_S:
        ids.touch_operator(store, row.id, now)
    return Operator(row.id, row.name, row.role)
