"""The repository: every read and write the application makes to the database.

Each public method is one transaction.  Every write of inventory, findings, incidents,
actions and models appends an audit entry (:mod:`fleetwarden.store.audit`) *in the same
transaction*, so the log can neither miss a change nor record one that was rolled back.

Writers are serialised, which is what keeps the audit chain linear: SQLite write
transactions start with ``BEGIN IMMEDIATE`` (see :func:`fleetwarden.store.open_store`), and
on PostgreSQL each write transaction first takes a ``SHARE ROW EXCLUSIVE`` lock on
``audit_entries`` (readers are never blocked).  Write transactions are short (one
detection batch), so this costs little next to the detection work.

Saving results is idempotent, as at-least-once stream delivery needs: a finding already
stored (same entity, category, detector, time span and record ids) is skipped, and an
incident for an entity and category that is still open or acknowledged is extended
rather than duplicated.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import Engine, func, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from fleetwarden.core.errors import InputError
from fleetwarden.core.findings import CATEGORIES, SEVERITIES, CampaignLink, Finding, Incident
from fleetwarden.core.text import redact, redact_all
from fleetwarden.store import audit
from fleetwarden.store.campaigns import index_incidents
from fleetwarden.store.models import (
    CRITICALITIES,
    DATA_CLASSES,
    INCIDENT_STATUSES,
    LIFECYCLES,
    Action,
    AuditEntry,
    Base,
    Device,
    EngineCheckpoint,
    FindingRecord,
    IncidentRecord,
    IngestBatch,
    ModelRecord,
    Vendor,
)

# Device columns a caller may set: all but the ones the store keeps itself.
DEVICE_FIELDS = frozenset(Device.__table__.columns.keys()) - {"id", "created_at", "updated_at"}
# response actions move only forward along these edges (reverting is its own step)
ACTION_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "proposed": ("approved", "rejected"),
    "approved": ("executed", "failed", "rejected"),
    "executed": ("reverted",),
    "failed": ("approved", "rejected"),
    "reverted": (),
    "rejected": (),
}
_CHUNK = 500  # IN (...) lists stay well under SQLite's bound-parameter limit


class StoreError(InputError, ValueError):
    """A request the store refuses: unknown id, invalid value or transition."""


@dataclass
class RecordSummary:
    """What one :meth:`Store.record_results` call wrote."""

    findings_added: int = 0
    findings_duplicate: int = 0
    incidents_opened: int = 0
    incidents_updated: int = 0
    devices_changed: int = 0
    incident_ids: list[int] = field(default_factory=list)
    batch_ids: list[int] = field(default_factory=list)
    audit_seq: int | None = None


class Store:
    """FleetWarden's database.  Get one from :func:`fleetwarden.store.open_store`.

    Returned rows are detached ORM objects (:mod:`fleetwarden.store.models`) with every
    column loaded; ``to_dict()`` gives plain values.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False, autoflush=True)

    # ------------------------------------------------------------------ plumbing

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._sessions() as s:
            yield s

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One write transaction: all of it commits, or none of it does."""
        with self._sessions() as s:
            # marks the connection so the SQLite begin hook issues BEGIN IMMEDIATE
            s.connection(execution_options={"fleetwarden_write": True})
            try:
                if self.dialect == "postgresql":
                    s.execute(text("LOCK TABLE audit_entries IN SHARE ROW EXCLUSIVE MODE"))
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def counts(self) -> dict[str, int]:
        """Rows per table (for tests, metrics and the dashboard's header)."""
        with self._read() as s:
            return {
                t.name: int(s.scalar(select(func.count()).select_from(t)) or 0)
                for t in Base.metadata.sorted_tables
            }

    # ------------------------------------------------------------------ audit

    def audit_append(
        self, actor: str, action: str, subject: str, details: Mapping[str, Any] | None = None
    ) -> AuditEntry:
        """Append one entry to the hash-chained audit log and return it."""
        with self._write() as s:
            return _audit(s, actor, action, subject, details)

    def audit_entries(self, since_seq: int = 0, limit: int | None = None) -> list[AuditEntry]:
        """Entries with ``seq > since_seq`` in chain order."""
        with self._read() as s:
            q = select(AuditEntry).where(AuditEntry.seq > since_seq).order_by(AuditEntry.seq)
            if limit is not None:
                q = q.limit(limit)
            return list(s.scalars(q))

    def audit_head(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the newest entry: anchor it elsewhere to detect truncation."""
        with self._read() as s:
            row = s.execute(
                select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)
            ).first()
            return None if row is None else (int(row[0]), str(row[1]))

    def audit_verify(self, anchor: tuple[int, str] | None = None) -> tuple[bool, int | None]:
        """Re-hash the whole chain: ``(True, None)`` or ``(False, first_bad_seq)``."""
        with self._read() as s:
            rows = s.scalars(select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=2000))
            return audit.verify_chain(rows, anchor=anchor)

    # ------------------------------------------------------------------ inventory

    def upsert_devices(self, rows: Sequence[Mapping[str, Any]], *, actor: str = "system") -> int:
        """Insert or merge devices keyed by ``device_id``; return how many rows changed.

        Keys are the :class:`~fleetwarden.store.models.Device` columns (``DEVICE_FIELDS``);
        ``None`` values never erase what is known, ``first_seen``/``last_seen`` only
        widen, ``attributes`` merge, and a sighting from traffic (``discovered=True``)
        never turns a registered device back into a discovered one.  Calling it twice
        with the same rows changes nothing the second time.
        """
        with self._write() as s:
            changed = _upsert_devices(s, rows, time.time())
            if changed:
                ids = [str(r["device_id"]) for r in rows][:50]
                _audit(s, actor, "devices.upsert", "devices", {"changed": changed, "device_ids": ids})
            return changed

    def get_device(self, device_id: str) -> Device | None:
        with self._read() as s:
            return s.scalar(select(Device).where(Device.device_id == device_id))

    def list_devices(
        self,
        *,
        lifecycle: str | None = None,
        discovered: bool | None = None,
        site: str | None = None,
        device_class: str | None = None,
    ) -> list[Device]:
        """Devices ordered by ``device_id``, optionally filtered."""
        q = _device_filters(select(Device), lifecycle, discovered, site, device_class)
        with self._read() as s:
            return list(s.scalars(q))

    def device_rows(
        self,
        *,
        lifecycle: str | None = None,
        discovered: bool | None = None,
        site: str | None = None,
        device_class: str | None = None,
    ) -> list[dict[str, Any]]:
        """As :meth:`list_devices`, each device as the plain dict ``Device.to_dict`` gives (every
        column by attribute name), read without building ORM objects: the whole-fleet reads
        (detection context, posture, exports) cost a third of the time."""
        cols = [attr.columns[0].label(attr.key) for attr in Device.__mapper__.column_attrs]
        q = _device_filters(select(*cols), lifecycle, discovered, site, device_class)
        with self._read() as s:
            return [dict(r) for r in s.execute(q).mappings()]

    def set_device_lifecycle(self, device_id: str, lifecycle: str, *, actor: str, reason: str = "") -> Device:
        """Move a device to provisioning/active/quarantined/retired (audited)."""
        if lifecycle not in LIFECYCLES:
            raise StoreError(f"unknown lifecycle {lifecycle!r}; expected one of {', '.join(LIFECYCLES)}")
        with self._write() as s:
            dev = s.scalar(select(Device).where(Device.device_id == device_id))
            if dev is None:
                raise StoreError(f"unknown device {device_id!r}")
            before = dev.lifecycle
            dev.lifecycle = lifecycle
            dev.updated_at = time.time()
            _audit(
                s, actor, "device.lifecycle", device_id, {"from": before, "to": lifecycle, "reason": reason}
            )
            s.flush()
            return dev

    def upsert_vendor(
        self,
        name: str,
        *,
        website: str | None = None,
        security_contact: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        actor: str = "system",
    ) -> Vendor:
        """Create or update a vendor by name (audited)."""
        if not name:
            raise StoreError("a vendor needs a name")
        with self._write() as s:
            v = s.scalar(select(Vendor).where(Vendor.name == name))
            if v is None:
                v = Vendor(name=name, attributes={}, created_at=time.time())
                s.add(v)
            if website is not None:
                v.website = website
            if security_contact is not None:
                v.security_contact = security_contact
            if attributes:
                v.attributes = {**(v.attributes or {}), **audit.normalize_details(attributes)}
            s.flush()
            _audit(
                s,
                actor,
                "vendor.upsert",
                name,
                {"website": v.website, "security_contact": v.security_contact},
            )
            return v

    def list_vendors(self) -> list[Vendor]:
        with self._read() as s:
            return list(s.scalars(select(Vendor).order_by(Vendor.name)))

    # ------------------------------------------------------------------ results

    def record_results(
        self,
        source: str,
        findings: Sequence[Finding],
        incidents: Sequence[Incident],
        devices: Sequence[Mapping[str, Any]] | None = None,
        batches: Sequence[tuple[str, int, float | None, float | None]] | None = None,
        *,
        actor: str = "engine",
        replace_stories: bool = False,
    ) -> RecordSummary:
        """Save one run's output in ONE transaction: a failure leaves none of it behind.

        ``findings`` plus the findings inside ``incidents`` are saved (each once);
        ``devices`` are upserted like :meth:`upsert_devices` (e.g. discovered ones);
        ``batches`` record what was ingested as ``(kind, records, first_ts, last_ts)``.
        An incident extends the open one of its entity and category.  With ``replace_stories``
        the incidents were correlated over the open stories' findings too
        (:meth:`story_findings`), so they replace the stored risk, severity and evidence;
        otherwise the two are merged (highest risk, evidence of both).
        """
        now = time.time()
        summary = RecordSummary()
        source = redact(source)  # a source named by a URL with a password never reaches a row
        with self._write() as s:
            for kind, records, first_ts, last_ts in batches or ():
                b = IngestBatch(
                    source=source,
                    kind=str(kind),
                    records=int(records),
                    first_ts=_opt_float(first_ts),
                    last_ts=_opt_float(last_ts),
                    created_at=now,
                )
                s.add(b)
                s.flush()
                summary.batch_ids.append(b.id)
            if devices:
                summary.devices_changed = _upsert_devices(s, devices, now)

            all_findings = _unique_findings(findings, incidents)
            known = _known_devices(
                s, [i.entity for i in incidents] + [f.device_id or f.entity for f in all_findings]
            )
            incident_of: dict[int, int] = {}  # id(Finding) -> incidents.id
            for inc in incidents:
                if isinstance(inc, CampaignLink):  # another device's stored incident: its campaign id only
                    if _link_campaign(s, inc, now):
                        summary.incidents_updated += 1
                    summary.incident_ids.append(inc.incident_id)
                    continue
                row, opened = _save_incident(s, inc, source, known, now, replace=replace_stories)
                if opened:
                    summary.incidents_opened += 1
                elif opened is False:
                    summary.incidents_updated += 1
                summary.incident_ids.append(row.id)
                for f in inc.findings:
                    incident_of[id(f)] = row.id
            # the campaign index (fleetwarden.store.campaigns) goes with the incidents it points at
            index_incidents(s, zip(summary.incident_ids, incidents, strict=True))

            fps = [_fingerprint(f) for f in all_findings]
            existing = _existing_fingerprints(s, fps)
            rows: list[dict[str, Any]] = []
            for f, fp in zip(all_findings, fps, strict=True):
                if fp in existing:
                    summary.findings_duplicate += 1
                    continue
                existing[fp] = None
                rows.append(_finding_row(f, fp, source, incident_of.get(id(f)), known, now))
            # Core executemany: findings can come by the thousand and ORM objects cost ~10x more
            for chunk in _chunks(rows):
                s.execute(insert(FindingRecord), list(chunk))
            summary.findings_added = len(rows)

            entry = _audit(
                s,
                actor,
                "results.record",
                source,
                {
                    "findings_added": summary.findings_added,
                    "findings_duplicate": summary.findings_duplicate,
                    "incidents_opened": summary.incidents_opened,
                    "incidents_updated": summary.incidents_updated,
                    "incident_ids": summary.incident_ids,
                    "devices_changed": summary.devices_changed,
                    "batches": [[str(k), int(n)] for k, n, *_ in batches or ()],
                },
            )
            summary.audit_seq = entry.seq
        return summary

    def list_incidents(
        self,
        *,
        status: str | Sequence[str] | None = None,
        entity: str | None = None,
        category: str | None = None,
        min_risk: int | None = None,
        since: float | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[IncidentRecord]:
        """Incidents, highest risk first then newest; ``since`` filters on ``last_seen``."""
        q = select(IncidentRecord)
        if status is not None:
            q = q.where(IncidentRecord.status.in_([status] if isinstance(status, str) else list(status)))
        if entity is not None:
            q = q.where(IncidentRecord.entity == entity)
        if category is not None:
            q = q.where(IncidentRecord.category == category)
        if min_risk is not None:
            q = q.where(IncidentRecord.risk >= min_risk)
        if since is not None:
            q = q.where(IncidentRecord.last_seen >= since)
        q = q.order_by(IncidentRecord.risk.desc(), IncidentRecord.last_seen.desc(), IncidentRecord.id)
        q = q.offset(offset).limit(limit)
        with self._read() as s:
            return list(s.scalars(q))

    def get_incident(self, incident_id: int) -> IncidentRecord | None:
        with self._read() as s:
            return s.get(IncidentRecord, incident_id)

    def set_incident_status(
        self, incident_id: int, status: str, *, actor: str, note: str = ""
    ) -> IncidentRecord:
        """Acknowledge or close an incident (or reopen it), audited."""
        if status not in INCIDENT_STATUSES:
            raise StoreError(
                f"unknown incident status {status!r}; expected one of {', '.join(INCIDENT_STATUSES)}"
            )
        with self._write() as s:
            inc = s.get(IncidentRecord, incident_id)
            if inc is None:
                raise StoreError(f"unknown incident {incident_id}")
            before = inc.status
            inc.status = status
            inc.updated_at = time.time()
            _audit(
                s,
                actor,
                "incident.status",
                f"incident:{incident_id}",
                {"from": before, "to": status, "note": note},
            )
            s.flush()
            return inc

    def list_findings(
        self,
        *,
        entity: str | None = None,
        category: str | None = None,
        detector: str | None = None,
        incident_id: int | None = None,
        since: float | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[FindingRecord]:
        """Findings, newest ``last_seen`` first."""
        q = select(FindingRecord)
        if entity is not None:
            q = q.where(FindingRecord.entity == entity)
        if category is not None:
            q = q.where(FindingRecord.category == category)
        if detector is not None:
            q = q.where(FindingRecord.detector == detector)
        if incident_id is not None:
            q = q.where(FindingRecord.incident_id == incident_id)
        if since is not None:
            q = q.where(FindingRecord.last_seen >= since)
        q = q.order_by(FindingRecord.last_seen.desc(), FindingRecord.id).offset(offset).limit(limit)
        with self._read() as s:
            return list(s.scalars(q))

    def story_findings(self, entities: Sequence[str], *, per_incident: int | None = None) -> list[Finding]:
        """The findings of the open (or acknowledged) incidents of ``entities``, as
        :class:`~fleetwarden.core.findings.Finding` objects in the order they were stored: what a
        later finding about the same device is correlated with (one story per device, however
        many runs, workers or checkpoints it took to see it).  ``per_incident``: only each
        incident's newest that many (a bounded read of other devices' stories)."""
        out: list[Finding] = []
        with self._read() as s:
            for chunk in _chunks(list(entities)):
                joined = FindingRecord.incident_id == IncidentRecord.id
                of_open = (IncidentRecord.entity.in_(chunk), IncidentRecord.status.in_(("open", "acknowledged")))
                if per_incident is None:
                    q = select(FindingRecord).join(IncidentRecord, joined).where(*of_open)
                else:  # each incident's newest, by a window over the same rows
                    newest = func.row_number().over(
                        partition_by=FindingRecord.incident_id, order_by=FindingRecord.id.desc()
                    )
                    ranked = (
                        select(FindingRecord.id, newest.label("n")).join(IncidentRecord, joined).where(*of_open)
                    ).subquery()
                    q = select(FindingRecord).join(ranked, FindingRecord.id == ranked.c.id).where(
                        ranked.c.n <= per_incident
                    )
                out += [_finding_of(r) for r in s.scalars(q.order_by(FindingRecord.id))]
        return out

    @staticmethod
    def fingerprint(f: Finding) -> str:
        """The key that makes saving a finding idempotent (entity, category, detector, time span,
        record ids, evidence)."""
        return _fingerprint(f)

    def list_ingest_batches(self, source: str | None = None) -> list[IngestBatch]:
        q = select(IngestBatch).order_by(IngestBatch.id)
        if source is not None:
            q = q.where(IngestBatch.source == source)
        with self._read() as s:
            return list(s.scalars(q))

    # ------------------------------------------------------------------ response actions

    def propose_action(
        self,
        kind: str,
        *,
        requested_by: str,
        incident_id: int | None = None,
        device_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Action:
        """Record a proposed response action (status ``proposed``), audited."""
        if not kind:
            raise StoreError("an action needs a kind")
        now = time.time()
        with self._write() as s:
            if incident_id is not None and s.get(IncidentRecord, incident_id) is None:
                raise StoreError(f"unknown incident {incident_id}")
            if (
                device_id is not None
                and s.scalar(select(Device.id).where(Device.device_id == device_id)) is None
            ):
                raise StoreError(f"unknown device {device_id!r}")
            act = Action(
                kind=kind,
                status="proposed",
                incident_id=incident_id,
                device_id=device_id,
                requested_by=requested_by,
                requested_at=now,
                updated_at=now,
                details=audit.normalize_details(details),
            )
            s.add(act)
            s.flush()
            _audit(
                s,
                requested_by,
                "action.propose",
                f"action:{act.id}",
                {"kind": kind, "incident_id": incident_id, "device_id": device_id, "details": act.details},
            )
            return act

    def update_action(
        self, action_id: int, status: str, *, actor: str, details: Mapping[str, Any] | None = None
    ) -> Action:
        """Move an action along ``ACTION_TRANSITIONS`` (approve, execute, revert…), audited.

        ``details`` are merged into the action's details (e.g. the adapter's result).
        """
        now = time.time()
        with self._write() as s:
            act = s.get(Action, action_id)
            if act is None:
                raise StoreError(f"unknown action {action_id}")
            if status not in ACTION_TRANSITIONS.get(act.status, ()):
                raise StoreError(f"action {action_id} cannot go from {act.status!r} to {status!r}")
            before = act.status
            act.status = status
            act.updated_at = now
            if status == "approved":
                act.approved_by, act.approved_at = actor, now
            elif status == "executed":
                act.executed_at = now
            elif status == "reverted":
                act.reverted_at = now
            extra = audit.normalize_details(details)
            if extra:
                act.details = {**(act.details or {}), **extra}
            s.flush()
            _audit(s, actor, f"action.{status}", f"action:{action_id}", {"from": before, "details": extra})
            return act

    def approve_action(self, action_id: int, *, approved_by: str) -> Action:
        return self.update_action(action_id, "approved", actor=approved_by)

    def list_actions(
        self, *, status: str | None = None, incident_id: int | None = None, device_id: str | None = None
    ) -> list[Action]:
        q = select(Action).order_by(Action.id)
        if status is not None:
            q = q.where(Action.status == status)
        if incident_id is not None:
            q = q.where(Action.incident_id == incident_id)
        if device_id is not None:
            q = q.where(Action.device_id == device_id)
        with self._read() as s:
            return list(s.scalars(q))

    # ------------------------------------------------------------------ engine checkpoints

    def save_checkpoint(
        self, partition: str, seq: int, blob: bytes, *, partitions: int = 0, events: int = 0
    ) -> EngineCheckpoint:
        """Save a worker's engine state for ``partition`` as of stream sequence ``seq``.

        Not audited: it is operational state, rewritten every few seconds.  A checkpoint never
        moves backwards: saving an older ``seq`` than the stored one raises :class:`StoreError`
        (two workers that both believe they own a partition find out here).
        """
        with self._sessions() as s:
            s.connection(execution_options={"fleetwarden_write": True})
            try:
                row = s.get(EngineCheckpoint, partition, with_for_update=self.dialect == "postgresql")
                if row is None:
                    row = EngineCheckpoint(partition=partition)
                    s.add(row)
                elif row.stream_seq > seq:
                    raise StoreError(
                        f"checkpoint of {partition!r} is at sequence {row.stream_seq}, refusing to go back to {seq}"
                    )
                row.stream_seq = int(seq)
                row.partitions = int(partitions)
                row.events = int(events)
                row.state = bytes(blob)
                row.updated_at = time.time()
                s.commit()
                return row
            except BaseException:
                s.rollback()
                raise

    def list_checkpoint_keys(self, prefix: str = "") -> list[str]:
        """The keys of the stored checkpoints that start with ``prefix``."""
        with self._read() as s:
            keys = s.scalars(select(EngineCheckpoint.partition).order_by(EngineCheckpoint.partition))
            return [k for k in keys if k.startswith(prefix)]

    def load_checkpoint(self, partition: str) -> EngineCheckpoint | None:
        """The saved state of ``partition`` (``stream_seq``, ``partitions``, ``state``…), or None."""
        with self._read() as s:
            return s.get(EngineCheckpoint, partition)

    # ------------------------------------------------------------------ models

    def record_model(
        self,
        name: str,
        version: str,
        path: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        actor: str = "system",
    ) -> ModelRecord:
        """Register a trained model (replacing the row of the same name and version), audited."""
        return self.update_model(name, version, path, lambda _meta, _created: metadata or {}, actor=actor)

    def update_model(
        self,
        name: str,
        version: str,
        path: str,
        update: Callable[[dict[str, Any] | None, float | None], Mapping[str, Any]],
        *,
        actor: str = "system",
    ) -> ModelRecord:
        """Replace the metadata of model ``name@version`` by ``update(stored metadata, stored
        created_at)`` (both None when there is no row yet) in one transaction, audited as
        ``model.record``: a read-modify-write that two processes cannot interleave (the row is read
        ``FOR UPDATE`` on PostgreSQL, where writers are serialised anyway by the audit lock; SQLite's
        ``BEGIN IMMEDIATE`` serialises them).  ``update`` must not write to the store itself."""
        with self._write() as s:
            q = select(ModelRecord).where(ModelRecord.name == name, ModelRecord.version == version)
            m = s.scalar(q.with_for_update())
            old = (dict(m.meta or {}), m.created_at) if m is not None else (None, None)
            meta = update(*old)
            if m is None:
                m = ModelRecord(name=name, version=version)
                s.add(m)
            m.path = str(path)
            m.created_at = time.time()
            m.meta = audit.normalize_details(meta)
            s.flush()
            _audit(s, actor, "model.record", f"model:{name}@{version}", {"path": str(path)})
            return m

    def latest_model(self, name: str) -> ModelRecord | None:
        with self._read() as s:
            return s.scalar(
                select(ModelRecord)
                .where(ModelRecord.name == name)
                .order_by(ModelRecord.created_at.desc(), ModelRecord.id.desc())
                .limit(1)
            )

    def list_models(self) -> list[ModelRecord]:
        with self._read() as s:
            return list(s.scalars(select(ModelRecord).order_by(ModelRecord.name, ModelRecord.created_at)))


# ---------------------------------------------------------------------- helpers (inside a transaction)


def _audit(
    s: Session, actor: str, action: str, subject: str, details: Mapping[str, Any] | None
) -> AuditEntry:
    last = s.execute(select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)).first()
    prev_seq, prev_hash = (0, audit.GENESIS) if last is None else (int(last[0]), str(last[1]))
    # the log is append-only: a credential written here could never be removed
    e = audit.next_entry(
        prev_seq, prev_hash, time.time(), redact(actor), action, redact(subject), redact_all(details)
    )
    row = AuditEntry(
        seq=e.seq,
        ts=e.ts,
        actor=e.actor,
        action=e.action,
        subject=e.subject,
        details=e.details,
        prev_hash=e.prev_hash,
        hash=e.hash,
    )
    s.add(row)
    s.flush()
    return row


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _upsert_devices(s: Session, rows: Sequence[Mapping[str, Any]], now: float) -> int:
    clean = [_validate_device(r) for r in rows]
    ids = list(dict.fromkeys(r["device_id"] for r in clean))
    existing: dict[str, Device] = {}
    for chunk in _chunks(ids):
        for d in s.scalars(select(Device).where(Device.device_id.in_(chunk))):
            existing[d.device_id] = d
    changed = 0
    for r in clean:
        dev = existing.get(r["device_id"])
        if dev is None:
            dev = Device(
                device_id=r["device_id"],
                lifecycle=r.get("lifecycle") or "active",
                discovered=bool(r.get("discovered", False)),
                attributes=r.get("attributes") or {},
                ips=r.get("ips") or ([r["ip"]] if r.get("ip") else []),
                created_at=now,
                updated_at=now,
                **{
                    k: v
                    for k, v in r.items()
                    if k not in ("device_id", "lifecycle", "discovered", "attributes", "ips")
                },
            )
            s.add(dev)
            existing[dev.device_id] = dev
            changed += 1
        elif _merge_device(dev, r):
            dev.updated_at = now
            changed += 1
    s.flush()
    return changed


def _validate_device(row: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(row) - DEVICE_FIELDS
    if unknown:
        raise StoreError(f"unknown device field(s) {', '.join(sorted(unknown))}; put extras in 'attributes'")
    device_id = row.get("device_id")
    if not device_id or not isinstance(device_id, str):
        raise StoreError(f"device row without a device_id: {dict(row)!r}")
    lifecycle = row.get("lifecycle")
    if lifecycle == "provisioning":  # the name before migration 0003
        lifecycle = "provisioned"
        row = {**row, "lifecycle": lifecycle}
    if lifecycle is not None and lifecycle not in LIFECYCLES:
        raise StoreError(f"device {device_id!r}: unknown lifecycle {lifecycle!r}")
    for column, allowed in (("data_class", DATA_CLASSES), ("criticality", CRITICALITIES)):
        if row.get(column) is not None and row[column] not in allowed:
            raise StoreError(f"device {device_id!r}: {column} {row[column]!r} is not one of {', '.join(allowed)}")
    out: dict[str, Any] = {}
    for k, v in row.items():
        if v is None:
            continue  # None means "not known here", never "erase"
        if k in ("first_seen", "last_seen"):
            v = float(v)
        elif k == "discovered":
            v = bool(v)
        elif k == "attributes":
            v = audit.normalize_details(v)
        elif k == "ips":
            v = [str(a) for a in v]
        elif k == "end_of_support":
            v = v if isinstance(v, date) else date.fromisoformat(str(v))
        else:
            v = str(v)
        out[k] = v
    return out


def _merge_device(dev: Device, r: Mapping[str, Any]) -> bool:
    changed = False

    def put(attr: str, value: Any) -> None:
        nonlocal changed
        if getattr(dev, attr) != value:
            setattr(dev, attr, value)
            changed = True

    for k, v in r.items():
        if k == "device_id":
            continue
        if k == "first_seen":
            put(k, v if dev.first_seen is None else min(dev.first_seen, v))
        elif k == "last_seen":
            put(k, v if dev.last_seen is None else max(dev.last_seen, v))
        elif k == "attributes":
            put(k, {**(dev.attributes or {}), **v})
        elif k == "discovered":
            # registered beats discovered: traffic sightings never demote a registered device
            put(k, dev.discovered and v)
        elif k == "ips":
            # a sighting adds the addresses it saw; a registration says what they are
            put(k, list(dict.fromkeys([*(dev.ips or []), *v])) if r.get("discovered") else v)
        else:
            put(k, v)
    if r.get("ip") and "ips" not in r and r["ip"] not in (dev.ips or []):
        put("ips", [*(dev.ips or []), r["ip"]])
    return changed


def _known_devices(s: Session, candidates: Iterable[str | None]) -> set[str]:
    ids = list({c for c in candidates if c})
    known: set[str] = set()
    for chunk in _chunks(ids):
        known.update(s.scalars(select(Device.device_id).where(Device.device_id.in_(chunk))))
    return known



def _device_filters(q: Any, lifecycle: str | None, discovered: bool | None, site: str | None,
                    device_class: str | None) -> Any:  # fmt: skip
    """``q`` over the devices table, ordered by ``device_id``, with the given filters."""
    q = q.order_by(Device.device_id)
    if lifecycle is not None:
        q = q.where(Device.lifecycle == lifecycle)
    if discovered is not None:
        q = q.where(Device.discovered == discovered)
    if site is not None:
        q = q.where(Device.site == site)
    if device_class is not None:
        q = q.where(Device.device_class == device_class)
    return q

def _unique_findings(findings: Sequence[Finding], incidents: Sequence[Incident]) -> list[Finding]:
    seen: set[int] = set()
    out: list[Finding] = []
    for f in [*findings, *(f for inc in incidents for f in inc.findings)]:
        if id(f) not in seen:
            seen.add(id(f))
            out.append(f)
    return out


def _fingerprint(f: Finding) -> str:
    # the evidence is part of the key: one detector can make two findings about one entity over
    # the same span (a flood seen from the device and from its victim's side), and both count
    key = [
        f.entity,
        f.category,
        f.detector,
        float(f.first_seen),
        float(f.last_seen),
        sorted(map(str, f.record_ids)),
        [redact(str(e)) for e in f.evidence],
    ]
    return hashlib.sha256(audit.canonical_json(key).encode()).hexdigest()


def _existing_fingerprints(s: Session, fps: Sequence[str]) -> dict[str, None]:
    found: dict[str, None] = {}
    for chunk in _chunks(list(set(fps))):
        found.update(
            dict.fromkeys(
                s.scalars(select(FindingRecord.fingerprint).where(FindingRecord.fingerprint.in_(chunk)))
            )
        )
    return found


def _finding_of(r: FindingRecord) -> Finding:
    return Finding(
        entity=r.entity,
        category=r.category,
        detector=r.detector,
        score=float(r.score),
        first_seen=float(r.first_seen),
        last_seen=float(r.last_seen),
        evidence=list(r.evidence or []),
        mitre=list(r.mitre or []),
        ip=r.ip,
        mac=r.mac,
        device_id=r.device_id,
        record_ids=list(r.record_ids or []),
        attributes=dict(r.attributes or {}),
    )


def _finding_row(
    f: Finding, fp: str, source: str, incident_id: int | None, known: set[str], now: float
) -> dict[str, Any]:
    """Storage row (column values) for one finding; a module function so a test can make it fail mid-batch."""
    if f.category not in CATEGORIES:
        raise StoreError(f"finding for {f.entity!r}: unknown category {f.category!r}")
    device_id = f.device_id or f.entity
    return dict(
        fingerprint=fp,
        entity=f.entity,
        device_id=device_id if device_id in known else None,
        ip=f.ip,
        mac=f.mac,
        category=f.category,
        detector=f.detector,
        score=float(f.score),
        severity=f.severity,
        first_seen=float(f.first_seen),
        last_seen=float(f.last_seen),
        evidence=[redact(str(e)) for e in f.evidence],
        mitre=[str(m) for m in f.mitre],
        record_ids=[str(r) for r in f.record_ids],
        attributes=audit.normalize_details(f.attributes),
        incident_id=incident_id,
        source=source,
        created_at=now,
    )


def _save_incident(
    s: Session, inc: Incident, source: str, known: set[str], now: float, *, replace: bool = False
) -> tuple[IncidentRecord, bool | None]:
    """Open a new incident, or extend the open one for the same entity and category (``replace``:
    take the new incident's risk, severity and evidence, correlated over the stored story too).

    Returns the row and True (opened), False (extended) or None (already contained it).
    """
    if inc.category not in CATEGORIES:
        raise StoreError(f"incident for {inc.entity!r}: unknown category {inc.category!r}")
    row = s.scalar(
        select(IncidentRecord)
        .where(
            IncidentRecord.entity == inc.entity,
            IncidentRecord.category == inc.category,
            IncidentRecord.status.in_(("open", "acknowledged")),
        )
        .order_by(IncidentRecord.id.desc())
        .limit(1)
    )
    evidence = [redact(str(e)) for e in inc.evidence]
    mitre = [str(m) for m in inc.mitre]
    if row is None:
        # risk and severity go to the database as given: its CHECK constraints are the last word
        row = IncidentRecord(
            entity=inc.entity,
            device_id=inc.entity if inc.entity in known else None,
            ip=inc.ip,
            mac=inc.mac,
            category=inc.category,
            severity=inc.severity,
            risk=int(inc.risk),
            first_seen=float(inc.first_seen),
            last_seen=float(inc.last_seen),
            evidence=evidence,
            mitre=mitre,
            status="open",
            source=source,
            created_at=now,
            updated_at=now,
            campaign=_campaign(inc),
        )
        s.add(row)
        s.flush()
        return row, True
    if replace:
        merged = {
            "first_seen": float(inc.first_seen),
            "last_seen": float(inc.last_seen),
            "risk": int(inc.risk),
            "severity": inc.severity,
            "evidence": evidence,
            "mitre": mitre,
            "ip": inc.ip or row.ip,
            "mac": inc.mac or row.mac,
            "campaign": _campaign(inc) or row.campaign,
        }
    else:
        merged = _merged_incident(row, inc, evidence, mitre)
    changed = {k: v for k, v in merged.items() if getattr(row, k) != v}
    if not changed:
        return row, None
    for k, v in changed.items():
        setattr(row, k, v)
    row.updated_at = now
    s.flush()
    return row, False


def _link_campaign(s: Session, link: CampaignLink, now: float) -> bool:
    """Set the campaign id of a stored incident, only while it is still open and still holds
    ``link.was`` (compare and set: a writer that changed it since keeps its own); True when set."""
    held = IncidentRecord.campaign.is_(None) if link.was is None else IncidentRecord.campaign == link.was
    res = s.execute(
        update(IncidentRecord)
        .where(IncidentRecord.id == link.incident_id, held, IncidentRecord.status.in_(("open", "acknowledged")))
        .values(campaign=_campaign(link), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount)


def _merged_incident(row: IncidentRecord, inc: Incident, evidence: list[str], mitre: list[str]) -> dict:
    return {
        "first_seen": min(row.first_seen, float(inc.first_seen)),
        "last_seen": max(row.last_seen, float(inc.last_seen)),
        "risk": max(row.risk, int(inc.risk)),
        "severity": max(row.severity, inc.severity, key=_severity_rank),
        "evidence": list(dict.fromkeys([*(row.evidence or []), *evidence])),
        "mitre": list(dict.fromkeys([*(row.mitre or []), *mitre])),
        "ip": row.ip or inc.ip,
        "mac": row.mac or inc.mac,
        "campaign": _campaign(inc) or row.campaign,
    }


def _campaign(inc: Incident) -> str | None:
    """The correlator's campaign id, bounded to its column; None when the incident has none."""
    campaign = getattr(inc, "campaign", None)
    return redact(str(campaign))[:64] if campaign else None


def _severity_rank(sev: str) -> int:
    return SEVERITIES.index(sev) if sev in SEVERITIES else len(SEVERITIES)
