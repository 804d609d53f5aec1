"""The inventory services: devices and vendors in and out of the store, the unknown devices passive
discovery found, the inventory's accuracy, and the detection context built from the store."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from fleetwarden.control.discovery import inventory_accuracy as accuracy_of
from fleetwarden.control.inventory import (
    IMPORT_COLUMNS,
    context_from_rows,
    export_csv,
    export_record,
    read_inventory,
)
from fleetwarden.control.vendors import VENDOR_COLUMNS, read_vendors, vendor_risk
from fleetwarden.core.context import Context
from fleetwarden.core.errors import InputError

__all__ = [
    "IMPORT_COLUMNS",
    "VENDOR_COLUMNS",
    "context_from_store",
    "export_inventory",
    "import_inventory",
    "import_vendors",
    "inventory_accuracy",
    "list_devices",
    "list_vendors",
    "unknown_devices",
]

EXPORT_FORMATS = ("csv", "json")


def context_from_store(store: Any) -> Context:
    """The detection context every detecting mode reads (``analyze --db``, ``watch``, ``worker``):
    the store's registered devices (cohorts by class/vendor/model, site, zone, firmware version,
    every address, ``attributes`` such as ``allowed_destinations`` in ``DeviceInfo.extra``).
    Discovered devices are left out.

    The hook for the firmware registry: fill ``ctx.firmware_catalog`` here (``(vendor, model,
    version) -> {sha256}``) from the store's known-good images."""
    return context_from_rows(store.device_rows(discovered=False))


def import_inventory(path: str | Path, store: Any, *, actor: str = "cli") -> tuple[int, int]:
    """Register the devices of an inventory file; returns (devices read, devices added or changed).
    The file is checked whole before anything is written: one bad row refuses the whole file."""
    rows = read_inventory(path)
    return len(rows), store.upsert_devices(rows, actor=actor)


def export_inventory(store: Any, out: str | Path, fmt: str | None = None) -> int:
    """Write every device to ``out`` as CSV or JSON (``fmt``, else the file's suffix, else CSV) in the
    import format, so exporting and importing again gives the same inventory; returns the count."""
    out = Path(out)
    fmt = (fmt or ("json" if out.suffix.lower() == ".json" else "csv")).lower()
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {fmt!r}; expected csv or json")
    records = [export_record(d) for d in store.device_rows()]
    text = json.dumps(records, indent=1, default=str) + "\n" if fmt == "json" else export_csv(records)
    out.write_text(text, encoding="utf-8")
    return len(records)


def list_devices(store: Any, *, today: date | None = None) -> list[dict[str, Any]]:
    """Every device, each with ``vendor_risk`` (0-100, None without a vendor) and
    ``vendor_risk_reasons`` inherited from its vendor (:func:`fleetwarden.control.vendors.vendor_risk`)."""
    today = today or datetime.now(UTC).date()
    vendors = {v.name.lower(): v.to_dict() for v in store.list_vendors()}
    risks: dict[str, Any] = {}  # one assessment per vendor, not per device
    out = []
    for row in store.device_rows():
        name = (row.get("vendor") or "").lower()
        if name and name not in risks:
            risks[name] = vendor_risk(vendors.get(name), today=today)
        risk = risks.get(name)
        row["vendor_risk"] = risk.score if risk else None
        row["vendor_risk_reasons"] = list(risk.reasons) if risk else []
        out.append(row)
    return out


def unknown_devices(store: Any) -> list[dict[str, Any]]:
    """Devices passive discovery found that nobody registered, most recently seen first, with what
    they talked to (``peers``, ``ports``: ``[value, records]`` pairs, top ten)."""
    rows = []
    for d in store.list_devices(discovered=True):
        observed = (d.attributes or {}).get("observed") or {}
        rows.append(
            {
                "device_id": d.device_id,
                "mac": d.mac,
                "ip": d.ip,
                "ips": list(d.ips or []),
                "first_seen": d.first_seen,
                "last_seen": d.last_seen,
                "records": observed.get("records"),
                "peers": observed.get("peers", []),
                "ports": observed.get("ports", []),
            }
        )
    return sorted(rows, key=lambda r: (-(r["last_seen"] or 0), r["device_id"]))


def inventory_accuracy(store: Any, *, devices: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Known vs seen (:func:`fleetwarden.control.discovery.inventory_accuracy`; ``devices``: the
    store's device rows when the caller already read them)."""
    return accuracy_of(store.device_rows() if devices is None else devices)


def import_vendors(path: str | Path, store: Any, *, actor: str = "cli") -> tuple[int, int]:
    """Register the vendors of a vendor file (checked whole first); returns (read, added or changed)."""
    from fleetwarden.store.inventory import upsert_vendors

    rows = read_vendors(path)
    return len(rows), upsert_vendors(store, rows, actor=actor)


def list_vendors(store: Any, *, today: date | None = None) -> list[dict[str, Any]]:
    """Every vendor with its ``risk`` (0-100) and ``risk_reasons``."""
    today = today or datetime.now(UTC).date()
    out = []
    for v in store.list_vendors():
        row = v.to_dict()
        risk = vendor_risk(row, today=today)
        out.append({**row, "risk": risk.score, "risk_reasons": risk.reasons})
    return out
