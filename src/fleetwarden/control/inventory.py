"""The device inventory as the detection engine sees it: rows in, :class:`Context` out; and the
inventory file format (import and export).

Rows come from the store's ``devices`` table, from an inventory file (JSON list of objects or
CSV with a header) or from the simulator; every source goes through :func:`context_from_rows`,
so detectors see one shape whatever the origin.

An inventory file is checked whole (:func:`read_inventory`): every bad row is reported with its
place (CSV line or JSON item), its column and what was wrong, and the file is refused as a whole
when any row is bad, so nothing is ever half-imported.  :data:`IMPORT_COLUMNS` is the documented
column set; any other column is kept under ``attributes`` (e.g. ``allowed_destinations``,
``maintenance_windows``), where the detectors read it.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from fleetwarden.core.context import Context, DeviceInfo
from fleetwarden.core.errors import InputError
from fleetwarden.core.text import printable

# the store's vocabularies (tests/test_inventory.py checks they equal fleetwarden.store.models')
LIFECYCLES = ("ordered", "provisioned", "active", "quarantined", "retired")
DATA_CLASSES = ("public", "internal", "confidential", "regulated")
CRITICALITIES = ("low", "medium", "high", "critical")
# older or sector names accepted on import; the original word is kept in attributes['data_class_label']
DATA_CLASS_ALIASES = {
    "phi": "regulated",
    "pci": "regulated",
    "pii": "regulated",
    "gdpr": "regulated",
    "hipaa": "regulated",
    "restricted": "confidential",
    "secret": "confidential",
    "ot-critical": "confidential",
    "open": "public",
}
LIFECYCLE_ALIASES = {"provisioning": "provisioned"}

# The documented file format: column -> what it holds (README "Inventory" and the import help).
IMPORT_COLUMNS: dict[str, str] = {
    "device_id": "unique id (required, at most 200 characters)",
    "name": "display name",
    "device_class": "kind of device (ip-camera, plc, infusion-pump…): the cohort detectors compare with",
    "vendor": "maker (matches a vendor of `fleetwarden vendor import`)",
    "model": "model name",
    "serial": "serial number",
    "mac": "MAC address (aa:bb:cc:dd:ee:ff, dashes or dots accepted)",
    "ip": "primary IP address",
    "ips": "every address (CSV: separated by ';' or spaces; JSON: a list); ip is added first",
    "owner": "responsible team or person",
    "site": "site or location",
    "zone": "network zone or segment",
    "network_role": "role on the network (sensor, gateway, video-source…)",
    "firmware_version": "installed firmware version",
    "data_class": "data classification: " + "/".join(DATA_CLASSES),
    "criticality": "/".join(CRITICALITIES),
    "lifecycle": "/".join(LIFECYCLES) + " (default active; 'provisioning' is read as provisioned)",
    "end_of_support": "end-of-support date, YYYY-MM-DD",
    "discovered": "true for a device found in traffic rather than registered (default false)",
    "first_seen": "first seen in traffic: ISO 8601 time or epoch seconds",
    "last_seen": "last seen in traffic: ISO 8601 time or epoch seconds",
    "attributes": "JSON object of extra facts (CSV: JSON text), e.g. allowed_destinations",
}
# The inventory's own columns (the store's devices table has one each); anything else in a row
# goes to ``attributes``.
DEVICE_COLUMNS = frozenset(IMPORT_COLUMNS) - {"attributes"}
# Longest value of a column (the store's column widths); longer ones are refused by name.
COLUMN_LIMITS = {"device_id": 200, "ip": 64, "mac": 32, "zone": 100, "network_role": 100}
COLUMN_LIMITS |= {"device_class": 100, "firmware_version": 100}
DEFAULT_LIMIT = 200
MAX_IPS = 64
MAX_ATTRIBUTES_JSON = 64 * 1024
MAX_INVENTORY_BYTES = 256 * 1024 * 1024
MAX_REPORTED = 20  # bad rows named in the error; the rest are counted
_INFO_FIELDS = {"device_id", "ip", "mac", "device_class", "vendor", "model", "site", "country"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InventoryError(InputError):
    """An inventory (or vendor) file refused as a whole; :attr:`problems` lists every bad row."""

    def __init__(self, path: str | Path, problems: list[str], what: str = "device row") -> None:
        self.problems = problems
        shown = "; ".join(problems[:MAX_REPORTED])
        more = f"; and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        super().__init__(f"{path}: {len(problems)} problem(s) in the {what}s, nothing imported: {shown}{more}")


# ---------------------------------------------------------------------- context


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
    """A context naming every row's device; each of its ``ips`` maps to it (the primary ``ip`` wins a
    clash).  Zone, network role, criticality, data class and ``attributes`` (allowed destinations,
    maintenance windows…) reach the detectors through ``DeviceInfo.extra``."""
    ctx = Context()
    for row in rows:
        info = device_info(row)
        ctx.add_device(info)
        for ip in row.get("ips") or ():
            ctx.ip_to_device.setdefault(str(ip), info.device_id)
    for img in firmware_catalog or ():
        key = (img["vendor"], img["model"], img["version"])
        ctx.firmware_catalog.setdefault(key, set()).add(img["image_sha256"])
    return ctx


def context_from_fleet(fleet: Any) -> Context:
    """Inventory context from the simulator's inventory and firmware catalogue."""
    return context_from_rows(fleet.inventory, getattr(fleet, "firmware_catalog", None))


