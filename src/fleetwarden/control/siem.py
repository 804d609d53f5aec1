"""SIEM formatting of findings and incidents: ArcSight CEF lines, OCSF Detection Finding JSON and
RFC 5424 syslog frames.  Pure functions over plain dicts (the store's rows as the application
layer hands them over): no socket, file, clock or database here.

*Contract.*  A record is a dict with the fields of a stored finding or incident: ``id``,
``entity``, ``device_id``, ``ip``, ``mac``, ``category``, ``severity`` (low/medium/high/critical),
``first_seen`` / ``last_seen`` (epoch seconds), ``evidence`` (sentences), ``mitre`` (technique
ids) and either ``score`` (0–1, a finding: ``detector`` too) or ``risk`` (0–100, an incident).
Every value came from a device, a log or a broker, so every value is treated as hostile:

* CEF header fields escape ``\\`` and ``|``; extension values escape ``\\``, ``=`` and newlines
  (``\\n``, ``\\r``), as the ArcSight *Implementing CEF* guide (rev. 25) requires.  Other control
  characters (ANSI escapes, bidi overrides) become visible ``\\xNN`` text first
  (:func:`fleetwarden.core.text.printable`), so nothing reaches a SIEM console that can move a
  cursor or forge a second event.  Fields are cut to the guide's lengths *before* escaping, so an
  escape sequence is never split.
* An address that does not parse as an IP address is not put in an address field (``src``,
  ``src_endpoint.ip``): it stays visible in the entity fields, escaped.
* OCSF is the Detection Finding class (``class_uid`` 2004, category 2 "Findings", OCSF 1.1):
  the JSON encoder escapes the rest.

*Blind spots.*  CEF severity is derived from FleetWarden's own severity and score; a SIEM that
re-scores by category will disagree.  Syslog frames are built here, sent by
:mod:`fleetwarden.app.export`.

References: ArcSight Common Event Format (CEF) Implementation Standard; OCSF schema 1.1.0
``detection_finding``; RFC 5424 (syslog), RFC 6587 §3.4.1 (octet counting over TCP).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fleetwarden.core.text import printable, truncate

__all__ = [
    "CEF_VENDOR",
    "OCSF_CLASS_UID",
    "cef_escape_header",
    "cef_escape_value",
    "cef_severity",
    "to_cef",
    "to_ocsf",
    "syslog_frame",
    "octet_counted",
]

CEF_VENDOR = "FleetWarden"
CEF_PRODUCT = "FleetWarden"
OCSF_VERSION = "1.1.0"
OCSF_CLASS_UID = 2004  # Detection Finding
OCSF_CATEGORY_UID = 2  # Findings
OCSF_ACTIVITY_CREATE = 1

# the CEF guide's bounds (characters) for the header fields and the extension keys used here
_HEADER_BOUND = {"vendor": 63, "product": 63, "version": 31, "class": 1023, "name": 512}
_EXT_BOUND = {"msg": 1023, "cat": 1023, "cs": 4000, "mac": 17, "ext_id": 40}
_MAX_EVIDENCE = 20
_MAX_MITRE = 32
_BANDS = {"low": (1, 3), "medium": (4, 6), "high": (7, 8), "critical": (9, 10)}
_OCSF_SEVERITY = {"low": 2, "medium": 3, "high": 4, "critical": 5}
_SYSLOG_SEVERITY = {"low": 5, "medium": 4, "high": 3, "critical": 2}  # notice, warning, error, crit


# ------------------------------------------------------------------------------------ escaping


def _clean(value: object, limit: int) -> str:
    """Controls made visible (newlines and tabs kept for the caller), cut to ``limit``."""
    return printable("" if value is None else value, limit)


def cef_escape_header(value: object, limit: int = 1023) -> str:
    """A CEF header field: one line, cut to ``limit``, ``\\`` and ``|`` escaped."""
    s = _clean(value, limit).replace("\r", " ").replace("\n", " ").replace("\t", " ")
    return s.replace("\\", "\\\\").replace("|", "\\|")


def cef_escape_value(value: object, limit: int = 1023) -> str:
    """A CEF extension value: cut to ``limit``, ``\\``, ``=`` and newlines escaped (a ``|`` needs
    no escape in the extension)."""
    raw = "" if value is None else str(value)
    # a carriage return is kept for its own CEF escape; every other control becomes visible text
    s = truncate("\r".join(printable(part) for part in raw.split("\r")), limit)
    s = s.replace("\\", "\\\\").replace("=", "\\=")
    return s.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r").replace("\t", " ")


def cef_severity(severity: str, score: float | None = None, risk: int | None = None) -> int:
    """0–10: the finding's score (or the incident's risk) placed inside the band of its severity
    (low 1–3, medium 4–6, high 7–8, critical 9–10); an unknown severity is 0."""
    lo, hi = _BANDS.get(str(severity), (0, 0))
    if hi == 0:
        return 0
    level = risk / 10 if risk is not None else (score or 0.0) * 10
    return int(min(hi, max(lo, round(level))))


# ------------------------------------------------------------------------------------ fields


def _ip(value: object) -> str | None:
    try:
        return str(ipaddress.ip_address(str(value))) if value else None
    except ValueError:
        return None


def _mac(value: object) -> str | None:
    s = str(value or "")
    ok = len(s) == 17 and all(c in "0123456789abcdefABCDEF:-" for c in s)
    return s.lower() if ok else None


def _kind(record: Mapping[str, Any]) -> str:
    return "incident" if "risk" in record and record.get("risk") is not None else "finding"


def _strings(values: object, limit: int) -> list[str]:
    if not isinstance(values, list | tuple):
        return []
    return [str(v) for v in values[:limit]]


def _ms(ts: object) -> int:
    try:
        return int(round(float(ts) * 1000))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def _title(record: Mapping[str, Any]) -> str:
    return f"{record.get('category', 'unknown')} on {record.get('entity', '?')}"


# ------------------------------------------------------------------------------------ CEF


def to_cef(record: Mapping[str, Any], *, version: str) -> str:
    """One CEF:0 line for a finding or an incident (``version``: FleetWarden's)."""
    kind = _kind(record)
    header = [
        "CEF:0",
        cef_escape_header(CEF_VENDOR, _HEADER_BOUND["vendor"]),
        cef_escape_header(CEF_PRODUCT, _HEADER_BOUND["product"]),
        cef_escape_header(version, _HEADER_BOUND["version"]),
        cef_escape_header(f"{kind}:{record.get('category', 'unknown')}", _HEADER_BOUND["class"]),
        cef_escape_header(_title(record), _HEADER_BOUND["name"]),
        str(cef_severity(str(record.get("severity")), record.get("score"), record.get("risk"))),
    ]
    return "|".join(header) + "|" + _cef_extension(record, kind)


def _cef_extension(record: Mapping[str, Any], kind: str) -> str:
    pairs: list[tuple[str, str, int]] = [
        ("externalId", f"{kind}-{record.get('id', '')}", _EXT_BOUND["ext_id"]),
        ("rt", str(_ms(record.get("last_seen"))), 20),
        ("start", str(_ms(record.get("first_seen"))), 20),
        ("end", str(_ms(record.get("last_seen"))), 20),
        ("cat", str(record.get("category", "")), _EXT_BOUND["cat"]),
        ("cs1Label", "entity", 20),
        ("cs1", str(record.get("entity", "")), _EXT_BOUND["cs"]),
        ("cs2Label", "mitre", 20),
        ("cs2", ",".join(_strings(record.get("mitre"), _MAX_MITRE)), _EXT_BOUND["cs"]),
        ("msg", " / ".join(_strings(record.get("evidence"), _MAX_EVIDENCE)), _EXT_BOUND["msg"]),
    ]
    pairs += _cef_optional(record, kind)
    return " ".join(f"{key}={cef_escape_value(value, limit)}" for key, value, limit in pairs)


def _cef_optional(record: Mapping[str, Any], kind: str) -> list[tuple[str, str, int]]:
    extra: list[tuple[str, str, int]] = []
    if record.get("device_id"):
        extra += [("cs3Label", "deviceId", 20), ("cs3", str(record["device_id"]), _EXT_BOUND["cs"])]
    if kind == "finding" and record.get("detector"):
        extra += [("cs4Label", "detector", 20), ("cs4", str(record["detector"]), _EXT_BOUND["cs"])]
    if kind == "incident":
        extra += [("cn1Label", "risk", 20), ("cn1", str(int(record.get("risk") or 0)), 4)]
    if ip := _ip(record.get("ip")):
        extra.append(("src", ip, 45))
    if mac := _mac(record.get("mac")):
        extra.append(("smac", mac, _EXT_BOUND["mac"]))
    return extra


# ------------------------------------------------------------------------------------ OCSF


def to_ocsf(record: Mapping[str, Any], *, version: str) -> dict[str, Any]:
    """An OCSF 1.1 Detection Finding (class 2004) for a finding or an incident."""
    kind = _kind(record)
    severity = str(record.get("severity"))
    event: dict[str, Any] = {
        "class_uid": OCSF_CLASS_UID,
        "class_name": "Detection Finding",
        "category_uid": OCSF_CATEGORY_UID,
        "category_name": "Findings",
        "activity_id": OCSF_ACTIVITY_CREATE,
        "activity_name": "Create",
        "type_uid": OCSF_CLASS_UID * 100 + OCSF_ACTIVITY_CREATE,
        "severity_id": _OCSF_SEVERITY.get(severity, 0),
        "severity": severity.capitalize() if severity in _OCSF_SEVERITY else "Unknown",
        "time": _ms(record.get("last_seen")),
        "status_id": 1,
        "status": "New",
        "message": _clean(_title(record), 512),
        "finding_info": _finding_info(record, kind),
        "attacks": [_attack(t) for t in _strings(record.get("mitre"), _MAX_MITRE)],
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": CEF_PRODUCT, "vendor_name": CEF_VENDOR, "version": _clean(version, 31)},
        },
    }
    event.update(_endpoints(record))
    if kind == "incident":
        event["risk_score"] = int(record.get("risk") or 0)
    else:
        event["confidence_score"] = int(round(float(record.get("score") or 0.0) * 100))
    return event


