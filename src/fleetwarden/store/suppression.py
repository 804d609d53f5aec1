"""Repository of suppression rules (table ``suppressions``, migration 0010) and the incident updates
their re-evaluation makes.

Functions over a :class:`~fleetwarden.store.repository.Store`, one transaction each, audited in the
same transaction (:func:`fleetwarden.store.repository._audit`).  The rules' meaning lives in
:mod:`fleetwarden.control.suppression`; the re-evaluation in :mod:`fleetwarden.app.suppression`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update

from fleetwarden.core.findings import Finding, Incident
from fleetwarden.core.text import redact
from fleetwarden.store.models import Device, FindingRecord, IncidentRecord, Suppression
from fleetwarden.store.repository import Store, StoreError, _audit, _finding_of

__all__ = [
    "IncidentChange",
    "add_suppression",
    "apply_changes",
    "get_suppression",
    "list_suppressions",
    "reevaluation_candidates",
    "remove_suppression",
]


def add_suppression(store: Store, values: Mapping[str, Any], *, actor: str) -> Suppression:
    """Save a validated rule (:func:`fleetwarden.control.suppression.check_rule`), audited."""
    with store._write() as s:
        row = Suppression(**values, created_by=actor, created_at=time.time(), closed_incidents=[])
        s.add(row)
        s.flush()
        _audit(s, actor, "suppression.add", f"suppression:{row.id}", dict(values))
        return row


def remove_suppression(store: Store, rule_id: int, *, actor: str) -> Suppression:
    """Lift a rule now (it stays as history), audited."""
    with store._write() as s:
        row = s.get(Suppression, rule_id)
        if row is None:
            raise StoreError(f"unknown suppression {rule_id}")
        if row.removed_at is not None:
            raise StoreError(f"suppression {rule_id} was already removed")
        row.removed_at, row.removed_by = time.time(), actor
        s.flush()
        _audit(s, actor, "suppression.remove", f"suppression:{rule_id}", {"reason": row.reason})
        return row


def get_suppression(store: Store, rule_id: int) -> Suppression | None:
    with store._read() as s:
        return s.get(Suppression, rule_id)


def list_suppressions(store: Store, *, include_removed: bool = False) -> list[Suppression]:
    """Rules, oldest first; removed ones only with ``include_removed``."""
    q = select(Suppression).order_by(Suppression.id)
    if not include_removed:
        q = q.where(Suppression.removed_at.is_(None))
    with store._read() as s:
        return list(s.scalars(q))


def reevaluation_candidates(
    store: Store,
) -> tuple[list[IncidentRecord], dict[int, list[Finding]], list[Finding]]:
    """What a re-evaluation reads: the open (or acknowledged) incidents and those a rule closed,
    their findings by incident id, and the findings a rule kept out of every incident."""
    with store._read() as s:
        closed_ids = {int(i) for r in s.scalars(select(Suppression)) for i in (r.closed_incidents or [])}
        q = select(IncidentRecord).where(
            IncidentRecord.status.in_(("open", "acknowledged")) | IncidentRecord.id.in_(sorted(closed_ids))
        )
        incidents = list(s.scalars(q.order_by(IncidentRecord.id)))
        ids = [i.id for i in incidents]
        by_incident: dict[int, list[Finding]] = {i: [] for i in ids}
        for r in s.scalars(
            select(FindingRecord).where(FindingRecord.incident_id.in_(ids)).order_by(FindingRecord.id)
        ):
            by_incident[int(r.incident_id)].append(_finding_of(r))
        orphans = [
            _finding_of(r)
            for r in s.scalars(
                select(FindingRecord).where(FindingRecord.incident_id.is_(None)).order_by(FindingRecord.id)
            )
            if (r.attributes or {}).get("suppressed")
        ]
    return incidents, by_incident, orphans


@dataclass
class IncidentChange:
    """One incident after re-evaluation: ``incident`` (None: nothing left, close it by ``rule_id``)
    for the stored row ``incident_id`` (None: a new incident)."""

    incident_id: int | None
    incident: Incident | None = None
    rule_id: int | None = None
    rule_label: str = ""
    findings: list[Finding] = field(default_factory=list)  # to attach to the incident


def apply_changes(store: Store, changes: Sequence[IncidentChange], *, actor: str) -> dict[str, list[int]]:
    """Write a re-evaluation in ONE transaction, audited: closed, reopened, updated and opened ids."""
    done: dict[str, list[int]] = {"closed": [], "reopened": [], "updated": [], "opened": []}
    now = time.time()
    with store._write() as s:
        for ch in changes:
            if ch.incident is None:
                _close(s, ch, now, done)
            else:
                _update(s, ch, now, done)
        _audit(s, actor, "suppression.reevaluate", "incidents", done)
    return done


def _close(s: Any, ch: IncidentChange, now: float, done: dict[str, list[int]]) -> None:
    row = s.get(IncidentRecord, ch.incident_id)
    if row is None or row.status == "closed":
        return
    before = row.status
    row.status, row.updated_at = "closed", now
    row.evidence = [*(row.evidence or []), redact(f"closed: suppressed by {ch.rule_label}")][-50:]
    rule = s.get(Suppression, ch.rule_id)
    if rule is not None:
        rule.closed_incidents = sorted({*(rule.closed_incidents or []), row.id})
    _audit(s, "suppression", "incident.status", f"incident:{row.id}",
           {"from": before, "to": "closed", "note": f"suppressed by {ch.rule_label}"})  # fmt: skip
    done["closed"].append(row.id)


def _update(s: Any, ch: IncidentChange, now: float, done: dict[str, list[int]]) -> None:
    inc = ch.incident
    assert inc is not None
    row = s.get(IncidentRecord, ch.incident_id) if ch.incident_id is not None else None
    values = {
        "risk": int(inc.risk),
        "severity": inc.severity,
        "first_seen": float(inc.first_seen),
        "last_seen": float(inc.last_seen),
        "evidence": [redact(str(e)) for e in inc.evidence],
        "mitre": [str(m) for m in inc.mitre],
    }
    if row is None:
        known = s.get(Device, inc.entity) is not None
        row = IncidentRecord(entity=inc.entity, device_id=inc.entity if known else None, ip=inc.ip, mac=inc.mac, category=inc.category, status="open",
                             source="suppression re-evaluation", created_at=now, updated_at=now, **values)  # fmt: skip
        s.add(row)
        s.flush()
        done["opened"].append(row.id)
    else:
        reopened = row.status == "closed"
        changed = {k: v for k, v in values.items() if getattr(row, k) != v}
        for k, v in changed.items():
            setattr(row, k, v)
        if reopened:
            row.status = "open"
            _audit(s, "suppression", "incident.status", f"incident:{row.id}",
                   {"from": "closed", "to": "open", "note": "suppression lifted or expired"})  # fmt: skip
            for rule in s.scalars(select(Suppression)):
                if row.id in (rule.closed_incidents or []):
                    rule.closed_incidents = [i for i in rule.closed_incidents if i != row.id]
            done["reopened"].append(row.id)
        elif changed:
            done["updated"].append(row.id)
        if changed or reopened:
            row.updated_at = now
    fps = [Store.fingerprint(f) for f in ch.findings]
    if fps:
        s.execute(update(FindingRecord).where(FindingRecord.fingerprint.in_(fps)).values(incident_id=row.id))
