"""Storage models: the tables FleetWarden keeps, as SQLAlchemy 2 typed declarative classes.

These are storage shapes, not the engine's objects: :class:`fleetwarden.core.findings.Finding`
and :class:`~fleetwarden.core.findings.Incident` become :class:`FindingRecord` and
:class:`IncidentRecord` when saved.  Times are epoch seconds (double precision) like the
events they come from; JSON columns are JSON on SQLite and JSONB on PostgreSQL.

The Alembic migration ``versions/0001_initial.py`` creates exactly these tables; a test
compares the two with Alembic's autogenerate so they cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fleetwarden.core.findings import incident_json

# JSON that is indexable/compact on PostgreSQL and plain text JSON on SQLite
JSONType = JSON().with_variant(JSONB(), "postgresql")

LIFECYCLES = ("provisioning", "active", "quarantined", "retired")
INCIDENT_STATUSES = ("open", "acknowledged", "closed")
ACTION_KINDS = (
    "alert",
    "quarantine",
    "restrict",
    "revoke",
    "rotate-credentials",
    "firmware-rollback",
    "notify",
)
ACTION_STATUSES = ("proposed", "approved", "executed", "reverted", "rejected", "failed")
SEVERITY_VALUES = ("low", "medium", "high", "critical")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# deterministic constraint names, so migrations can address them on every backend
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONType, list[str]: JSONType, list[Any]: JSONType}

    def to_dict(self) -> dict[str, Any]:
        """Every column, by attribute name."""
        return {attr.key: getattr(self, attr.key) for attr in self.__mapper__.column_attrs}


class Vendor(Base):
    """A device maker, with where to send security reports."""

    __tablename__ = "vendors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    website: Mapped[str | None] = mapped_column(String(500))
    security_contact: Mapped[str | None] = mapped_column(String(500))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[float] = mapped_column(Double)


class Device(Base):
    """One device of the fleet: registered by an operator, or discovered from traffic."""

    __tablename__ = "devices"
    __table_args__ = (
        CheckConstraint(_in("lifecycle", LIFECYCLES), name="lifecycle"),
        Index("ix_devices_ip", "ip"),
        Index("ix_devices_mac", "mac"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(200), unique=True)
    ip: Mapped[str | None] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(32))
    vendor: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    device_class: Mapped[str | None] = mapped_column(String(100))
    firmware_version: Mapped[str | None] = mapped_column(String(100))
    owner: Mapped[str | None] = mapped_column(String(200))
    site: Mapped[str | None] = mapped_column(String(200))
    zone: Mapped[str | None] = mapped_column(String(100))
    network_role: Mapped[str | None] = mapped_column(String(100))
    data_class: Mapped[str | None] = mapped_column(String(100))
    lifecycle: Mapped[str] = mapped_column(String(20), default="active")
    discovered: Mapped[bool] = mapped_column(Boolean, default=False)
    first_seen: Mapped[float | None] = mapped_column(Double)
    last_seen: Mapped[float | None] = mapped_column(Double)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)


class IncidentRecord(Base):
    """A saved :class:`fleetwarden.core.findings.Incident` plus its handling status."""

    __tablename__ = "incidents"
    __table_args__ = (
        CheckConstraint(_in("status", INCIDENT_STATUSES), name="status"),
        CheckConstraint(_in("severity", SEVERITY_VALUES), name="severity"),
        CheckConstraint("risk >= 0 AND risk <= 100", name="risk"),
        Index("ix_incidents_entity_category", "entity", "category"),
        Index("ix_incidents_status", "status"),
        Index("ix_incidents_last_seen", "last_seen"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity: Mapped[str] = mapped_column(String(200))
    device_id: Mapped[str | None] = mapped_column(
        String(200), ForeignKey("devices.device_id", ondelete="SET NULL"), index=True
    )
    ip: Mapped[str | None] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(32))
    category: Mapped[str] = mapped_column(String(50))
    severity: Mapped[str] = mapped_column(String(10))
    risk: Mapped[int] = mapped_column(Integer)
    first_seen: Mapped[float] = mapped_column(Double)
    last_seen: Mapped[float] = mapped_column(Double)
    evidence: Mapped[list[str]] = mapped_column(default=list)
    mitre: Mapped[list[str]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(20), default="open")
    source: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)

    def to_contract(self) -> dict[str, Any]:
        """The ``analyze --json`` incident shape (the command-line contract, docs/architecture.md)."""
        return incident_json(self)


class FindingRecord(Base):
    """A saved :class:`fleetwarden.core.findings.Finding`.

    ``fingerprint`` (hash of entity, category, detector, time span, record ids and evidence) makes
    saving idempotent: a replayed stream message or a re-analysed file adds nothing.
    """

    __tablename__ = "findings"
    __table_args__ = (
        CheckConstraint("score >= 0 AND score <= 1", name="score"),
        CheckConstraint(_in("severity", SEVERITY_VALUES), name="severity"),
        Index("ix_findings_entity_category", "entity", "category"),
        Index("ix_findings_last_seen", "last_seen"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    entity: Mapped[str] = mapped_column(String(200))
    device_id: Mapped[str | None] = mapped_column(
        String(200), ForeignKey("devices.device_id", ondelete="SET NULL"), index=True
    )
    ip: Mapped[str | None] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(32))
    category: Mapped[str] = mapped_column(String(50))
    detector: Mapped[str] = mapped_column(String(100))
    score: Mapped[float] = mapped_column(Double)
    severity: Mapped[str] = mapped_column(String(10))
    first_seen: Mapped[float] = mapped_column(Double)
    last_seen: Mapped[float] = mapped_column(Double)
    evidence: Mapped[list[str]] = mapped_column(default=list)
    mitre: Mapped[list[str]] = mapped_column(default=list)
    record_ids: Mapped[list[str]] = mapped_column(default=list)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    incident_id: Mapped[int | None] = mapped_column(
        ForeignKey("incidents.id", ondelete="SET NULL"), index=True
    )
    source: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[float] = mapped_column(Double)


class Action(Base):
    """A response step: proposed, approved where policy says so, executed, reversible."""

    __tablename__ = "actions"
    __table_args__ = (
        CheckConstraint(_in("status", ACTION_STATUSES), name="status"),
        Index("ix_actions_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int | None] = mapped_column(
        ForeignKey("incidents.id", ondelete="SET NULL"), index=True
    )
    device_id: Mapped[str | None] = mapped_column(
        String(200), ForeignKey("devices.device_id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), default="proposed")
    requested_by: Mapped[str] = mapped_column(String(200))
    approved_by: Mapped[str | None] = mapped_column(String(200))
    requested_at: Mapped[float] = mapped_column(Double)
    approved_at: Mapped[float | None] = mapped_column(Double)
    executed_at: Mapped[float | None] = mapped_column(Double)
    reverted_at: Mapped[float | None] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class AuditEntry(Base):
    """One link of the hash-chained, append-only audit log (see :mod:`fleetwarden.store.audit`)."""

    __tablename__ = "audit_entries"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[float] = mapped_column(Double)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(String(500))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class ModelRecord(Base):
    """A trained model on disk: which one, where, and how it was made."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Double)
    # "metadata" is reserved on declarative classes; the column keeps the plain name
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["metadata"] = d.pop("meta")
        return d


