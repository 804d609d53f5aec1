"""The firmware services: vendor keys, the signed image registry, the catalogue detection reads,
patch compliance and priority.

Composes :mod:`fleetwarden.control.firmware` (keys, signature check, compliance, priority: pure)
with :mod:`fleetwarden.store.firmware` (the tables).  An image enters the registry only when its
Ed25519 signature over the canonical manifest (:func:`fleetwarden.core.manifest.firmware_manifest`)
verifies against an active firmware key of its own vendor; anything else is refused with the reason.

The registry is what the integrity analytic (:mod:`fleetwarden.detection.analytics.firmware`) reads
as ``Context.firmware_catalog``: :func:`with_registry` adds it to a context built from the store, so
``analyze --db``, ``watch`` and ``worker`` judge firmware reports against signed images only.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetwarden.control.firmware import (
    FirmwareInputError,
    ImageEntry,
    check_image,
    compliance,
    parse_public_key,
    patch_priority,
    verify_image,
)
from fleetwarden.core.context import Context
from fleetwarden.store import firmware as repo

__all__ = [
    "ImportResult",
    "add_image",
    "add_vendor_key",
    "compliance_report",
    "firmware_catalog",
    "import_catalogue",
    "list_images",
    "list_vendor_keys",
    "priority_report",
    "revoke_vendor_key",
    "with_registry",
]

MAX_CATALOGUE_BYTES = 64 * 1024 * 1024
MAX_ROWS = 200_000
_KEY_COLUMNS = ("id", "vendor", "purpose", "algorithm", "fingerprint", "added_at", "revoked_at")


# ---------------------------------------------------------------------------- vendor keys


def add_vendor_key(
    store: Any, vendor: str, purpose: str, pem_path: str | Path, *, actor: str = "cli"
) -> dict[str, Any]:
    """Register the public key in ``pem_path`` for ``vendor`` (audited); returns the key's row."""
    vendor = _vendor_name(vendor)
    path = Path(pem_path)
    if path.stat().st_size > 16 * 1024:
        raise FirmwareInputError(f"{path}: larger than 16 KiB; not a public key")
    key = parse_public_key(path.read_bytes(), purpose)
    row = repo.add_vendor_key(store, vendor, purpose, key.algorithm, key.pem, key.fingerprint, actor=actor)
    return _key_dict(row)


def list_vendor_keys(store: Any, vendor: str | None = None) -> list[dict[str, Any]]:
    return [_key_dict(k) for k in repo.list_vendor_keys(store, vendor)]


def revoke_vendor_key(store: Any, fingerprint: str, *, actor: str = "cli") -> dict[str, Any]:
    """Revoke a key by fingerprint; images it signed stop counting as verified."""
    fingerprint = fingerprint.strip().lower()
    key, unverified = repo.revoke_vendor_key(store, fingerprint, actor=actor)
    return {**_key_dict(key), "images_unverified": unverified}


def _key_dict(row: Any) -> dict[str, Any]:
    return {k: getattr(row, k) for k in _KEY_COLUMNS}


def _vendor_name(vendor: str) -> str:
    vendor = (vendor or "").strip()
    if not vendor or len(vendor) > 200 or any(ord(c) < 32 for c in vendor):
        raise FirmwareInputError("vendor name must be 1 to 200 printable characters")
    return vendor


# ---------------------------------------------------------------------------- images


def _active_firmware_keys(store: Any, vendors: set[str]) -> list[tuple[str, str, str]]:
    return [
        (k.vendor, k.fingerprint, k.public_key_pem)
        for v in sorted(vendors)
        for k in repo.vendor_public_keys(store, v, "firmware")
    ]


def _image_row(entry: ImageEntry, signed_by: str) -> dict[str, Any]:
    return {
        "vendor": entry.vendor,
        "model": entry.model,
        "version": entry.version,
        "sha256": entry.sha256,
        "signature": entry.signature,
        "signed_by": signed_by,
        "cves": list(entry.cves),
        "cvss_max": entry.cvss_max,
        "release_date": entry.release_date,
    }


def add_image(store: Any, row: dict[str, Any], *, actor: str = "cli") -> dict[str, Any]:
    """Check, verify and register one image; raises :class:`SignatureRefused` when its signature
    does not verify against an active firmware key of its vendor."""
    entry = check_image(row)
    signed_by = verify_image(entry, _active_firmware_keys(store, {entry.vendor}))
    added, present = repo.add_firmware_images(store, [_image_row(entry, signed_by)], actor=actor)
    return {**_image_row(entry, signed_by), "added": bool(added), "already_present": bool(present)}


