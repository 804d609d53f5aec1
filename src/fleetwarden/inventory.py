"""The device inventory as the detection engine sees it: rows in, :class:`Context` out.

Rows come from the store's ``devices`` table, from an inventory file (JSON list of
objects or CSV with a header) or from the simulator; every source goes through
:func:`context_from_rows`, so detectors see one shape whatever the origin.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fleetwarden.detection.analytics.base import Context, DeviceInfo
from fleetwarden.store.repository import DEVICE_FIELDS

# Columns of the store's devices table; anything else in a row goes to ``attributes``.
DEVICE_COLUMNS = DEVICE_FIELDS - {"attributes"}
_INFO_FIELDS = {"device_id", "ip", "mac", "device_class", "vendor", "model", "site", "country"}


def device_info(row: Mapping[str, Any]) -> DeviceInfo:
    attributes = row.get("attributes") or {}
    extra = {**attributes, **{k: v for k, v in row.items() if k not in _INFO_FIELDS and k != "attributes"}}
    return DeviceInfo(
        device_id=str(row["device_id"]),
        ip=row.get("ip") or None,
        mac=(row.get("mac") or None),
        device_class=row.get("device_class") or None,
        vendor=row.get("vendor") or None,
        model=row.get("model") or None,
        site=row.get("site") or None,
        country=row.get("country") or attributes.get("country") or None,
        firmware=row.get("firmware_version") or None,
        extra=extra,
    )


def context_from_rows(
    rows: Iterable[Mapping[str, Any]], firmware_catalog: Iterable[Mapping[str, Any]] | None = None
) -> Context:
    ctx = Context()
    for row in rows:
        ctx.add_device(device_info(row))
    for img in firmware_catalog or ():
        key = (img["vendor"], img["model"], img["version"])
        ctx.firmware_catalog.setdefault(key, set()).add(img["image_sha256"])
    return ctx


def context_from_store(store: Any) -> Context:
    return context_from_rows(d.to_dict() for d in store.list_devices())


def store_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row for ``Store.upsert_devices``: known columns, the rest under ``attributes``."""
    out = {k: row.get(k) for k in DEVICE_COLUMNS if row.get(k) not in (None, "")}
    extra = {k: v for k, v in row.items() if k not in DEVICE_COLUMNS and k != "attributes" and _jsonable(v)}
    extra.update(row.get("attributes") or {})
    if extra:
        out["attributes"] = extra
    return out


def read_inventory(path: str | Path) -> list[dict[str, Any]]:
    """Devices from a JSON list of objects or a CSV with a header; each needs ``device_id``."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: expected a JSON list of device objects")
    else:
        rows = list(csv.DictReader(text.splitlines()))
    for n, row in enumerate(rows, start=1):
        if not row.get("device_id"):
            raise ValueError(f"{path}: device {n} has no device_id")
    return rows


def _jsonable(v: Any) -> bool:
    return isinstance(v, str | int | float | bool | type(None) | list | dict)
