"""The identity audit service: the store's certificates, devices and operators, and the connections
of broker logs, through the pure checks of :mod:`fleetwarden.control.identity_audit`.

With ``record`` the checks that name devices become findings (one per device and check), recorded
through the path ``analyze`` uses (:func:`fleetwarden.app.session.join_stories` then
:meth:`Store.record_results`), so they join each device's incidents and risk score.

*Blind spots.* A check lists at most ``MAX_ENTITIES`` entities: beyond that, devices are not
recorded until the first ones are fixed.  Operator checks, and entities that are no known device
(a login ``user@address``, a client id that is no device id), are never recorded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fleetwarden.control.identity_audit import AuditCheck, audit_identity
from fleetwarden.core.findings import Finding

__all__ = ["AUDIT_SOURCE", "CHECK_CATEGORY", "SEVERITY_SCORE", "audit_findings", "identity_audit"]

MAX_CONNECTIONS = 1_000_000  # records read from broker logs, in all
AUDIT_SOURCE = "identity-audit"
# the finding's category per check; any other device check is a policy violation
CHECK_CATEGORY = {
    "CERTIFICATE_SHARED": "cloned-device",
    "CERTIFICATE_SEEN_TWICE": "cloned-device",
    "DEFAULT_CREDENTIALS": "credential-misuse",
    "SHARED_CREDENTIALS": "credential-misuse",
    "REVOKED_STILL_CONNECTING": "credential-misuse",
}
# the finding's score (how sure it is a threat) per check severity
SEVERITY_SCORE = {"critical": 0.95, "high": 0.8, "medium": 0.5, "low": 0.3}
MITRE = {"cloned-device": ["T1078", "T1552.004"], "credential-misuse": ["T1078.001"]}


def identity_audit(
    store: Any,
    *,
    broker_logs: Iterable[Path] = (),
    now: float | None = None,
    record: bool = False,
    actor: str = "cli",
    devices: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run every identity check; returns ``{"checks": [...], "counts": {...}, "skipped": N}``, and
    with ``record`` also ``"recorded"``: ``findings_added``, ``incidents_opened``, ``incidents_updated``
    (a re-run over an unchanged fleet adds nothing: findings already in the devices' open stories
    are not made again).  ``devices``: the store's device rows when the caller already read them."""
    from fleetwarden.app.identity import list_certificates, list_users

    now = now or time.time()
    certificates = list_certificates(store)
    devices = store.device_rows() if devices is None else devices
    operators = list_users(store)
    connections, skipped = _connections(broker_logs)
    checks = audit_identity(certificates, devices, operators, connections, now=now)
    counts = {
        "certificates": len(certificates), "devices": len(devices), "operators": len(operators),
        "connections": len(connections),
    }  # fmt: skip
    result = {"checks": [c.to_dict() for c in checks], "counts": counts, "skipped": skipped}
    if record:
        found = audit_findings(checks, devices, [c["device_id"] for c in certificates], now=now)
        result["recorded"] = _record(store, found, actor)
    return result


def audit_findings(
    checks: Iterable[AuditCheck], devices: list[dict[str, Any]], certified: Iterable[str], *, now: float
) -> list[Finding]:
    """One finding per check and named device: detector ``identity.audit.<CHECK>``, category from
    :data:`CHECK_CATEGORY`, score from :data:`SEVERITY_SCORE`, evidence the check's ``found`` then
    its ``fix``.  A device is an inventory device or one a certificate was issued to; operator checks
    name no device."""
    by_id = {str(d["device_id"]): d for d in devices}
    known = set(by_id) | {str(c) for c in certified}
    out = []
    for check in checks:
        if check.check.startswith("OPERATOR_"):
            continue
        for entity in check.entities:
            if entity in known:
                out.append(_finding(check, entity, by_id.get(entity) or {}, now))
    return out


def _finding(check: AuditCheck, device_id: str, device: dict[str, Any], now: float) -> Finding:
    category = CHECK_CATEGORY.get(check.check, "policy-violation")
    return Finding(
        entity=device_id,
        category=category,
        detector=f"identity.audit.{check.check}",
        score=SEVERITY_SCORE.get(check.severity, 0.5),
        first_seen=now,
        last_seen=now,
        evidence=[check.found, check.fix],
        mitre=list(MITRE.get(category, [])),
        ip=device.get("ip"),
        mac=device.get("mac"),
        device_id=device_id,
        attributes={"check": check.check, "severity": check.severity},
    )


def _record(store: Any, found: list[Finding], actor: str) -> dict[str, int]:
    """The findings not yet in their devices' open stories, with their incidents, in one
    transaction (audited by the store as ``results.record``)."""
    from fleetwarden.app.inventory import context_from_store
    from fleetwarden.app.session import join_stories

    fresh = _not_yet_recorded(store, found)
    summary = {"findings_added": 0, "incidents_opened": 0, "incidents_updated": 0}
    if not fresh:
        return summary
    incidents = join_stories(store, fresh, context_from_store(store))
    done = store.record_results(AUDIT_SOURCE, fresh, incidents, actor=actor, replace_stories=True)
    return {k: getattr(done, k) for k in summary}


def _not_yet_recorded(store: Any, found: list[Finding]) -> list[Finding]:
    """``found`` less the findings an open story already holds (same device, detector, evidence):
    the audit's findings carry the time of the run, so the store's fingerprint alone would not see
    a re-run as the same finding."""
    stored = {
        (f.entity, f.detector, tuple(f.evidence))
        for f in store.story_findings(sorted({f.entity for f in found}))
    }
    return [f for f in found if (f.entity, f.detector, tuple(f.evidence)) not in stored]


def _connections(paths: Iterable[Path]) -> tuple[list[dict], int]:
    from fleetwarden.sources import ReadStats, read_events

    rows: list[dict] = []
    stats = ReadStats()
    for path in paths:
        for batch in read_events(path, skip_bad=True, stats=stats, fmt="mosquitto"):
            rows += batch.to_pylist()[: MAX_CONNECTIONS - len(rows)]
    return rows, stats.skipped
