"""The campaign index (table ``campaign_keys``, migration 0013): which stored incidents name which
counterparts and are about which subjects, so a recording finds the open incidents its new findings
are campaign-related to without reading every incident.

* :func:`index_incidents` writes, in the transaction that saves the incidents
  (:meth:`~fleetwarden.store.repository.Store.record_results`), one row per (kind, key, incident)
  for the :func:`~fleetwarden.core.counterparts.subjects` and
  :func:`~fleetwarden.core.counterparts.counterparts` of each incident's findings; rows are only
  ever added (an incident's findings only grow) and go with the incident (``ON DELETE CASCADE``).
* :func:`related_incidents` and :func:`campaign_incidents` are the lookups, each an index range
  scan per key chunk (the primary key ``(kind, key, incident_id)``; the ``campaign`` column's index)
  joined to the open incidents; :func:`open_incidents` reads the open incidents of some entities
  (``ix_incidents_entity_category``).  Every lookup is bounded by ``limit``: the most recently
  seen incidents win.

What links (which categories are attack steps, which counterparts are external) is the
correlator's to say (:mod:`fleetwarden.detection.correlation`); this module only finds candidates,
and a candidate that does not link after all costs a read, never a wrong campaign.

*Blind spots.* Incidents stored before migration 0013 are not indexed until a finding of their own
device is recorded again (which re-saves, and so indexes, its whole open story).  An incident names
at most :data:`MAX_KEYS_PER_INCIDENT` keys: past it (a scanner that reached thousands of hosts)
later keys are not indexed, and a victim among them links only from its own side (its finding
naming the scanner).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from fleetwarden.core.counterparts import MAX_COUNTERPART_LEN, counterparts, subjects
from fleetwarden.core.findings import Incident
from fleetwarden.store.models import CampaignKey, IncidentRecord

if TYPE_CHECKING:  # the repository imports this module: no import back at run time
    from fleetwarden.store.repository import Store

__all__ = [
    "MAX_KEYS_PER_INCIDENT",
    "MAX_RELATED",
    "campaign_incidents",
    "incident_keys",
    "index_incidents",
    "open_incidents",
    "related_incidents",
]

# related incidents one recording pulls in (the most recently seen first)
MAX_RELATED = 500
# index rows of one incident (subjects and counterparts together)
MAX_KEYS_PER_INCIDENT = 4096
OPEN = ("open", "acknowledged")
_CHUNK = 500  # IN (...) lists stay well under SQLite's bound-parameter limit


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def incident_keys(inc: Incident) -> list[tuple[str, str]]:
    """``(kind, key)`` rows of one incident: the subjects and the counterparts of its findings, bounded."""
    keys: dict[tuple[str, str], None] = {}
    for k in (inc.entity, inc.ip):
        if k:
            keys[("subject", str(k).lower()[:MAX_COUNTERPART_LEN])] = None
    for f in inc.findings:
        for k in subjects(f):
            keys[("subject", k[:MAX_COUNTERPART_LEN])] = None
        for k in counterparts(f):
            keys[("counterpart", k)] = None
        if len(keys) >= MAX_KEYS_PER_INCIDENT:
            break
    return list(keys)[:MAX_KEYS_PER_INCIDENT]


def index_incidents(s: Session, saved: Iterable[tuple[int, Incident]]) -> int:
    """Add the keys of the saved incidents (``(incidents.id, Incident)``) not yet indexed, in the
    caller's transaction ``s``; returns the rows added.  One read of the incidents' existing rows
    and one batched insert."""
    wanted: dict[tuple[str, str, int], None] = {}
    for incident_id, inc in saved:
        for kind, key in incident_keys(inc):
            wanted[(kind, key, int(incident_id))] = None
    if not wanted:
        return 0
    ids = sorted({k[2] for k in wanted})
    for chunk in _chunks(ids):
        q = select(CampaignKey.kind, CampaignKey.key, CampaignKey.incident_id).where(
            CampaignKey.incident_id.in_(chunk)
        )
        for row in s.execute(q):
            wanted.pop((row.kind, row.key, row.incident_id), None)
    rows = [{"kind": kind, "key": key, "incident_id": i} for kind, key, i in wanted]
    for chunk in _chunks(rows):
        s.execute(insert(CampaignKey), list(chunk))
    return len(rows)


def related_incidents(
    store: Store,
    *,
    shared: Collection[str] = (),
    subjects_of: Collection[str] = (),
    named: Collection[str] = (),
    categories: Collection[str] = (),
    limit: int = MAX_RELATED,
) -> list[IncidentRecord]:
    """The open incidents that

    * are in one of ``categories`` and whose findings name one of the counterparts ``shared``
      (a C2 or target the new findings name too),
    * are in one of ``categories`` and are about one of ``subjects_of`` (the device a new finding
      names as its counterpart: a scanner its victim answered),
    * name one of ``named`` as a counterpart (the new attack findings' own device: its victims),

    most recently seen first, at most ``limit`` (the recording's own devices' incidents count
    too: they match their own new findings' keys)."""
    lookups = [
        ("counterpart", sorted(set(shared)), True),
        ("subject", sorted(set(subjects_of)), True),
        ("counterpart", sorted(set(named)), False),
    ]
    found: dict[int, IncidentRecord] = {}
    with store._read() as s:
        for kind, keys, by_category in lookups:
            if by_category and not categories:
                continue
            for chunk in _chunks(keys):
                q = (
                    select(IncidentRecord)
                    .join(CampaignKey, CampaignKey.incident_id == IncidentRecord.id)
                    .where(
                        CampaignKey.kind == kind,
                        CampaignKey.key.in_(chunk),
                        IncidentRecord.status.in_(OPEN),
                    )
                    .order_by(IncidentRecord.last_seen.desc(), IncidentRecord.id)
                    .limit(limit + len(found))
                )
                if by_category:
                    q = q.where(IncidentRecord.category.in_(sorted(categories)))
                for row in s.scalars(q):
                    found.setdefault(row.id, row)
    return _newest(found.values(), limit)


def campaign_incidents(
    store: Store, campaigns: Collection[str], *, limit: int = MAX_RELATED
) -> list[IncidentRecord]:
    """The open incidents carrying one of the ``campaigns`` ids, most recently seen first, at most ``limit``."""
    found: dict[int, IncidentRecord] = {}
    with store._read() as s:
        for chunk in _chunks(sorted(set(campaigns))):
            q = (
                select(IncidentRecord)
                .where(IncidentRecord.campaign.in_(chunk), IncidentRecord.status.in_(OPEN))
                .order_by(IncidentRecord.last_seen.desc(), IncidentRecord.id)
                .limit(limit + len(found))
            )
            for row in s.scalars(q):
                found.setdefault(row.id, row)
    return _newest(found.values(), limit)


def open_incidents(store: Store, entities: Collection[str]) -> list[IncidentRecord]:
    """The open (or acknowledged) incidents of ``entities``, oldest id first."""
    out: list[IncidentRecord] = []
    with store._read() as s:
        for chunk in _chunks(sorted(set(entities))):
            q = (
                select(IncidentRecord)
                .where(IncidentRecord.entity.in_(chunk), IncidentRecord.status.in_(OPEN))
                .order_by(IncidentRecord.id)
            )
            out += s.scalars(q)
    return out


def _newest(rows: Iterable[IncidentRecord], limit: int) -> list[IncidentRecord]:
    return sorted(rows, key=lambda r: (-r.last_seen, r.id))[: max(0, limit)]
