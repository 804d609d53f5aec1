"""Repository of onboarding: expected shipments, enrolment nonces, enrolments, and the audit head.

Functions over a :class:`~fleetwarden.store.repository.Store`, one transaction each, every change
audited in the same transaction.  :func:`enrolment` is the one that matters: it opens ONE write
transaction in which the service reads every fact a verdict needs (vendor attestation keys,
the nonce, consumed there and then, the shipment, the signed firmware hashes, who already holds
the serial or the key) and records the verdict.  Writers are serialised (see
:mod:`fleetwarden.store.repository`), so two requests racing with one nonce or one serial cannot
both pass.  Never call another store method while that transaction is open: on SQLite it would
wait for its own lock.

Nonces are kept as their SHA-256: the table never holds a challenge someone could still answer.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetwarden.store import audit
from fleetwarden.store.models import (
    LIFECYCLES,
    AuditHead,
    Device,
    Enrolment,
    ExpectedDevice,
    FirmwareImage,
    OnboardingNonce,
    VendorKey,
)
from fleetwarden.store.repository import Store, StoreError, _audit, _upsert_devices

__all__ = [
    "EnrolmentFacts",
    "EnrolmentTx",
    "Activation",
    "activate_devices",
    "enrolment",
    "enrolled_keys",
    "import_shipments",
    "issue_nonce",
    "issue_nonces",
    "list_enrolments",
    "list_shipments",
    "nonce_digest",
    "recorded_head",
]

# lifecycles in which a device holds its serial and key (a retired or merely ordered one does not)
HOLDING = tuple(x for x in ("provisioned", "provisioning", "active", "quarantined") if x in LIFECYCLES)
PROVISIONED = "provisioned" if "provisioned" in LIFECYCLES else "provisioning"
_SHIPMENT_FIELDS = ("model", "site", "country", "device_id", "device_class")


def nonce_digest(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


# ---------------------------------------------------------------------------- shipments and nonces


def import_shipments(store: Store, rows: Sequence[Mapping[str, Any]], *, actor: str) -> tuple[int, int]:
    """Insert or update expected devices keyed by (vendor, serial), audited; returns (added, updated).
    A line already enrolled keeps its ``enrolled_at``."""
    now = time.time()
    added = updated = 0
    with store._write() as s:
        for r in rows:
            row = s.scalar(
                select(ExpectedDevice).where(
                    ExpectedDevice.vendor == r["vendor"], ExpectedDevice.serial == r["serial"]
                )
            )
            if row is None:
                s.add(
                    ExpectedDevice(
                        serial=r["serial"], vendor=r["vendor"], imported_at=now, **_shipment_values(r)
                    )
                )
                added += 1
            elif _merge(row, _shipment_values(r)):
                row.imported_at = now
                updated += 1
        s.flush()
        if added or updated:
            serials = [f"{r['vendor']}/{r['serial']}" for r in rows][:50]
            _audit(
                s,
                actor,
                "onboarding.expect",
                "expected_devices",
                {"added": added, "updated": updated, "serials": serials},
            )
    return added, updated


def _shipment_values(r: Mapping[str, Any]) -> dict[str, Any]:
    return {k: r.get(k) for k in _SHIPMENT_FIELDS}


def _merge(row: ExpectedDevice, values: Mapping[str, Any]) -> bool:
    changed = False
    for k, v in values.items():
        if getattr(row, k) != v:
            setattr(row, k, v)
            changed = True
    return changed


def list_shipments(store: Store) -> list[ExpectedDevice]:
    with store._read() as s:
        return list(s.scalars(select(ExpectedDevice).order_by(ExpectedDevice.vendor, ExpectedDevice.serial)))


def issue_nonce(store: Store, digest: str, *, now: float, ttl: float, actor: str) -> OnboardingNonce:
    """Record a nonce (by its digest) valid from ``now`` for ``ttl`` seconds, audited."""
    return issue_nonces(store, [(digest, now)], ttl=ttl, actor=actor)[0]


def issue_nonces(
    store: Store, nonces: Sequence[tuple[str, float]], *, ttl: float, actor: str
) -> list[OnboardingNonce]:
    """Record ``(digest, issued_at)`` nonces valid ``ttl`` seconds each, in one transaction, audited
    once (a factory batch asks for many)."""
    with store._write() as s:
        rows = [
            OnboardingNonce(nonce_sha256=d, issued_at=t, expires_at=t + ttl, issued_by=actor)
            for d, t in nonces
        ]
        s.add_all(rows)
        s.flush()
        details = {"count": len(rows), "ttl": ttl, "nonces": [d[:16] for d, _ in nonces][:50]}
        _audit(
            s,
            actor,
            "onboarding.nonce",
            f"nonce:{nonces[0][0][:16]}" if len(rows) == 1 else "nonces",
            details,
        )
        return rows


# ---------------------------------------------------------------------------- one enrolment


@dataclass(frozen=True)
class EnrolmentFacts:
    """Plain facts (the service turns them into :class:`fleetwarden.control.onboarding.OnboardingFacts`)."""

    attestation_keys: tuple[str, ...]
    nonce: tuple[float, float, float | None] | None  # (issued_at, expires_at, used_at) before this use
    shipment: dict[str, Any] | None
    approved_firmware: frozenset[str]
    serial_owner: str | None
    key_owner: str | None


class EnrolmentTx:
    """The open transaction of one enrolment (from :func:`enrolment`)."""

    def __init__(self, s: Session, actor: str) -> None:
        self.s = s
        self.actor = actor
        # within one transaction keys and signed images do not change: read each once
        self._keys: dict[str, tuple[str, ...]] = {}
        self._images: dict[tuple[str, str], frozenset[str]] = {}

    def facts(
        self, *, vendor: str, serial: str, model: str, key_sha256: str, nonce: str, now: float
    ) -> EnrolmentFacts:
        """Everything the verdict needs; consumes the nonce (a second use finds it used)."""
        return EnrolmentFacts(
            attestation_keys=self._attestation_keys(vendor),
            nonce=self._consume_nonce(nonce_digest(nonce), serial, now),
            shipment=self._shipment(vendor, serial),
            approved_firmware=self._approved(vendor, model),
            serial_owner=self._serial_owner(vendor, serial),
            key_owner=self._key_owner(key_sha256),
        )

    def _attestation_keys(self, vendor: str) -> tuple[str, ...]:
        if vendor not in self._keys:
            q = select(VendorKey.public_key_pem).where(
                VendorKey.vendor == vendor, VendorKey.purpose == "attestation", VendorKey.revoked_at.is_(None)
            )
            self._keys[vendor] = tuple(self.s.scalars(q))
        return self._keys[vendor]

    def _consume_nonce(
        self, digest: str, serial: str, now: float
    ) -> tuple[float, float, float | None] | None:
        row = self.s.get(OnboardingNonce, digest)
        if row is None:
            return None
        before = (float(row.issued_at), float(row.expires_at), row.used_at)
        if row.used_at is None:
            row.used_at, row.used_by = now, serial
        return before

    def _shipment(self, vendor: str, serial: str) -> dict[str, Any] | None:
        row = self.s.scalar(
            select(ExpectedDevice).where(ExpectedDevice.vendor == vendor, ExpectedDevice.serial == serial)
        )
        return (
            None if row is None else {"serial": serial, "vendor": vendor, **_shipment_values(row.to_dict())}
        )

    def _approved(self, vendor: str, model: str) -> frozenset[str]:
        if (vendor, model) not in self._images:
            q = select(FirmwareImage.sha256).where(
                FirmwareImage.vendor == vendor, FirmwareImage.model == model, FirmwareImage.verified.is_(True)
            )
            self._images[(vendor, model)] = frozenset(h.lower() for h in self.s.scalars(q))
        return self._images[(vendor, model)]

    def _serial_owner(self, vendor: str, serial: str) -> str | None:
        q = select(Device.device_id).where(
            Device.serial == serial, Device.vendor == vendor, Device.lifecycle.in_(HOLDING)
        )
        return self.s.scalar(q.limit(1))

    def _key_owner(self, key_sha256: str) -> str | None:
        q = (
            select(Enrolment.device_id)
            .join(Device, Device.device_id == Enrolment.device_id)
            .where(
                Enrolment.public_key_sha256 == key_sha256,
                Enrolment.result == "accepted",
                Device.lifecycle.in_(HOLDING),
            )
        )
        return self.s.scalar(q.limit(1))

    def record(self, row: Mapping[str, Any], device: Mapping[str, Any] | None) -> Enrolment:
        """Save the enrolment (``row``: :class:`Enrolment` columns) and audit it; an accepted one
        also registers ``device`` as provisioned and marks its shipment enrolled."""
        now = time.time()
        e = Enrolment(created_at=now, **row)
        self.s.add(e)
        if e.result == "accepted" and device is not None:
            _upsert_devices(self.s, [{**device, "lifecycle": PROVISIONED}], now)
            _set_lifecycle(self.s, str(device["device_id"]), PROVISIONED, now)
            self._mark_shipped(e.vendor, e.serial, e.ts)
        self.s.flush()
        _audit(
            self.s,
            self.actor,
            f"onboarding.{'accept' if e.result == 'accepted' else 'refuse'}",
            f"serial:{e.vendor}/{e.serial}",
            _audit_details(e),
        )
        return e

    def _mark_shipped(self, vendor: str, serial: str, ts: float) -> None:
        row = self.s.scalar(
            select(ExpectedDevice).where(ExpectedDevice.vendor == vendor, ExpectedDevice.serial == serial)
        )
        if row is not None:
            row.enrolled_at = ts


def _audit_details(e: Enrolment) -> dict[str, Any]:
    return {
        "enrolment": e.id,
        "device_id": e.device_id,
        "reason": e.reason,
        "reasons": list(e.reasons or []),
        "sentence": e.sentence,
        "site": e.site,
        "country": e.country,
        "source": e.source,
        "public_key_sha256": e.public_key_sha256,
        "firmware_sha256": e.firmware_sha256,
    }


def _set_lifecycle(s: Session, device_id: str, lifecycle: str, now: float) -> None:
    dev = s.scalar(select(Device).where(Device.device_id == device_id))
    if dev is not None and dev.lifecycle != lifecycle:
        dev.lifecycle = lifecycle
        dev.updated_at = now


@contextmanager
def enrolment(store: Store, *, actor: str) -> Iterator[EnrolmentTx]:
    """ONE write transaction for one enrolment: read its facts, then :meth:`EnrolmentTx.record`."""
    with store._write() as s:
        yield EnrolmentTx(s, actor)


@dataclass(frozen=True)
class Activation:
    """A device to activate: its accepted enrolment, its certificate, its class baseline."""

    enrolment_id: int
    certificate_serial: str | None
    baseline: Mapping[str, Any] | None


def activate_devices(store: Store, items: Sequence[Activation], *, actor: str) -> list[Device]:
    """provisioned -> active once the certificates are issued, in one transaction: apply each class
    baseline (zone in the column, the rest under ``attributes['baseline']``), note the certificate,
    and audit each device's step (``device.lifecycle`` with the baseline and certificate)."""
    now = time.time()
    with store._write() as s:
        return [_activate(s, item, now, actor) for item in items]


