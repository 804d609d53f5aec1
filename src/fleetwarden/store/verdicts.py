"""Repository of analysts' verdicts on incidents (table ``verdicts``, migration 0009).

Functions over a :class:`~fleetwarden.store.repository.Store`, one transaction each; a verdict is
audited in the same transaction (:func:`fleetwarden.store.repository._audit`).  Validation of the
values (verdict name, reason and analyst bounds) is here too, since the store is the last line.
"""

from __future__ import annotations

import time

from sqlalchemy import select

from fleetwarden.store.models import VERDICTS, IncidentRecord, Verdict
from fleetwarden.store.repository import Store, StoreError, _audit

__all__ = ["MAX_ANALYST", "MAX_REASON", "add_verdict", "list_verdicts"]

MAX_REASON = 1000
MAX_ANALYST = 200


def _check(verdict: str, reason: str, analyst: str) -> None:
    if verdict not in VERDICTS:
        raise StoreError(f"verdict {verdict[:40]!r}? expected one of {', '.join(VERDICTS)}")
    if not reason.strip():
        raise StoreError("a verdict needs a reason (--reason TEXT)")
    if len(reason) > MAX_REASON:
        raise StoreError(f"the reason is {len(reason)} characters long; at most {MAX_REASON}")
    if not analyst.strip() or len(analyst) > MAX_ANALYST:
        raise StoreError(f"the analyst name must be 1 to {MAX_ANALYST} characters")


def add_verdict(store: Store, incident_id: int, verdict: str, reason: str, *, analyst: str) -> Verdict:
    """Record an analyst's verdict on an incident (audited); the newest verdict of an incident counts."""
    _check(verdict, reason, analyst)
    with store._write() as s:
        if s.get(IncidentRecord, incident_id) is None:
            raise StoreError(f"unknown incident {incident_id}")
        row = Verdict(
            incident_id=incident_id, verdict=verdict, reason=reason, analyst=analyst, created_at=time.time()
        )
        s.add(row)
        s.flush()
        _audit(s, analyst, "incident.verdict", f"incident:{incident_id}", {"verdict": verdict, "reason": reason})
        return row


def list_verdicts(store: Store, incident_id: int | None = None) -> list[Verdict]:
    """Every verdict (history included), oldest first."""
    q = select(Verdict).order_by(Verdict.created_at, Verdict.id)
    if incident_id is not None:
        q = q.where(Verdict.incident_id == incident_id)
    with store._read() as s:
        return list(s.scalars(q))