def context_from_store(store: Any) -> Context:
    """The registered devices of ``store`` (a :class:`~fleetwarden.store.Store`) as a context.
    Discovered devices are left out: traffic does not make a device known to the detectors."""
    return context_from_rows(store.device_rows(discovered=False))


def store_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row for ``Store.upsert_devices``: known columns, the rest under ``attributes``.  A
    ``data_class`` or ``lifecycle`` under an older or sector name is mapped (the original word kept
    in ``attributes['data_class_label']``); one outside every vocabulary moves to attributes too."""
    out = {k: row.get(k) for k in DEVICE_COLUMNS if row.get(k) not in (None, "")}
    extra = {k: v for k, v in row.items() if k not in DEVICE_COLUMNS and k != "attributes" and _jsonable(v)}
    extra.update(row.get("attributes") or {})
    if "data_class" in out:
        label = str(out["data_class"]).strip().lower()
        mapped = DATA_CLASS_ALIASES.get(label, label)
        if mapped != label or mapped not in DATA_CLASSES:
            extra.setdefault("data_class_label", out["data_class"])
        out["data_class"] = mapped if mapped in DATA_CLASSES else None
    if "lifecycle" in out:
        out["lifecycle"] = LIFECYCLE_ALIASES.get(out["lifecycle"], out["lifecycle"])
    if extra:
        out["attributes"] = extra
    return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------------- reading a file


def read_inventory(path: str | Path) -> list[dict[str, Any]]:
    """Devices from a JSON list of objects or a CSV with a header (:data:`IMPORT_COLUMNS`), each
    cleaned: addresses normalised, vocabularies checked, times as epoch seconds, dates as dates.

    Raises :class:`InventoryError` naming every bad row (``device 3 (line 4), column mac: …``)
    when any row is bad; :class:`~fleetwarden.core.errors.InputError` for a file that is not an
    inventory at all (binary, not UTF-8, not a list of objects, no ``device_id`` column)."""
    path = Path(path)
    entries = _parse_table(path, read_text(path), required="device_id", what="device objects")
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for n, (where, raw) in enumerate(entries, start=1):
        row, bad = clean_device(raw)
        named = row.get("device_id") or (raw.get("device_id") if isinstance(raw, dict) else None)
        label = f"device {printable(str(named), 80)} ({where})" if named else f"device {n} ({where})"
        missing = f"device {n} has no device_id ({where})"
        problems += [missing if b == "device_id: missing" else f"{label}, column {b}" for b in bad]
        device_id = row.get("device_id")
        if device_id in seen:
            problems.append(f"{label}, column device_id: {device_id!r} repeats {seen[device_id]}")
        elif device_id:
            seen[device_id] = label
        rows.append(row)
    if problems:
        raise InventoryError(path, problems)
    return rows


def read_text(path: Path) -> str:
    """The file as text: bounded in size, not binary, UTF-8 (a BOM is allowed)."""
    if path.stat().st_size > MAX_INVENTORY_BYTES:
        raise InputError(f"{path}: larger than {MAX_INVENTORY_BYTES >> 20} MB; not an inventory")
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise InputError(f"{path}: binary data; expected a JSON list of objects or a CSV with a header")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _parse_table(path: Path, text: str, *, required: str, what: str) -> list[tuple[str, dict[str, Any]]]:
    """``(where, raw row)`` per entry: ``line N`` of a CSV, ``item N`` of a JSON list."""
    if text.lstrip().startswith(("[", "{")):
        try:
            rows = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            where = f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
            raise InputError(f"{path}: not valid JSON{where}") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise InputError(f"{path}: expected a JSON list of {what}")
        return [(f"item {i}", r) for i, r in enumerate(rows, start=1)]
    return _parse_csv(path, text, required=required, what=what)


def _parse_csv(path: Path, text: str, *, required: str, what: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    out: list[tuple[str, dict[str, Any]]] = []
    try:
        for row in reader:
            out.append((f"line {reader.line_num}", row))
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV at line {reader.line_num} ({exc})") from None
    if not reader.fieldnames or required not in reader.fieldnames:
        raise InputError(f"{path}: expected a JSON list of {what} or a CSV whose header has {required}")
    return out


# ---------------------------------------------------------------------- one row


def clean_device(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """One inventory row cleaned for the store, and its problems as ``"column: what"`` strings."""
    row: dict[str, Any] = {}
    problems: list[str] = []
    if None in raw:  # csv.DictReader puts cells beyond the header under the key None
        problems.append("(extra cells): more cells than the header has columns")
    for key, value in raw.items():
        if key is None or key == "attributes" or _blank(value):
            continue
        if key in DEVICE_COLUMNS:
            try:
                row[key] = _CLEANERS.get(key, _text_of(key))(value)
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
    attributes, bad = _attributes_of(raw)
    problems += bad
    if not row.get("device_id") and "device_id" not in {p.split(":")[0] for p in problems}:
        problems.insert(0, "device_id: missing")
    _primary_first(row)
    if attributes:
        row["attributes"] = attributes
    if "data_class" in row and isinstance(row["data_class"], tuple):
        row["data_class"], label = row["data_class"]
        row.setdefault("attributes", {})["data_class_label"] = label
    return row, problems


def _attributes_of(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    extra = {k: v for k, v in raw.items() if k is not None and k not in IMPORT_COLUMNS and not _blank(v)}
    given = raw.get("attributes")
    if isinstance(given, str) and given.strip():
        try:
            given = json.loads(given)
        except (json.JSONDecodeError, RecursionError):
            return extra, ["attributes: not a JSON object"]
    if given not in (None, "") and not isinstance(given, dict):
        return extra, ["attributes: not a JSON object"]
    extra.update(given or {})
    try:
        size = len(json.dumps(extra, default=str))
    except (TypeError, ValueError, RecursionError):
        return extra, ["attributes: not JSON data"]
    if size > MAX_ATTRIBUTES_JSON:
        return extra, [f"attributes: {size} bytes of JSON, at most {MAX_ATTRIBUTES_JSON}"]
    return extra, []


def _primary_first(row: dict[str, Any]) -> None:
    """``ip`` is the primary address and the first of ``ips``; either fills the other."""
    ips = list(row.get("ips") or [])
    if row.get("ip"):
        ips = [row["ip"], *(a for a in ips if a != row["ip"])]
    elif ips:
        row["ip"] = ips[0]
    if ips:
        row["ips"] = ips


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _shown(value: Any) -> str:
    return repr(str(value)[:60])


def _text_of(column: str, limit: int | None = None) -> Callable[[Any], str]:
    limit = limit or COLUMN_LIMITS.get(column, DEFAULT_LIMIT)

    def clean(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"expected text, got {type(value).__name__}")
        text = str(value).strip()
        if len(text) > limit:
            raise ValueError(f"{len(text)} characters, at most {limit}")
        if _CONTROL.search(text):
            raise ValueError(f"{_shown(text)} holds control characters")
        return text

    return clean


def clean_ip(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise ValueError(f"{_shown(value)} is not an IP address") from None


def clean_mac(value: Any) -> str:
    """``aa:bb:cc:dd:ee:ff`` from colon, dash, dot (Cisco) or bare hex notation."""
    digits = str(value).strip().replace(":", "").replace("-", "").replace(".", "").lower()
    if len(digits) != 12 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"{_shown(value)} is not a MAC address")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _clean_ips(value: Any) -> list[str]:
    items = value if isinstance(value, list) else re.split(r"[;,\s]+", str(value).strip())
    items = [i for i in items if not _blank(i)]
    if len(items) > MAX_IPS:
        raise ValueError(f"{len(items)} addresses, at most {MAX_IPS}")
    return list(dict.fromkeys(clean_ip(i) for i in items))


def _choice(vocabulary: tuple[str, ...], aliases: Mapping[str, str]) -> Callable[[Any], str]:
    def clean(value: Any) -> str:
        word = str(value).strip().lower()
        word = aliases.get(word, word)
        if word not in vocabulary:
            raise ValueError(f"{_shown(value)} is not one of {', '.join(vocabulary)}")
        return word

    return clean


def _clean_data_class(value: Any) -> str | tuple[str, str]:
    word = str(value).strip().lower()
    if word in DATA_CLASS_ALIASES:
        return DATA_CLASS_ALIASES[word], str(value).strip()
    return _choice(DATA_CLASSES, {})(value)


def clean_date(value: Any) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"{_shown(value)} is not a date (YYYY-MM-DD)") from None


def _clean_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("true", "1", "yes"):
        return True
    if word in ("false", "0", "no"):
        return False
    raise ValueError(f"{_shown(value)} is not true or false")


def _clean_time(value: Any) -> float:
    """Epoch seconds from a number or an ISO 8601 time (UTC when it names no zone)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        t = float(value)
    else:
        text = str(value).strip()
        try:
            t = float(text)
        except ValueError:
            try:
                when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"{_shown(value)} is not a time (ISO 8601 or epoch seconds)") from None
            t = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(t) or not 0 <= t < 1e11:
        raise ValueError(f"{_shown(value)} is not a plausible time")
    return t


