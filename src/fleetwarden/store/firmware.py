"""Repository of the firmware tables: vendor keys, the signed image registry, staged rollouts.

Functions over a :class:`~fleetwarden.store.repository.Store`, one transaction each; every change
appends an audit entry in the same transaction (:func:`fleetwarden.store.repository._audit`).
Nothing here verifies a signature: the service (:mod:`fleetwarden.app.firmware`) does, with
:mod:`fleetwarden.control.firmware`, before calling :func:`add_firmware_images`, which re-checks in
its own transaction that the signing key is still active (a revocation racing an import wins).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from fleetwarden.store import audit
from fleetwarden.store.models import FindingRecord, FirmwareImage, Rollout, RolloutDevice, VendorKey
from fleetwarden.store.repository import Store, StoreError, _audit

__all__ = [
    "add_firmware_images",
    "add_vendor_key",
    "create_rollout",
    "device_findings",
    "get_rollout",
    "list_firmware_images",
    "list_rollouts",
    "list_vendor_keys",
    "revoke_vendor_key",
    "rollouts_of_device",
    "rollouts_of_devices",
    "update_rollout",
    "vendor_public_keys",
]

_DEVICE_FIELDS = {
    "status",
    "previous_version",
    "previous_sha256",
    "reported_sha256",
    "started_at",
    "updated_at",
}


# ---------------------------------------------------------------------------- vendor keys


def add_vendor_key(
    store: Store, vendor: str, purpose: str, algorithm: str, pem: str, fingerprint: str, *, actor: str
) -> VendorKey:
    """Register a vendor's public key (audited); a fingerprint already registered is refused."""
    with store._write() as s:
        old = s.scalar(select(VendorKey).where(VendorKey.fingerprint == fingerprint))
        if old is not None:
            raise StoreError(
                f"key {fingerprint[:16]}… is already registered for vendor {old.vendor!r} ({old.purpose})"
            )
        key = VendorKey(
            vendor=vendor,
            purpose=purpose,
            algorithm=algorithm,
            public_key_pem=pem,
            fingerprint=fingerprint,
            added_at=time.time(),
        )
        s.add(key)
        s.flush()
        _audit(
            s,
            actor,
            "vendor_key.add",
            f"vendor_key:{fingerprint}",
            {"vendor": vendor, "purpose": purpose, "algorithm": algorithm},
        )
        return key


def list_vendor_keys(store: Store, vendor: str | None = None, purpose: str | None = None) -> list[VendorKey]:
    """Every key (revoked ones too), by vendor, purpose and age."""
    q = select(VendorKey).order_by(VendorKey.vendor, VendorKey.purpose, VendorKey.added_at, VendorKey.id)
    if vendor is not None:
        q = q.where(VendorKey.vendor == vendor)
    if purpose is not None:
        q = q.where(VendorKey.purpose == purpose)
    with store._read() as s:
        return list(s.scalars(q))


def vendor_public_keys(store: Store, vendor: str, purpose: str) -> list[VendorKey]:
    """The ACTIVE (not revoked) keys of ``vendor`` for ``purpose`` (firmware or attestation):
    rows with ``algorithm`` (ed25519 / ecdsa-p256), ``public_key_pem`` and ``fingerprint``."""
    q = (
        select(VendorKey)
        .where(VendorKey.vendor == vendor, VendorKey.purpose == purpose, VendorKey.revoked_at.is_(None))
        .order_by(VendorKey.added_at, VendorKey.id)
    )
    with store._read() as s:
        return list(s.scalars(q))


def revoke_vendor_key(store: Store, fingerprint: str, *, actor: str) -> tuple[VendorKey, int]:
    """Revoke a key (audited).  Images it signed stop counting as verified: a revoked signing key
    may have signed anything.  Returns the key and how many images lost their verification."""
    with store._write() as s:
        key = s.scalar(select(VendorKey).where(VendorKey.fingerprint == fingerprint))
        if key is None:
            raise StoreError(f"no vendor key with fingerprint {fingerprint[:64]!r}")
        if key.revoked_at is not None:
            raise StoreError(f"key {fingerprint[:16]}… of {key.vendor!r} is already revoked")
        key.revoked_at = time.time()
        hit = s.execute(
            update(FirmwareImage).where(FirmwareImage.signed_by == fingerprint).values(verified=False)
        ).rowcount
        s.flush()
        _audit(
            s,
            actor,
            "vendor_key.revoke",
            f"vendor_key:{fingerprint}",
            {"vendor": key.vendor, "images_unverified": hit},
        )
        return key, int(hit or 0)


