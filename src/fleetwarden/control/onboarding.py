"""Attested onboarding: the provisioning request, its signed bytes, and the verdict on it.

Pure logic: request bytes and the facts the store holds go in, a :class:`Verdict` comes out.  No
database, no clock (``now`` is passed), no file.  The service (:mod:`fleetwarden.app.onboarding`)
gathers the facts inside one write transaction, calls :func:`verify_request`, and records what it
decided.

**The request** (a JSON object, at most :data:`MAX_REQUEST_BYTES`; unknown keys are refused):

=================  ====================================================================
``serial``         the maker's serial number: 1-64 of ``A-Z a-z 0-9 . _ -``, first a letter or digit
``vendor``         the maker, as registered with its attestation key (1-200 printable)
``model``          1-200 printable characters
``public_key``     the device's public key, PEM ``PUBLIC KEY`` (Ed25519 or ECDSA P-256) ...
``csr``            ... or a PEM certificate signing request holding it (exactly one of the two;
                   a CSR's own signature must verify: proof that the device holds the key)
``firmware_sha256`` SHA-256 of the running image, 64 hex digits
``site``           where it is being installed (1-200 printable)
``country``        optional ISO 3166 alpha-2 country of the enrolment (as the enrolment
                   gateway observed it)
``source_ip``      optional address the request came from (observed, not signed)
``nonce``          the challenge ``fleetwarden onboard nonce`` issued (16-128 of
                   ``A-Z a-z 0-9 _ -``)
``attestation``    base64 of the maker's signature over :func:`attestation_bytes`
=================  ====================================================================

**The signed bytes** (:func:`attestation_bytes`), UTF-8, each line ending in ``\\n``::

    FLEETWARDEN-ATTESTATION-V1
    serial=<serial>
    vendor=<vendor>
    model=<model>
    public_key_sha256=<SHA-256 hex of the key's DER SubjectPublicKeyInfo>
    firmware_sha256=<lower-case hex>
    site=<site>
    country=<upper-case alpha-2, or nothing>
    nonce=<nonce>

Values hold no control characters (so no newline can forge a line).  Ed25519 signs the bytes
as they are; ECDSA P-256 signs them with SHA-256 (DER-encoded signature).  The maker's key is a
``vendor_keys`` row of purpose ``attestation``.

**The checks** (all run; the first failing one in :data:`REFUSALS` order is *the* reason, the
others are kept as evidence): same serial already active or same key already registered (a
clone); signature valid under an active attestation key of the vendor; nonce issued by us, not
used, not older than the TTL; serial expected (a shipment) with the same vendor and model, at the
expected site and country; firmware hash on the vendor/model's signed list.

**Finding categories.** A duplicate is ``cloned-device``.  A forged attestation and a replayed
nonce are ``credential-misuse``: both present an identity credential the sender does not hold
(a signature it could not make, or a signed request captured from someone else), an attack on
identity rather than a misconfiguration.  An unknown or expired nonce, an unexpected serial,
site or country, a shipment mismatch, a vendor without attestation key or a CSR whose
signature fails are ``policy-violation``: a genuine device can hit them through a slow installer
or a wrong shipment list.  An unapproved firmware hash is ``firmware-tamper``.

*Blind spots.* The maker's key signs what the device presents, so a key extracted from a
factory device signs anything (the duplicate check still catches a clone of an *active*
identity; a clone enrolling before the original looks like the original).  ``country`` and
``source_ip`` are what the enrolment path reports; a request without a country passes the
country check.  Re-enrolling an active device is refused: retire it first.

*Reference.* IETF RFC 9334 (RATS architecture: evidence, verifier, relying party); RFC 8032
(Ed25519); NIST SP 800-213A (device identification and onboarding); FIDO Device Onboard 1.1.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import ipaddress
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fleetwarden.core.errors import InputError

__all__ = [
    "ATTESTATION_HEADER",
    "MAX_REQUEST_BYTES",
    "NONCE_TTL_S",
    "REFUSALS",
    "Baseline",
    "NonceState",
    "OnboardingFacts",
    "ProvisioningRequest",
    "Refusal",
    "RequestError",
    "Shipment",
    "Verdict",
    "attestation_bytes",
    "baseline_for",
    "key_fingerprint",
    "new_nonce",
    "parse_baselines",
    "parse_request",
    "parse_shipments",
    "request_document",
    "sign_attestation",
    "verify_request",
]

ATTESTATION_HEADER = "FLEETWARDEN-ATTESTATION-V1"
MAX_REQUEST_BYTES = 64 * 1024
MAX_SHIPMENT_BYTES = 64 * 1024 * 1024
MAX_PEM = 16 * 1024
MAX_SIGNATURE_B64 = 512
NONCE_TTL_S = 15 * 60.0
_SERIAL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_COUNTRY_RE = re.compile(r"^[A-Za-z]{2}$")
_TEXT_LIMIT = 200
_REQUEST_KEYS = frozenset(
    {
        "serial",
        "vendor",
        "model",
        "public_key",
        "csr",
        "firmware_sha256",
        "site",
        "country",
        "source_ip",
        "nonce",
        "attestation",
    }
)

# refusal code -> finding category; the order is the order of precedence for *the* reason
REFUSALS: dict[str, str] = {
    "duplicate-serial": "cloned-device",
    "duplicate-key": "cloned-device",
    "bad-signature": "credential-misuse",
    "no-attestation-key": "policy-violation",
    "bad-csr": "policy-violation",
    "replayed-nonce": "credential-misuse",
    "unknown-nonce": "policy-violation",
    "expired-nonce": "policy-violation",
    "unknown-serial": "policy-violation",
    "shipment-mismatch": "policy-violation",
    "unexpected-site": "policy-violation",
    "unexpected-country": "policy-violation",
    "unapproved-firmware": "firmware-tamper",
}


class RequestError(InputError, ValueError):
    """A provisioning request, shipment list or baseline file that is not well formed."""


# ---------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class ProvisioningRequest:
    """A parsed, bounded provisioning request (see the module docstring for the fields)."""

    serial: str
    vendor: str
    model: str
    public_key_pem: str  # SubjectPublicKeyInfo PEM (taken out of the CSR when one was sent)
    public_key_sha256: str
    firmware_sha256: str
    site: str
    nonce: str
    attestation: bytes
    country: str | None = None
    source_ip: str | None = None
    csr_pem: str | None = None
    csr_valid: bool = True

    def signed_fields(self) -> dict[str, str]:
        return {
            "serial": self.serial,
            "vendor": self.vendor,
            "model": self.model,
            "public_key_sha256": self.public_key_sha256,
            "firmware_sha256": self.firmware_sha256,
            "site": self.site,
            "country": self.country or "",
            "nonce": self.nonce,
        }


def attestation_bytes(fields: Mapping[str, str] | ProvisioningRequest) -> bytes:
    """The exact bytes a maker signs (module docstring); ``fields`` as :meth:`~ProvisioningRequest.signed_fields`."""
    if isinstance(fields, ProvisioningRequest):
        fields = fields.signed_fields()
    lines = [ATTESTATION_HEADER]
    for name in (
        "serial",
        "vendor",
        "model",
        "public_key_sha256",
        "firmware_sha256",
        "site",
        "country",
        "nonce",
    ):
        value = str(fields.get(name) or "")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise RequestError(f"{name} holds a control character")
        lines.append(f"{name}={value}")
    return ("\n".join(lines) + "\n").encode()


def sign_attestation(private_key: Any, fields: Mapping[str, str] | ProvisioningRequest) -> bytes:
    """The maker's signature (Ed25519, or ECDSA P-256 with SHA-256) over :func:`attestation_bytes`:
    what a factory's tooling does; the tests and the simulated fleet use it."""
    data = attestation_bytes(fields)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    return private_key.sign(data)