def _finding_info(record: Mapping[str, Any], kind: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "uid": f"fleetwarden-{kind}-{_clean(record.get('id', ''), 40)}",
        "title": _clean(_title(record), 512),
        "desc": _clean(" / ".join(_strings(record.get("evidence"), _MAX_EVIDENCE)), 4000),
        "types": [_clean(record.get("category", "unknown"), 50)],
        "first_seen_time": _ms(record.get("first_seen")),
        "last_seen_time": _ms(record.get("last_seen")),
    }
    if kind == "finding" and record.get("detector"):
        info["analytic"] = {"name": _clean(record["detector"], 100), "type_id": 1, "type": "Rule"}
    return info


def _attack(technique: str) -> dict[str, Any]:
    return {"technique": {"uid": _clean(technique, 20)}, "version": "14"}


def _endpoints(record: Mapping[str, Any]) -> dict[str, Any]:
    ip, mac = _ip(record.get("ip")), _mac(record.get("mac"))
    device: dict[str, Any] = {"uid": _clean(record.get("device_id") or record.get("entity", ""), 200)}
    device["type_id"] = 99  # "Other": an IoT device
    endpoint: dict[str, Any] = {}
    if ip:
        device["ip"] = endpoint["ip"] = ip
    if mac:
        device["mac"] = endpoint["mac"] = mac
    return {"device": device, "src_endpoint": endpoint or {"uid": device["uid"]}}