# ---------------------------------------------------------------------------- firmware images


def add_firmware_images(
    store: Store, rows: Sequence[Mapping[str, Any]], *, actor: str, source: str = ""
) -> tuple[int, int]:
    """Insert verified images (column mappings, ``signed_by`` set) in ONE transaction, audited;
    an image already registered (same vendor, model, version, sha256) is skipped.  Returns
    ``(added, already_present)``.  Refuses the whole call when a signing key is revoked meanwhile."""
    now = time.time()
    with store._write() as s:
        _check_signers_active(s, {str(r["signed_by"]) for r in rows})
        added = present = 0
        for r in rows:
            if _image_exists(s, r):
                present += 1
                continue
            s.add(FirmwareImage(**{**r, "verified": True, "added_at": now}))
            added += 1
        s.flush()
        if added:
            ids = [f"{r['vendor']} {r['model']} {r['version']}" for r in rows][:50]
            _audit(
                s,
                actor,
                "firmware.add",
                source or "firmware_images",
                {"added": added, "present": present, "images": ids},
            )
        return added, present


def _check_signers_active(s: Session, fingerprints: set[str]) -> None:
    active = set(
        s.scalars(
            select(VendorKey.fingerprint).where(
                VendorKey.fingerprint.in_(list(fingerprints)), VendorKey.revoked_at.is_(None)
            )
        )
    )
    missing = fingerprints - active
    if missing:
        raise StoreError(f"signing key {sorted(missing)[0][:16]}… is no longer active; nothing added")


def _image_exists(s: Session, r: Mapping[str, Any]) -> bool:
    return (
        s.scalar(
            select(FirmwareImage.id).where(
                FirmwareImage.vendor == r["vendor"],
                FirmwareImage.model == r["model"],
                FirmwareImage.version == r["version"],
                FirmwareImage.sha256 == r["sha256"],
            )
        )
        is not None
    )


def list_firmware_images(
    store: Store, vendor: str | None = None, model: str | None = None, *, verified_only: bool = False
) -> list[FirmwareImage]:
    q = select(FirmwareImage).order_by(FirmwareImage.vendor, FirmwareImage.model, FirmwareImage.id)
    if vendor is not None:
        q = q.where(FirmwareImage.vendor == vendor)
    if model is not None:
        q = q.where(FirmwareImage.model == model)
    if verified_only:
        q = q.where(FirmwareImage.verified.is_(True))
    with store._read() as s:
        return list(s.scalars(q))


# ---------------------------------------------------------------------------- rollouts


def create_rollout(
    store: Store, rollout: Mapping[str, Any], devices: Sequence[Mapping[str, Any]], *, actor: str
) -> Rollout:
    """A planned rollout and its devices (``device_id``, ``wave``, ``previous_version``,
    ``previous_sha256``), audited."""
    now = time.time()
    with store._write() as s:
        row = Rollout(**rollout, status="planned", created_at=now, updated_at=now)
        s.add(row)
        s.flush()
        for d in devices:
            s.add(RolloutDevice(rollout_id=row.id, status="pending", updated_at=now, **d))
        s.flush()
        _audit(
            s,
            actor,
            "rollout.plan",
            f"rollout:{row.id}",
            {
                "name": row.name,
                "vendor": row.vendor,
                "model": row.model,
                "target_version": row.target_version,
                "target_sha256": row.target_sha256,
                "devices": len(devices),
                "waves": len(row.plan.get("waves", [])),
            },
        )
        return row


def get_rollout(store: Store, rollout_id: int) -> tuple[Rollout, list[RolloutDevice]]:
    with store._read() as s:
        row = s.get(Rollout, rollout_id)
        if row is None:
            raise StoreError(f"unknown rollout {rollout_id}")
        devs = s.scalars(
            select(RolloutDevice)
            .where(RolloutDevice.rollout_id == rollout_id)
            .order_by(RolloutDevice.wave, RolloutDevice.device_id)
        )
        return row, list(devs)