_CLEANERS: dict[str, Callable[[Any], Any]] = {
    "ip": clean_ip,
    "mac": clean_mac,
    "ips": _clean_ips,
    "data_class": _clean_data_class,
    "criticality": _choice(CRITICALITIES, {}),
    "lifecycle": _choice(LIFECYCLES, LIFECYCLE_ALIASES),
    "end_of_support": clean_date,
    "discovered": _clean_bool,
    "first_seen": _clean_time,
    "last_seen": _clean_time,
}


# ---------------------------------------------------------------------- writing a file

EXPORT_COLUMNS = tuple(IMPORT_COLUMNS)


def export_record(device: Mapping[str, Any]) -> dict[str, Any]:
    """A stored device (``Device.to_dict()``) in the file format: :data:`EXPORT_COLUMNS`, times in
    ISO 8601 UTC, the date as ``YYYY-MM-DD``; importing it gives the same device back."""
    out: dict[str, Any] = {}
    for col in EXPORT_COLUMNS:
        v = device.get(col)
        if col in ("first_seen", "last_seen") and v is not None:
            v = datetime.fromtimestamp(float(v), UTC).isoformat()
        elif col == "end_of_support" and v is not None:
            v = v.isoformat() if isinstance(v, date) else str(v)
        elif col == "attributes":
            v = dict(v or {})
        elif col == "ips":
            v = list(v or [])
        out[col] = v
    return out


def export_csv(records: Iterable[Mapping[str, Any]]) -> str:
    """CSV text of :func:`export_record` rows: ``ips`` joined by ';', ``attributes`` as JSON."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in records:
        cells = dict(r)
        cells["ips"] = ";".join(r.get("ips") or [])
        cells["attributes"] = json.dumps(r.get("attributes") or {}, sort_keys=True) if r.get("attributes") else ""
        cells["discovered"] = "true" if r.get("discovered") else "false"
        writer.writerow({k: "" if v is None else v for k, v in cells.items()})
    return buf.getvalue()


def _jsonable(v: Any) -> bool:
    return isinstance(v, str | int | float | bool | type(None) | list | dict)
