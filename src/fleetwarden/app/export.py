"""Exporting what the store knows to other security tools: SIEM lines (CEF, OCSF JSON) to a file or
a syslog server, signed webhooks to a SOAR or ticketing system, STIX 2.1 indicator bundles.

The formatting is pure (:mod:`fleetwarden.control.siem`, :mod:`fleetwarden.control.stix`); this
module reads the store's findings and incidents as plain dicts, sends and writes.  Sending data
out of the platform is audited (destination with credentials masked, counts; never a secret).

*Blind spots.*  Syslog over UDP has no delivery guarantee (RFC 5426): a lost datagram is lost;
use TCP when every event must arrive.  TCP sends without TLS (RFC 5425 is not implemented here):
run it to a collector on the same host or network segment.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetwarden import __version__
from fleetwarden.app.webhook import post_signed
from fleetwarden.control.siem import octet_counted, syslog_frame, to_cef, to_ocsf
from fleetwarden.control.stix import indicators_from, stix_bundle
from fleetwarden.core.errors import InputError
from fleetwarden.core.text import redact_url
from fleetwarden.store import Store
from fleetwarden.store.models import FindingRecord, IncidentRecord

__all__ = [
    "FORMATS",
    "ExportError",
    "WebhookSummary",
    "export_lines",
    "export_records",
    "export_stix",
    "export_webhook",
    "parse_since",
    "parse_target",
    "send_syslog",
    "write_text",
]

FORMATS = ("cef", "ocsf")
PROTOCOLS = ("udp", "tcp")
MAX_RECORDS = 100_000


class ExportError(InputError):
    """An export that cannot be done as asked: unknown format, bad time, bad destination."""


# ------------------------------------------------------------------------------------ inputs


def parse_since(text: str | None) -> float | None:
    """``--since``: an ISO 8601 date or time (UTC when no offset is given) as epoch seconds."""
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(text.strip()[:64])
    except ValueError:
        raise ExportError(
            f"--since {text[:64]!r}: expected an ISO 8601 time such as 2024-05-01T12:00Z"
        ) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def parse_target(target: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) of a syslog server."""
    host, sep, port = target.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or len(host) > 255:
        raise ExportError(f"syslog target {target[:100]!r}: expected HOST:PORT")
    return host, int(port)


# ------------------------------------------------------------------------------------ records


def _incident_dict(r: IncidentRecord) -> dict[str, Any]:
    return {
        "id": r.id, "entity": r.entity, "device_id": r.device_id, "ip": r.ip, "mac": r.mac,
        "category": r.category, "severity": r.severity, "risk": r.risk, "first_seen": r.first_seen,
        "last_seen": r.last_seen, "evidence": list(r.evidence or []), "mitre": list(r.mitre or []),
        "status": r.status,
    }  # fmt: skip


def _finding_dict(r: FindingRecord) -> dict[str, Any]:
    return {
        "id": r.id, "entity": r.entity, "device_id": r.device_id, "ip": r.ip, "mac": r.mac,
        "category": r.category, "detector": r.detector, "severity": r.severity, "score": r.score,
        "first_seen": r.first_seen, "last_seen": r.last_seen, "evidence": list(r.evidence or []),
        "mitre": list(r.mitre or []), "attributes": dict(r.attributes or {}), "incident_id": r.incident_id,
    }  # fmt: skip


def export_records(store: Store, *, since: float | None = None, what: str = "all") -> list[dict[str, Any]]:
    """Incidents then findings (``what``: all, incidents, findings) whose last sighting is at or
    after ``since``, as plain dicts, oldest first within each kind."""
    if what not in ("all", "incidents", "findings"):
        raise ExportError(f"unknown record kind {what!r}; expected all, incidents or findings")
    rows: list[dict[str, Any]] = []
    if what in ("all", "incidents"):
        rows += [_incident_dict(r) for r in store.list_incidents(since=since, limit=MAX_RECORDS)]
    if what in ("all", "findings"):
        rows += [_finding_dict(r) for r in store.list_findings(since=since, limit=MAX_RECORDS)]
    rows.sort(key=lambda r: ("risk" not in r, r["last_seen"], r["id"]))
    return rows


def _render(record: dict[str, Any], fmt: str) -> str:
    if fmt == "cef":
        return to_cef(record, version=__version__)
    return json.dumps(to_ocsf(record, version=__version__), sort_keys=True, ensure_ascii=True)