def key_fingerprint(public_key: Any) -> str:
    """SHA-256 hex of a public key's DER SubjectPublicKeyInfo (the identity a clone check compares)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def new_nonce() -> str:
    """A fresh enrolment challenge: 256 random bits, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def request_document(
    *,
    serial: str,
    vendor: str,
    model: str,
    public_key: Any,
    firmware_sha256: str,
    site: str,
    nonce: str,
    attestation_key: Any | None,
    country: str | None = None,
    source_ip: str | None = None,
    attestation: bytes | None = None,
) -> dict[str, Any]:
    """A request file's JSON object, signed with ``attestation_key`` (or carrying ``attestation``
    as given, e.g. a forged one): the shape a device's enrolment agent sends."""
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    fields = {
        "serial": serial,
        "vendor": vendor,
        "model": model,
        "public_key_sha256": key_fingerprint(public_key),
        "firmware_sha256": firmware_sha256.lower(),
        "site": site,
        "country": (country or "").upper(),
        "nonce": nonce,
    }
    if attestation is None:
        attestation = sign_attestation(attestation_key, fields) if attestation_key is not None else b""
    doc: dict[str, Any] = {
        "serial": serial,
        "vendor": vendor,
        "model": model,
        "public_key": pem,
        "firmware_sha256": fields["firmware_sha256"],
        "site": site,
        "nonce": nonce,
        "attestation": base64.b64encode(attestation).decode(),
    }
    if country:
        doc["country"] = country.upper()
    if source_ip:
        doc["source_ip"] = source_ip
    return doc