@dataclass
class ImportResult:
    """What ``firmware import`` did: rows read, images added, already present, refused rows."""

    read: int = 0
    added: int = 0
    present: int = 0
    errors: list[str] = field(default_factory=list)


def import_catalogue(store: Any, path: str | Path, *, actor: str = "cli") -> ImportResult:
    """Register every row of a JSON list or CSV catalogue that verifies, in one transaction; each
    refused row is reported as ``row N (vendor model version): reason``.  Reads the catalogue
    ``simulate --out`` writes (``image_sha256``, ``released`` as epoch seconds)."""
    rows = _read_catalogue(Path(path))
    result = ImportResult(read=len(rows))
    entries: list[tuple[int, ImageEntry]] = []
    for n, row in enumerate(rows, start=1):
        try:
            entries.append((n, check_image(row)))
        except FirmwareInputError as exc:
            result.errors.append(f"row {n}{_row_name(row)}: {exc}")
    keys = _active_firmware_keys(store, {e.vendor for _, e in entries})
    good = []
    for n, entry in entries:
        try:
            good.append(_image_row(entry, verify_image(entry, keys)))
        except FirmwareInputError as exc:
            result.errors.append(f"row {n}: {exc}")
    if good:
        result.added, result.present = repo.add_firmware_images(store, good, actor=actor, source=str(path))
    return result


def _row_name(row: Any) -> str:
    if not isinstance(row, dict):
        return ""
    name = " ".join(str(row.get(k, ""))[:40] for k in ("vendor", "model", "version")).strip()
    return f" ({name})" if name else ""


def _read_catalogue(path: Path) -> list[dict[str, Any]]:
    if path.stat().st_size > MAX_CATALOGUE_BYTES:
        raise FirmwareInputError(f"{path}: larger than {MAX_CATALOGUE_BYTES >> 20} MB; not a catalogue")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FirmwareInputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    rows = _parse_json(path, text) if text.lstrip().startswith(("[", "{")) else _parse_csv(path, text)
    if len(rows) > MAX_ROWS:
        raise FirmwareInputError(f"{path}: more than {MAX_ROWS} images")
    return rows


def _parse_json(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        rows = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise FirmwareInputError(f"{path}: not valid JSON{where}") from None
    if isinstance(rows, dict) and isinstance(rows.get("images"), list):
        rows = rows["images"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise FirmwareInputError(f"{path}: expected a JSON list of image objects")
    return rows


def _parse_csv(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as exc:
        raise FirmwareInputError(f"{path}: not a readable CSV ({exc})") from None
    if not rows or "vendor" not in rows[0]:
        raise FirmwareInputError(
            f"{path}: expected a JSON list or a CSV whose header has vendor,model,version,sha256,signature"
        )
    if any(None in r for r in rows):
        raise FirmwareInputError(f"{path}: a row has more cells than the header has columns")
    return rows


def list_images(store: Any) -> list[dict[str, Any]]:
    return [img.to_dict() for img in repo.list_firmware_images(store)]


# ---------------------------------------------------------------------------- detection context


def firmware_catalog(store: Any) -> dict[tuple[str, str, str], set[str]]:
    """The registry as the integrity analytic reads it: (vendor, model, version) -> SHA-256 of the
    VERIFIED images (an image whose key was revoked no longer counts)."""
    catalog: dict[tuple[str, str, str], set[str]] = {}
    for img in repo.list_firmware_images(store, verified_only=True):
        catalog.setdefault((img.vendor, img.model, img.version), set()).add(img.sha256)
    return catalog


def with_registry(ctx: Context, store: Any) -> Context:
    """``ctx`` with the store's signed registry merged into ``ctx.firmware_catalog``; returns it."""
    for key, hashes in firmware_catalog(store).items():
        ctx.firmware_catalog.setdefault(key, set()).update(hashes)
    return ctx


# ---------------------------------------------------------------------------- compliance


def _fleet(store: Any, devices: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The devices not retired, of ``devices`` when the caller already read the store's rows."""
    return [d for d in (store.device_rows() if devices is None else devices) if d["lifecycle"] != "retired"]


def _verified(store: Any) -> list[dict[str, Any]]:
    return [img.to_dict() for img in repo.list_firmware_images(store, verified_only=True)]


def compliance_report(store: Any, by: str = "class", *, devices: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Patch compliance of the (not retired) fleet per device class, site or vendor (``devices``:
    the store's device rows when the caller already read them)."""
    return compliance(_fleet(store, devices), _verified(store), by)


def priority_report(store: Any) -> list[dict[str, Any]]:
    """Non-compliant devices ranked by patch priority with reasons (see control.firmware)."""
    return patch_priority(_fleet(store), _verified(store))