def list_rollouts(store: Store) -> list[Rollout]:
    with store._read() as s:
        return list(s.scalars(select(Rollout).order_by(Rollout.id)))


def update_rollout(
    store: Store,
    rollout_id: int,
    *,
    actor: str,
    action: str,
    status: str | None = None,
    plan: Mapping[str, Any] | None = None,
    devices: Mapping[str, Mapping[str, Any]] | None = None,
    details: Mapping[str, Any] | None = None,
    expect_status: str | None = None,
) -> Rollout:
    """Change a rollout's status, plan and devices' fields in one audited transaction.
    ``expect_status`` refuses the change when another writer moved the rollout meanwhile."""
    now = time.time()
    with store._write() as s:
        row = s.get(Rollout, rollout_id)
        if row is None:
            raise StoreError(f"unknown rollout {rollout_id}")
        if expect_status is not None and row.status != expect_status:
            raise StoreError(
                f"rollout {rollout_id} is {row.status} now (expected {expect_status}); try again"
            )
        before = row.status
        if status is not None:
            row.status = status
        if plan is not None:
            row.plan = audit.normalize_details(plan)
        row.updated_at = now
        _update_devices(s, rollout_id, devices or {}, now)
        s.flush()
        _audit(
            s,
            actor,
            f"rollout.{action}",
            f"rollout:{rollout_id}",
            {"from": before, "to": row.status, "devices": len(devices or {}), **dict(details or {})},
        )
        return row


def _update_devices(
    s: Session, rollout_id: int, changes: Mapping[str, Mapping[str, Any]], now: float
) -> None:
    for device_id, fields in changes.items():
        bad = set(fields) - _DEVICE_FIELDS
        if bad:
            raise StoreError(f"unknown rollout device field(s) {', '.join(sorted(bad))}")
        dev = s.get(RolloutDevice, (rollout_id, device_id))
        if dev is None:
            raise StoreError(f"device {device_id!r} is not in rollout {rollout_id}")
        for k, v in {"updated_at": now, **fields}.items():
            setattr(dev, k, v)


def rollouts_of_device(store: Store, device_id: str) -> list[tuple[Rollout, RolloutDevice]]:
    """Every rollout the device is part of, with its row in it, newest first."""
    q = (
        select(Rollout, RolloutDevice)
        .join(RolloutDevice, RolloutDevice.rollout_id == Rollout.id)
        .where(RolloutDevice.device_id == device_id)
        .order_by(Rollout.id.desc())
    )
    with store._read() as s:
        return [(r, d) for r, d in s.execute(q).all()]


def rollouts_of_devices(
    store: Store, device_ids: Sequence[str], statuses: Sequence[str]
) -> list[tuple[Rollout, RolloutDevice]]:
    """The rows of ``device_ids`` in rollouts whose status is one of ``statuses``, in ONE query
    (per 500 devices): what a recording step asks once for all the devices of its findings."""
    ids = sorted({d for d in device_ids if d})
    out: list[tuple[Rollout, RolloutDevice]] = []
    with store._read() as s:
        for i in range(0, len(ids), 500):
            q = (
                select(Rollout, RolloutDevice)
                .join(RolloutDevice, RolloutDevice.rollout_id == Rollout.id)
                .where(RolloutDevice.device_id.in_(ids[i : i + 500]), Rollout.status.in_(list(statuses)))
                .order_by(Rollout.id.desc())
            )
            out += [(r, d) for r, d in s.execute(q).all()]
    return out


def device_findings(store: Store, device_id: str, start: float, end: float) -> list[dict[str, Any]]:
    """Category, severity and time of the stored findings about ``device_id`` (by device id or
    entity) that began in ``[start, end)``."""
    q = (
        select(FindingRecord.category, FindingRecord.severity, FindingRecord.first_seen)
        .where(or_(FindingRecord.device_id == device_id, FindingRecord.entity == device_id))
        .where(FindingRecord.first_seen >= start, FindingRecord.first_seen < end)
        .order_by(FindingRecord.first_seen)
    )
    with store._read() as s:
        return [{"category": c, "severity": sev, "ts": float(t)} for c, sev, t in s.execute(q).all()]