def export_lines(store: Store, fmt: str, *, since: float | None = None, what: str = "all") -> list[str]:
    """One line per record: a CEF:0 line or an OCSF JSON object (JSON lines)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return [_render(r, fmt) for r in export_records(store, since=since, what=what)]


def write_text(path: Path, text: str) -> int:
    """Write ``text`` to ``path`` (replacing it); bytes written."""
    data = text.encode("utf-8")
    path.write_bytes(data)
    return len(data)


# ------------------------------------------------------------------------------------ syslog


def send_syslog(
    store: Store,
    fmt: str,
    target: str,
    *,
    protocol: str = "udp",
    since: float | None = None,
    what: str = "all",
    timeout: float = 10.0,
    actor: str = "cli",
) -> int:
    """Send each record as one RFC 5424 message to ``target`` (HOST:PORT) over UDP or TCP (RFC 6587
    octet counting); the number of messages sent.  Audited."""
    if protocol not in PROTOCOLS:
        raise ExportError(f"unknown syslog protocol {protocol!r}; expected udp or tcp")
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    host, port = parse_target(target)
    frames = _frames(export_records(store, since=since, what=what), fmt)
    try:
        (_send_tcp if protocol == "tcp" else _send_udp)(host, port, frames, timeout)
    except OSError as exc:
        raise ExportError(f"syslog {protocol}://{host}:{port}: {exc.strerror or exc}") from None
    store.audit_append(
        actor, "export.syslog", f"{protocol}://{host}:{port}", {"format": fmt, "messages": len(frames)}
    )
    return len(frames)


def _frames(records: Sequence[dict[str, Any]], fmt: str) -> list[bytes]:
    hostname = socket.gethostname()
    now = time.time()
    return [
        syslog_frame(_render(r, fmt), timestamp=now, hostname=hostname, severity=str(r.get("severity")),
                     msgid="incident" if "risk" in r else "finding")
        for r in records
    ]  # fmt: skip


def _send_udp(host: str, port: int, frames: Sequence[bytes], timeout: float) -> None:
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        for frame in frames:
            sock.sendto(frame, address)


def _send_tcp(host: str, port: int, frames: Sequence[bytes], timeout: float) -> None:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        for frame in frames:
            sock.sendall(octet_counted(frame))


# ------------------------------------------------------------------------------------ webhook


@dataclass
class WebhookSummary:
    """What a webhook export did: one POST per record."""

    sent: int = 0
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


def export_webhook(
    store: Store,
    url: str,
    secret: bytes,
    *,
    since: float | None = None,
    what: str = "incidents",
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 0.5,
    actor: str = "cli",
) -> WebhookSummary:
    """POST each record (incidents by default) as an OCSF Detection Finding, signed
    (:func:`fleetwarden.app.webhook.post_signed`); a 2xx answer counts as sent.  Audited."""
    summary = WebhookSummary()
    for record in export_records(store, since=since, what=what):
        payload = to_ocsf(record, version=__version__)
        status = post_signed(url, payload, secret, timeout=timeout, retries=retries, backoff=backoff)
        summary.statuses[status] = summary.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            summary.sent += 1
        else:
            summary.failed += 1
    store.audit_append(
        actor, "export.webhook", redact_url(url)[:500], {"sent": summary.sent, "failed": summary.failed}
    )
    return summary


# ------------------------------------------------------------------------------------ STIX


def export_stix(store: Store, *, since: float | None = None, producer: str = "FleetWarden") -> dict[str, Any]:
    """A STIX 2.1 bundle of the indicators worth sharing in the stored findings (never the
    fleet's own addresses: the inventory's and the findings' own entities are excluded)."""
    findings = export_records(store, since=since, what="findings")
    own = _own_names(store, findings)
    return stix_bundle(indicators_from(findings, own), producer=producer)


def _own_names(store: Store, findings: Sequence[dict[str, Any]]) -> set[str]:
    own: set[str] = set()
    for d in store.list_devices():
        own.update(x for x in (d.device_id, d.ip, d.name, *(d.ips or [])) if x)
    for f in findings:
        own.update(x for x in (f.get("entity"), f.get("ip"), f.get("device_id")) if x)
    return own