class IngestBatch(Base):
    """What was ingested: one row per source and event kind per ``record_results`` call."""

    __tablename__ = "ingest_batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(50))
    records: Mapped[int] = mapped_column(Integer)
    first_ts: Mapped[float | None] = mapped_column(Double)
    last_ts: Mapped[float | None] = mapped_column(Double)
    created_at: Mapped[float] = mapped_column(Double)


class EngineCheckpoint(Base):
    """A scale-out worker's saved detection state (``fleetwarden worker``), keyed by the stream, the
    consumer prefix and the set of partitions the worker owns.

    ``state`` is the checkpoint :mod:`fleetwarden.app.worker` writes: a header naming every owned
    partition's position (stream sequence up to which its events are in the state, and the lines
    of later messages already in it) and the engine's state.  ``stream_seq`` is the sum of those
    positions: it never goes back while the worker moves on, so the store can refuse a stale
    writer.  ``partitions`` is the partition count the device-to-partition map was made with: a
    checkpoint is only valid under the same count.
    """

    __tablename__ = "engine_checkpoints"

    partition: Mapped[str] = mapped_column(String(200), primary_key=True)
    stream_seq: Mapped[int] = mapped_column(BigInteger)
    partitions: Mapped[int] = mapped_column(Integer)
    events: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[float] = mapped_column(Double)


TABLES = (
    "vendors",
    "devices",
    "incidents",
    "findings",
    "actions",
    "audit_entries",
    "models",
    "ingest_batches",
    "engine_checkpoints",
)