def _activate(s: Session, item: Activation, now: float, actor: str) -> Device:
    e = s.get(Enrolment, item.enrolment_id)
    if e is None or e.result != "accepted" or not e.device_id:
        raise StoreError(f"enrolment {item.enrolment_id} is not an accepted one")
    dev = s.scalar(select(Device).where(Device.device_id == e.device_id))
    if dev is None:
        raise StoreError(f"device {e.device_id!r} of enrolment {item.enrolment_id} is not in the inventory")
    e.certificate_serial = item.certificate_serial
    baseline = audit.normalize_details(item.baseline) if item.baseline else None
    if baseline:
        dev.zone = str(baseline.get("zone") or dev.zone or "") or None
        dev.attributes = {**(dev.attributes or {}), "baseline": baseline}
    before, dev.lifecycle, dev.updated_at = dev.lifecycle, "active", now
    s.flush()
    details = {
        "from": before,
        "to": "active",
        "reason": f"enrolment {item.enrolment_id}",
        "certificate": item.certificate_serial,
        "baseline": baseline,
    }
    _audit(s, actor, "device.lifecycle", e.device_id, details)
    return dev


# ---------------------------------------------------------------------------- reading


def list_enrolments(store: Store, *, limit: int | None = None, result: str | None = None) -> list[Enrolment]:
    """Enrolments, newest first."""
    q = select(Enrolment).order_by(Enrolment.ts.desc(), Enrolment.id.desc())
    if result is not None:
        q = q.where(Enrolment.result == result)
    with store._read() as s:
        return list(s.scalars(q.limit(limit)))


def enrolled_keys(store: Store) -> set[tuple[str, str, str]]:
    """(vendor, serial, public key SHA-256) of every accepted enrolment whose device still holds it."""
    q = (
        select(Enrolment.vendor, Enrolment.serial, Enrolment.public_key_sha256)
        .join(Device, Device.device_id == Enrolment.device_id)
        .where(Enrolment.result == "accepted", Device.lifecycle.in_(HOLDING))
    )
    with store._read() as s:
        return {(str(v), str(n), str(k)) for v, n, k in s.execute(q)}


def recorded_head(store: Store) -> tuple[int, str] | None:
    """The audit head the database trigger keeps (``seq``, ``hash``), or None before any entry."""
    with store._read() as s:
        row = s.get(AuditHead, 1)
        return None if row is None else (int(row.seq), str(row.hash))
