"""The device inventory as the detection engine sees it: rows in, :class:`Context` out.

Rows come from the store's ``devices`` table, from an inventory file (JSON list of
objects or CSV with a header) or from the simulator; every source goes through
:func:`context_from_rows`, so detectors see one shape whatever the origin.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fleetwarden.core.context import Context, DeviceInfo
from fleetwarden.core.errors import InputError

# The inventory's own columns (the store's devices table has one each; tests/test_store.py checks
# they agree); anything else in a row goes to ``attributes``.
DEVICE_COLUMNS = frozenset(
    {
        "device_id",
        "ip",
        "mac",
        "vendor",
        "model",
        "device_class",
        "firmware_version",
        "owner",
        "site",
        "zone",
        "network_role",
        "data_class",
        "lifecycle",
        "discovered",
        "first_seen",
        "last_seen",
    }
)
# Longest value of a column (the store's column widths); longer ones are refused by name.
COLUMN_LIMITS = {"device_id": 200, "ip": 64, "mac": 32, "lifecycle": 20}
DEFAULT_LIMIT = 200
MAX_INVENTORY_BYTES = 256 * 1024 * 1024
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


def context_from_fleet(fleet: Any) -> Context:
    """Inventory context from the simulator's inventory and firmware catalogue."""
    return context_from_rows(fleet.inventory, getattr(fleet, "firmware_catalog", None))


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
    """Devices from a JSON list of objects or a CSV with a header; each needs ``device_id``.

    Raises :class:`~fleetwarden.core.errors.InputError` naming the file, the device (by position
    and id) and what is wrong: not text, not a list of objects, no ``device_id``, an address that
    is not one, a value longer than its column."""
    path = Path(path)
    raw = path.read_bytes() if path.stat().st_size <= MAX_INVENTORY_BYTES else None
    if raw is None:
        raise InputError(f"{path}: larger than {MAX_INVENTORY_BYTES >> 20} MB; not an inventory")
    if b"\x00" in raw[:65536]:
        raise InputError(f"{path}: binary data; expected a JSON list of device objects or a CSV with a header")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    rows = _parse_inventory(path, text)
    for n, row in enumerate(rows, start=1):
        _check_row(path, n, row)
    return rows


def _parse_inventory(path: Path, text: str) -> list[dict[str, Any]]:
    if text.lstrip().startswith(("[", "{")):
        try:
            rows = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            where = f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
            raise InputError(f"{path}: not valid JSON{where}") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise InputError(f"{path}: expected a JSON list of device objects")
        return rows
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV ({exc})") from None
    if not rows or "device_id" not in rows[0]:
        raise InputError(f"{path}: expected a JSON list of device objects or a CSV whose header has device_id")
    # csv.DictReader puts cells beyond the header under the key None
    for n, row in enumerate(rows, start=1):
        if None in row:
            raise InputError(f"{path}: device {n} has more cells than the header has columns")
    return rows


def _check_row(path: Path, n: int, row: dict[str, Any]) -> None:
    device_id = row.get("device_id")
    if not device_id or not isinstance(device_id, str | int):
        raise InputError(f"{path}: device {n} has no device_id")
    name = f"device {n} ({str(device_id)[:60]!r})"
    for key, value in row.items():
        if isinstance(value, str) and key in DEVICE_COLUMNS:
            limit = COLUMN_LIMITS.get(key, DEFAULT_LIMIT)
            if len(value) > limit:
                raise InputError(f"{path}: {name}: {key} is {len(value)} characters, at most {limit}")
    ip = row.get("ip")
    if ip not in (None, ""):
        try:
            ipaddress.ip_address(str(ip).strip())
        except ValueError:
            raise InputError(f"{path}: {name}: ip {str(ip)[:60]!r} is not an IP address") from None
    mac = row.get("mac")
    if mac not in (None, "") and not _is_mac(str(mac)):
        raise InputError(f"{path}: {name}: mac {str(mac)[:60]!r} is not a MAC address")


def _is_mac(text: str) -> bool:
    hexdigits = text.replace(":", "").replace("-", "").replace(".", "")
    return len(hexdigits) == 12 and all(c in "0123456789abcdefABCDEF" for c in hexdigits)


def _jsonable(v: Any) -> bool:
    return isinstance(v, str | int | float | bool | type(None) | list | dict)