def parse_request(raw: bytes | str | Mapping[str, Any], *, name: str = "request") -> ProvisioningRequest:
    """Check and parse a request (file bytes, text, or an already decoded object).

    Raises :class:`RequestError` naming ``name``, the field and what is wrong."""
    doc = _request_object(raw, name)
    unknown = set(doc) - _REQUEST_KEYS
    if unknown:
        raise RequestError(f"{name}: unknown field(s) {', '.join(sorted(unknown)[:5])}")
    if ("public_key" in doc) == ("csr" in doc):
        raise RequestError(f"{name}: give exactly one of public_key and csr")
    csr_pem, csr_valid = None, True
    if "csr" in doc:
        csr_pem = _pem(doc, "csr", name)
        key, csr_valid = _csr_key(csr_pem, name)
    else:
        key = _public_key(_pem(doc, "public_key", name), name, "public_key")
    return ProvisioningRequest(
        serial=_match(
            doc, "serial", _SERIAL_RE, name, "1-64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)"
        ),
        vendor=_text(doc, "vendor", name),
        model=_text(doc, "model", name),
        public_key_pem=key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
        public_key_sha256=key_fingerprint(key),
        firmware_sha256=_match(doc, "firmware_sha256", _HEX64_RE, name, "64 hex digits").lower(),
        site=_text(doc, "site", name),
        nonce=_match(doc, "nonce", _NONCE_RE, name, "16-128 of A-Z a-z 0-9 _ -"),
        attestation=_signature(doc, name),
        country=_country(doc.get("country"), name),
        source_ip=_ip(doc.get("source_ip"), name),
        csr_pem=csr_pem,
        csr_valid=csr_valid,
    )


def _request_object(raw: bytes | str | Mapping[str, Any], name: str) -> Mapping[str, Any]:
    if isinstance(raw, Mapping):
        return raw
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    if len(data) > MAX_REQUEST_BYTES:
        raise RequestError(f"{name}: larger than {MAX_REQUEST_BYTES // 1024} KiB; not a provisioning request")
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RequestError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise RequestError(f"{name}: not valid JSON{where}") from None
    if not isinstance(doc, dict):
        raise RequestError(f"{name}: expected a JSON object")
    return doc


def _str(doc: Mapping[str, Any], key: str, name: str) -> str:
    value = doc.get(key)
    if value is None or value == "":
        raise RequestError(f"{name}: {key} is missing")
    if not isinstance(value, str):
        raise RequestError(f"{name}: {key} must be a string")
    return value


def _text(doc: Mapping[str, Any], key: str, name: str, limit: int = _TEXT_LIMIT) -> str:
    value = _str(doc, key, name).strip()
    if not value or len(value) > limit:
        raise RequestError(f"{name}: {key} must be 1-{limit} characters (got {len(value)})")
    if not value.isprintable():
        raise RequestError(f"{name}: {key} holds a control or non-printable character")
    return value


def _match(doc: Mapping[str, Any], key: str, pattern: re.Pattern[str], name: str, what: str) -> str:
    value = _str(doc, key, name)
    if not pattern.match(value):
        raise RequestError(f"{name}: {key} {value[:40]!r} is not {what}")
    return value


def _pem(doc: Mapping[str, Any], key: str, name: str) -> str:
    value = _str(doc, key, name)
    if len(value) > MAX_PEM:
        raise RequestError(f"{name}: {key} is longer than {MAX_PEM} characters")
    return value