# ------------------------------------------------------------------------------------ syslog


def syslog_frame(
    message: str,
    *,
    timestamp: float,
    hostname: str,
    severity: str = "medium",
    facility: int = 16,
    app_name: str = "fleetwarden",
    msgid: str = "-",
    max_bytes: int = 8192,
) -> bytes:
    """One RFC 5424 message (``<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID - MSG``), UTF-8, cut to
    ``max_bytes``; ``facility`` 16 is local0.  The header fields are printable US-ASCII without
    spaces, as §6 requires (anything else becomes ``_``); ``message`` is a CEF line or JSON."""
    pri = max(0, min(23, facility)) * 8 + _SYSLOG_SEVERITY.get(severity, 5)
    ts = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    head = f"<{pri}>1 {ts} {_token(hostname, 255)} {_token(app_name, 48)} - {_token(msgid, 32)} - "
    body = message.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")
    frame = head.encode("ascii") + body
    return frame[:max_bytes].decode("utf-8", "ignore").encode("utf-8")  # never half a character


def octet_counted(frame: bytes) -> bytes:
    """RFC 6587 octet-counting framing for syslog over TCP: ``LEN SP FRAME``."""
    return str(len(frame)).encode("ascii") + b" " + frame


def _token(value: str, limit: int) -> str:
    s = "".join(c if 33 <= ord(c) <= 126 else "_" for c in str(value))[:limit]
    return s or "-"
