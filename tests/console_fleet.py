"""A small fleet for the console's tests and screenshots: devices (one with a hostile id: markup
and a bidi override), findings and incidents recorded through the store, response actions
proposed through :mod:`fleetwarden.app.response`, and one user per role."""

from __future__ import annotations

from typing import Any

from fleetwarden.app.identity import add_user
from fleetwarden.app.response import load_policy, propose
from fleetwarden.core.findings import Finding, Incident

HOSTILE = "<script>alert(1)</script>\u202egpj.exe"
T0 = 1_790_000_000.0  # 2026-09-21, a fixed event time


def _devices() -> list[dict[str, Any]]:
    rows = [
        {"device_id": "cam-01", "ip": "10.0.0.11", "ips": ["10.0.0.11"], "vendor": "Axis", "model": "M3106",
         "device_class": "camera", "site": "hq", "criticality": "critical", "firmware_version": "10.2"},
        {"device_id": "plug-02", "ip": "10.0.0.12", "ips": ["10.0.0.12"], "vendor": "Shelly", "model": "Plug S",
         "device_class": "plug", "site": "hq", "criticality": "low", "firmware_version": "1.0"},
        {"device_id": HOSTILE, "ip": "10.0.0.66", "vendor": "<b>evil</b>", "device_class": "camera", "site": "lab"},
        {"device_id": "10.0.0.99", "ip": "10.0.0.99", "discovered": True, "first_seen": T0, "last_seen": T0 + 60},
    ]  # fmt: skip
    return rows


def _finding(entity: str, category: str, hours: float, score: float = 0.95) -> Finding:
    return Finding(
        entity=entity, category=category, detector="beacon", score=score, first_seen=T0 + hours * 3600,
        last_seen=T0 + hours * 3600 + 60, evidence=[f"periodic connections from {entity} every 60 s"],
        mitre=["T1071"], device_id=entity,
    )  # fmt: skip


def _incident(entity: str, category: str, risk: int, findings: list[Finding]) -> Incident:
    return Incident(
        entity=entity, category=category, severity="critical" if risk >= 80 else "medium", risk=risk,
        first_seen=findings[0].first_seen, last_seen=findings[-1].last_seen,
        evidence=[f"{entity} beacons to 203.0.113.5"], mitre=["T1071"], findings=findings,
    )  # fmt: skip


def seed_console_fleet(store: Any) -> dict[str, Any]:
    """Fill ``store``; returns the users' tokens by role and the incident ids by device."""
    store.upsert_devices(_devices(), actor="test")
    stories = {
        "cam-01": ("c2-beacon", 92, [_finding("cam-01", "c2-beacon", h) for h in (0, 1, 2, 30, 40, 47)]),
        "plug-02": ("scan", 45, [_finding("plug-02", "scan", h, 0.5) for h in (3, 4)]),
        HOSTILE: ("c2-beacon", 88, [_finding(HOSTILE, "c2-beacon", h) for h in (5, 6)]),
    }
    incidents = [_incident(e, c, r, fs) for e, (c, r, fs) in stories.items()]
    store.record_results("console-test", [], incidents, actor="test")
    ids = {i.entity: i.id for i in store.list_incidents()}
    policy = load_policy()
    for incident_id in ids.values():
        propose(store, incident_id, policy=policy, actor="policy")
    tokens = {role: add_user(store, role, role, actor="test")[1] for role in ("admin", "operator", "viewer")}
    return {"tokens": tokens, "incidents": ids}