def _public_key(pem: str, name: str, key: str) -> Any:
    try:
        public = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise RequestError(f"{name}: {key} is not a PEM public key") from None
    return _check_key_type(public, name, key)


def _check_key_type(public: Any, name: str, key: str) -> Any:
    if isinstance(public, ed25519.Ed25519PublicKey):
        return public
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        return public
    raise RequestError(f"{name}: {key} must be an Ed25519 or ECDSA P-256 key")


def _csr_key(pem: str, name: str) -> tuple[Any, bool]:
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
        public = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise RequestError(f"{name}: csr is not a PEM certificate signing request") from None
    return _check_key_type(public, name, "csr"), bool(csr.is_signature_valid)


def _signature(doc: Mapping[str, Any], name: str) -> bytes:
    value = doc.get("attestation")
    if value in (None, ""):
        return b""  # no attestation: refused as bad-signature, and audited as such
    if not isinstance(value, str) or len(value) > MAX_SIGNATURE_B64:
        raise RequestError(
            f"{name}: attestation must be base64 text of at most {MAX_SIGNATURE_B64} characters"
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{name}: attestation is not base64") from None


def _country(value: Any, name: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not _COUNTRY_RE.match(value):
        raise RequestError(f"{name}: country must be an ISO 3166 alpha-2 code such as DE")
    return value.upper()


def _ip(value: Any, name: str) -> str | None:
    if value in (None, ""):
        return None
    try:
        return str(ipaddress.ip_address(str(value)[:64].strip()))
    except ValueError:
        raise RequestError(f"{name}: source_ip {str(value)[:40]!r} is not an IP address") from None


# ---------------------------------------------------------------------------- shipments


@dataclass(frozen=True)
class Shipment:
    """An expected device: what the purchase order or the maker's shipping notice says."""

    serial: str
    vendor: str
    model: str
    site: str
    country: str | None = None
    device_id: str | None = None
    device_class: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


_SHIPMENT_KEYS = frozenset(Shipment.__dataclass_fields__)
_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # what a certificate may name


def parse_shipments(raw: bytes, *, name: str = "shipments") -> list[Shipment]:
    """Expected devices from a JSON list of objects or a CSV with a header.

    Columns: ``serial``, ``vendor``, ``model``, ``site`` (required), ``country``, ``device_id``,
    ``device_class`` (optional).  The whole file is checked before anything is returned; a bad
    row raises :class:`RequestError` naming it."""
    if len(raw) > MAX_SHIPMENT_BYTES:
        raise RequestError(f"{name}: larger than {MAX_SHIPMENT_BYTES >> 20} MB; not a shipment list")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RequestError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    rows = _shipment_rows(text, name)
    out = [_shipment(row, f"{name}: shipment {n}") for n, row in enumerate(rows, start=1)]
    seen: set[tuple[str, str]] = set()
    for n, s in enumerate(out, start=1):
        if (s.vendor, s.serial) in seen:
            raise RequestError(f"{name}: shipment {n}: serial {s.serial!r} of {s.vendor!r} is listed twice")
        seen.add((s.vendor, s.serial))
    return out


def _shipment_rows(text: str, name: str) -> list[dict[str, Any]]:
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise RequestError(f"{name}: not valid JSON") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise RequestError(f"{name}: expected a JSON list of shipment objects")
        return rows
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as exc:
        raise RequestError(f"{name}: not a readable CSV ({exc})") from None
    if not rows or "serial" not in rows[0]:
        raise RequestError(f"{name}: expected a JSON list or a CSV whose header has serial,vendor,model,site")
    if any(None in r for r in rows):
        raise RequestError(f"{name}: a row has more cells than the header has columns")
    return rows


def _shipment(row: Mapping[str, Any], where: str) -> Shipment:
    unknown = set(row) - _SHIPMENT_KEYS
    if unknown:
        raise RequestError(f"{where}: unknown column(s) {', '.join(sorted(map(str, unknown))[:5])}")
    device_id = row.get("device_id") or None
    if device_id is not None and (not isinstance(device_id, str) or not _DEVICE_ID_RE.match(device_id)):
        raise RequestError(
            f"{where}: device_id must be 1-64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)"
        )
    device_class = row.get("device_class") or None
    return Shipment(
        serial=_match(
            row, "serial", _SERIAL_RE, where, "1-64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)"
        ),
        vendor=_text(row, "vendor", where),
        model=_text(row, "model", where),
        site=_text(row, "site", where),
        country=_country(row.get("country"), where),
        device_id=device_id,
        device_class=_text(row, "device_class", where, 100) if device_class else None,
    )


# ---------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class NonceState:
    """A nonce as the store knows it."""

    issued_at: float
    expires_at: float
    used_at: float | None = None


@dataclass(frozen=True)
class OnboardingFacts:
    """What the store knows that bears on one request (gathered in the same transaction).

    ``attestation_keys``: PEM public keys of the vendor's *active* attestation keys.
    ``approved_firmware``: SHA-256 hashes of the vendor/model's signed images.
    ``serial_owner``: the device already active under this vendor and serial, if any.
    ``key_owner``: the device (not retired) already registered with this public key, if any.
    """

    attestation_keys: Sequence[str] = ()
    nonce: NonceState | None = None
    shipment: Shipment | None = None
    approved_firmware: frozenset[str] = frozenset()
    serial_owner: str | None = None
    key_owner: str | None = None


@dataclass(frozen=True)
class Refusal:
    code: str
    sentence: str

    @property
    def category(self) -> str:
        return REFUSALS[self.code]


@dataclass(frozen=True)
class Verdict:
    """The decision on one request: accepted, or refused with every reason (first = *the* reason)."""

    device_id: str
    refusals: tuple[Refusal, ...] = field(default_factory=tuple)

    @property
    def accepted(self) -> bool:
        return not self.refusals

    @property
    def reason(self) -> str | None:
        return self.refusals[0].code if self.refusals else None

    @property
    def sentence(self) -> str:
        return self.refusals[0].sentence if self.refusals else "accepted"

    @property
    def category(self) -> str | None:
        return self.refusals[0].category if self.refusals else None


def verify_request(req: ProvisioningRequest, facts: OnboardingFacts, now: float) -> Verdict:
    """Run every check of the module docstring; the verdict lists each failed one, in precedence order."""
    found: list[Refusal] = []
    found += _duplicates(req, facts)
    found += _signature_checks(req, facts)
    found += _nonce_checks(req, facts, now)
    found += _shipment_checks(req, facts.shipment)
    found += _firmware_checks(req, facts)
    order = list(REFUSALS)
    found.sort(key=lambda r: order.index(r.code))
    shipment = facts.shipment
    device_id = facts.serial_owner or (shipment.device_id if shipment else None) or req.serial
    return Verdict(device_id=device_id, refusals=tuple(found))


def _duplicates(req: ProvisioningRequest, facts: OnboardingFacts) -> list[Refusal]:
    out = []
    if facts.serial_owner:
        out.append(
            Refusal(
                "duplicate-serial",
                f"serial {req.serial} of {req.vendor} is already active as device {facts.serial_owner}: "
                "a second enrolment of a live identity (clone)",
            )
        )
    if facts.key_owner:
        out.append(
            Refusal(
                "duplicate-key",
                f"public key {req.public_key_sha256[:16]}… is already registered to device {facts.key_owner}: "
                "one key on two devices (clone)",
            )
        )
    return out


def _signature_checks(req: ProvisioningRequest, facts: OnboardingFacts) -> list[Refusal]:
    out = []
    if not req.csr_valid:
        out.append(
            Refusal("bad-csr", "the CSR's own signature does not verify: no proof the sender holds the key")
        )
    if not facts.attestation_keys:
        out.append(
            Refusal("no-attestation-key", f"vendor {req.vendor} has no active attestation key registered")
        )
    elif not req.attestation:
        out.append(Refusal("bad-signature", "the request carries no attestation signature"))
    elif not any(_verifies(pem, req.attestation, attestation_bytes(req)) for pem in facts.attestation_keys):
        out.append(
            Refusal(
                "bad-signature",
                f"the attestation does not verify under any of {len(facts.attestation_keys)} active "
                f"attestation key(s) of {req.vendor}: forged or altered request",
            )
        )
    return out


def _verifies(pem: str, signature: bytes, data: bytes) -> bool:
    try:
        key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _nonce_checks(req: ProvisioningRequest, facts: OnboardingFacts, now: float) -> list[Refusal]:
    nonce = facts.nonce
    if nonce is None:
        return [Refusal("unknown-nonce", "the nonce was never issued by this FleetWarden")]
    if nonce.used_at is not None:
        return [Refusal("replayed-nonce", "the nonce was already used by an earlier request: a replay")]
    if now > nonce.expires_at or now < nonce.issued_at - 60.0:
        age = (now - nonce.issued_at) / 60
        life = (nonce.expires_at - nonce.issued_at) / 60
        return [
            Refusal(
                "expired-nonce", f"the nonce was issued {age:.0f} min ago; it was valid for {life:.0f} min"
            )
        ]
    return []


def _shipment_checks(req: ProvisioningRequest, shipment: Shipment | None) -> list[Refusal]:
    if shipment is None:
        return [Refusal("unknown-serial", f"serial {req.serial} of {req.vendor} is in no expected shipment")]
    out = []
    if shipment.model != req.model:
        out.append(
            Refusal(
                "shipment-mismatch",
                f"serial {req.serial} was shipped as model {shipment.model}, the request says {req.model}",
            )
        )
    if shipment.site != req.site:
        out.append(
            Refusal(
                "unexpected-site", f"serial {req.serial} is expected at site {shipment.site}, not {req.site}"
            )
        )
    if shipment.country and req.country and shipment.country != req.country:
        out.append(
            Refusal(
                "unexpected-country",
                f"serial {req.serial} is expected in {shipment.country}, the enrolment comes from {req.country}",
            )
        )
    return out


def _firmware_checks(req: ProvisioningRequest, facts: OnboardingFacts) -> list[Refusal]:
    if req.firmware_sha256 in facts.approved_firmware:
        return []
    return [
        Refusal(
            "unapproved-firmware",
            f"firmware {req.firmware_sha256[:16]}… matches none of the {len(facts.approved_firmware)} "
            f"signed image(s) of {req.vendor} {req.model}",
        )
    ]


# ---------------------------------------------------------------------------- baselines


@dataclass(frozen=True)
class Baseline:
    """The configuration a device class starts from: its network zone, where it may talk and how,
    and how often it reports."""

    device_class: str
    zone: str
    allowed_destinations: tuple[str, ...]
    allowed_protocols: tuple[str, ...]
    telemetry_interval_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "zone": self.zone,
            "allowed_destinations": list(self.allowed_destinations),
            "allowed_protocols": list(self.allowed_protocols),
            "telemetry_interval_s": self.telemetry_interval_s,
        }


def parse_baselines(doc: Mapping[str, Any], *, name: str = "baselines") -> dict[str, Baseline]:
    """Baselines from a decoded TOML/JSON document: ``[class.NAME]`` tables with ``zone``,
    ``allowed_destinations``, ``allowed_protocols``, ``telemetry_interval_s``; ``[default]`` for a
    class without its own.  Raises :class:`RequestError` naming the class and the field."""
    out: dict[str, Baseline] = {}
    classes = dict(doc.get("class") or {})
    if "default" in doc:
        classes["*"] = doc["default"]
    for cls, table in classes.items():
        where = f"{name}: class {cls}"
        if not isinstance(table, Mapping):
            raise RequestError(f"{where}: expected a table")
        out[cls] = Baseline(
            device_class=cls,
            zone=_text(table, "zone", where, 100),
            allowed_destinations=_names(table, "allowed_destinations", where),
            allowed_protocols=_names(table, "allowed_protocols", where),
            telemetry_interval_s=_interval(table, where),
        )
    return out


def _names(table: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = table.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 200 for v in value):
        raise RequestError(f"{where}: {key} must be a list of names")
    return tuple(value)


def _interval(table: Mapping[str, Any], where: str) -> float:
    value = table.get("telemetry_interval_s")
    if not isinstance(value, int | float) or isinstance(value, bool) or not 1 <= value <= 86400 * 7:
        raise RequestError(f"{where}: telemetry_interval_s must be 1 s to 7 days")
    return float(value)


def baseline_for(baselines: Mapping[str, Baseline], device_class: str | None) -> Baseline | None:
    """The class's baseline, else the default one (``[default]``), else None."""
    return baselines.get(device_class or "") or baselines.get("*")
