"""Identity in the store: the device certificates the CA issued and the API's operators.

Functions taking a :class:`~fleetwarden.store.Store`, each one transaction; every change (issue,
rotate, revoke, CRL publication, CA creation, operator added or disabled) appends an audit entry in
the same transaction.  Disabling an operator also ends its sessions (:mod:`fleetwarden.store.sessions`)
in that transaction.  What is stored and audited is public: certificates (PEM), serials,
fingerprints, names and roles.  Private keys never reach this module, and an operator's token
arrives only as its SHA-256 (``token_hash``), which is stored but never audited.

Blind spot: the CRL number is the count of CRLs published so far plus one, taken inside the write
transaction (writers are serialised, so two publications cannot share a number); a database
restored from an older backup would reuse numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from fleetwarden.store.models import (
    CERTIFICATE_STATUSES,
    OPERATOR_ROLES,
    AuditEntry,
    CertificateRecord,
    Device,
    OperatorRecord,
)
from fleetwarden.store.repository import Store, StoreError, _audit
from fleetwarden.store.sessions import end_operator_sessions

__all__ = [
    "CRL_ACTION",
    "RecordedCertificate",
    "add_operator",
    "certificate_by_fingerprint",
    "disable_operator",
    "list_certificates",
    "list_operators",
    "operator_by_token_hash",
    "publish_crl",
    "record_ca_event",
    "record_certificate",
    "revocation_list",
    "revoke_device",
    "touch_operator",
]

CRL_ACTION = "ca.crl.publish"
# the columns a caller gives when recording a certificate (the store sets id and status)
CERTIFICATE_FIELDS = (
    "serial",
    "device_id",
    "fingerprint",
    "key_type",
    "key_size",
    "subject",
    "issued_at",
    "not_before",
    "not_after",
    "pem",
)
T = TypeVar("T")


@dataclass(frozen=True)
class RecordedCertificate:
    """What :func:`record_certificate` stored: the row, the serials it superseded, and whether the
    device is in the inventory."""

    row: CertificateRecord
    superseded: tuple[str, ...]
    in_inventory: bool


# ---------------------------------------------------------------------- certificates


def record_certificate(
    store: Store, cert: Mapping[str, Any], *, actor: str, supersede: bool = False
) -> RecordedCertificate:
    """Store a newly issued certificate (``cert`` has :data:`CERTIFICATE_FIELDS`), audited as
    ``ca.issue``, or as ``ca.rotate`` with ``supersede``: then the device's active certificates
    become ``superseded`` (they go on the CRL with that reason) in the same transaction."""
    row = _certificate_row(cert)
    with store._write() as s:
        known = s.scalar(select(Device.id).where(Device.device_id == row.device_id)) is not None
        old = _supersede(s, row.device_id, row.issued_at) if supersede else []
        s.add(row)
        try:
            s.flush()
        except IntegrityError:
            raise StoreError(f"certificate serial {row.serial} or fingerprint already recorded") from None
        details = {
            "serial": row.serial,
            "fingerprint": row.fingerprint,
            "key_type": row.key_type,
            "not_after": row.not_after,
            "in_inventory": known,
        }
        if supersede:
            details["superseded"] = old
        _audit(s, actor, "ca.rotate" if supersede else "ca.issue", f"device:{row.device_id}", details)
        return RecordedCertificate(row, tuple(old), known)


def _certificate_row(cert: Mapping[str, Any]) -> CertificateRecord:
    missing = [k for k in CERTIFICATE_FIELDS if cert.get(k) in (None, "")]
    if missing:
        raise StoreError(f"certificate without {', '.join(missing)}")
    pem = str(cert["pem"])
    if "PRIVATE KEY" in pem or "BEGIN CERTIFICATE" not in pem:
        raise StoreError("only a certificate PEM may be stored (never a private key)")
    return CertificateRecord(**{k: cert[k] for k in CERTIFICATE_FIELDS}, status="active")


def _supersede(s: Any, device_id: str, now: float) -> list[str]:
    rows = _active(s, device_id)
    for r in rows:
        r.status, r.revoked_at, r.revocation_reason = "superseded", now, "superseded"
    return [r.serial for r in rows]


def _active(s: Any, device_id: str) -> list[CertificateRecord]:
    q = select(CertificateRecord).where(
        CertificateRecord.device_id == device_id, CertificateRecord.status == "active"
    )
    return list(s.scalars(q.order_by(CertificateRecord.id)))


def revoke_device(
    store: Store, device_id: str, reason: str, *, now: float, actor: str
) -> list[CertificateRecord]:
    """Revoke every active certificate of ``device_id``; :class:`StoreError` when it has none."""
    with store._write() as s:
        rows = _active(s, device_id)
        if not rows:
            raise StoreError(f"device {device_id!r} has no active certificate to revoke")
        for r in rows:
            r.status, r.revoked_at, r.revocation_reason = "revoked", now, reason
        s.flush()
        serials = [r.serial for r in rows]
        _audit(s, actor, "ca.revoke", f"device:{device_id}", {"serials": serials, "reason": reason})
        return rows


def revocation_list(store: Store, *, now: float) -> list[CertificateRecord]:
    """Revoked and superseded certificates not yet expired at ``now`` (what a CRL lists)."""
    with store._read() as s:
        return list(s.scalars(_revoked_query(now)))


def _revoked_query(now: float) -> Any:
    return (
        select(CertificateRecord)
        .where(CertificateRecord.status.in_(("revoked", "superseded")), CertificateRecord.not_after >= now)
        .order_by(CertificateRecord.id)
    )


def publish_crl(
    store: Store, sign: Callable[[Sequence[CertificateRecord], int], T], *, now: float, actor: str
) -> T:
    """Call ``sign(revoked rows, crl_number)`` and audit the publication, in one write transaction
    (so the number is unique and the audit names exactly the serials that were signed)."""
    with store._write() as s:
        rows = list(s.scalars(_revoked_query(now)))
        count = s.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == CRL_ACTION))
        number = int(count or 0) + 1
        result = sign(rows, number)
        details = {"crl_number": number, "entries": len(rows), "serials": [r.serial for r in rows][:200]}
        _audit(s, actor, CRL_ACTION, "ca", details)
        return result


def list_certificates(
    store: Store, *, device_id: str | None = None, status: str | None = None
) -> list[CertificateRecord]:
    """Certificates, oldest first, optionally of one device and/or one status."""
    if status is not None and status not in CERTIFICATE_STATUSES:
        raise StoreError(f"unknown certificate status {status!r}: one of {', '.join(CERTIFICATE_STATUSES)}")
    q = select(CertificateRecord).order_by(CertificateRecord.id)
    if device_id is not None:
        q = q.where(CertificateRecord.device_id == device_id)
    if status is not None:
        q = q.where(CertificateRecord.status == status)
    with store._read() as s:
        return list(s.scalars(q))


def certificate_by_fingerprint(store: Store, fingerprint: str) -> CertificateRecord | None:
    with store._read() as s:
        return s.scalar(select(CertificateRecord).where(CertificateRecord.fingerprint == fingerprint.lower()))


def record_ca_event(store: Store, action: str, details: Mapping[str, Any], *, actor: str) -> None:
    """Audit a CA event that has no row of its own (``ca.init``: the CA's fingerprint and subject)."""
    with store._write() as s:
        _audit(s, actor, action, "ca", details)


# ---------------------------------------------------------------------- operators


def add_operator(store: Store, name: str, role: str, token_hash: str, *, actor: str) -> OperatorRecord:
    """A new operator; :class:`StoreError` when the name is taken or the role unknown."""
    if role not in OPERATOR_ROLES:
        raise StoreError(f"unknown role {role!r}: one of {', '.join(OPERATOR_ROLES)}")
    if len(token_hash) != 64:
        raise StoreError("token_hash must be a SHA-256 hex digest")
    with store._write() as s:
        if s.scalar(select(OperatorRecord.id).where(OperatorRecord.name == name)) is not None:
            raise StoreError(f"operator {name!r} already exists")
        row = OperatorRecord(
            name=name, role=role, token_hash=token_hash, created_at=time.time(), disabled=False
        )
        s.add(row)
        s.flush()
        _audit(s, actor, "operator.add", f"operator:{name}", {"role": role})
        return row


def list_operators(store: Store) -> list[OperatorRecord]:
    with store._read() as s:
        return list(s.scalars(select(OperatorRecord).order_by(OperatorRecord.name)))


def disable_operator(store: Store, name: str, *, actor: str) -> OperatorRecord:
    """Disable ``name``: its token stops working and its open sessions end, in one transaction;
    :class:`StoreError` for an unknown name."""
    with store._write() as s:
        row = s.scalar(select(OperatorRecord).where(OperatorRecord.name == name))
        if row is None:
            raise StoreError(f"no operator named {name!r}")
        was = row.disabled
        row.disabled = True
        ended = end_operator_sessions(s, row.id, time.time())
        s.flush()
        _audit(s, actor, "operator.disable", f"operator:{name}", {"already_disabled": was, "sessions_ended": ended})
        return row


def operator_by_token_hash(store: Store, token_hash: str) -> OperatorRecord | None:
    with store._read() as s:
        return s.scalar(select(OperatorRecord).where(OperatorRecord.token_hash == token_hash))


def touch_operator(store: Store, operator_id: int, now: float) -> None:
    """Set ``last_used_at`` (not audited: a read, not a change of the control plane)."""
    with store._write() as s:
        s.execute(update(OperatorRecord).where(OperatorRecord.id == operator_id).values(last_used_at=now))
