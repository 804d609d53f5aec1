"""Storage models: the tables FleetWarden keeps, as SQLAlchemy 2 typed declarative classes.

These are storage shapes, not the engine's objects: :class:`fleetwarden.core.findings.Finding`
and :class:`~fleetwarden.core.findings.Incident` become :class:`FindingRecord` and
:class:`IncidentRecord` when saved.  Times are epoch seconds (double precision) like the
events they come from; JSON columns are JSON on SQLite and JSONB on PostgreSQL.

The Alembic migration ``versions/0001_initial.py`` creates exactly these tables; a test
compares the two with Alembic's autogenerate so they cannot drift apart.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
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

# a device's life, in order; "provisioning" (before 0003) is read as "provisioned"
LIFECYCLES = ("ordered", "provisioned", "active", "quarantined", "retired")
DATA_CLASSES = ("public", "internal", "confidential", "regulated")
CRITICALITIES = ("low", "medium", "high", "critical")
INCIDENT_STATUSES = ("open", "acknowledged", "closed")
# every kind an action row may have: the response policy's (control/response.py ACTIONS) and the
# firmware and credential steps other services propose
ACTION_KINDS = (
    "alert",
    "ticket",
    "disable-account",
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
    __table_args__ = (
        CheckConstraint("patch_cadence_days >= 0 AND patch_cadence_days <= 3650", name="patch_cadence"),
        CheckConstraint("support_years >= 0 AND support_years <= 100", name="support_years"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    website: Mapped[str | None] = mapped_column(String(500))
    security_contact: Mapped[str | None] = mapped_column(String(500))
    # vendor risk inputs (fleetwarden.control.vendors): disclosure policy URL or text, days between
    # security patches, authentication the products support, support commitment
    disclosure_policy: Mapped[str | None] = mapped_column(String(2000))
    patch_cadence_days: Mapped[int | None] = mapped_column(Integer)
    auth_support: Mapped[list[str]] = mapped_column(default=list)
    support_years: Mapped[int | None] = mapped_column(Integer)
    support_until: Mapped[date | None] = mapped_column(Date)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[float] = mapped_column(Double)


class Device(Base):
    """One device of the fleet: registered by an operator, or discovered from traffic."""

    __tablename__ = "devices"
    __table_args__ = (
        CheckConstraint(_in("lifecycle", LIFECYCLES), name="lifecycle"),
        CheckConstraint(_in("data_class", DATA_CLASSES), name="data_class"),
        CheckConstraint(_in("criticality", CRITICALITIES), name="criticality"),
        Index("ix_devices_ip", "ip"),
        Index("ix_devices_mac", "mac"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    ip: Mapped[str | None] = mapped_column(String(64))  # the primary address, also first in ips
    ips: Mapped[list[str]] = mapped_column(default=list)
    mac: Mapped[str | None] = mapped_column(String(32))
    serial: Mapped[str | None] = mapped_column(String(200))
    vendor: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    device_class: Mapped[str | None] = mapped_column(String(100))
    firmware_version: Mapped[str | None] = mapped_column(String(100))
    owner: Mapped[str | None] = mapped_column(String(200))
    site: Mapped[str | None] = mapped_column(String(200))
    zone: Mapped[str | None] = mapped_column(String(100))
    network_role: Mapped[str | None] = mapped_column(String(100))
    data_class: Mapped[str | None] = mapped_column(String(100))
    criticality: Mapped[str | None] = mapped_column(String(10))
    end_of_support: Mapped[date | None] = mapped_column(Date)
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
    # the correlator's campaign id (Incident.campaign), linking incidents across devices; not in
    # the analyze --json contract
    campaign: Mapped[str | None] = mapped_column(String(64), index=True)

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


VERDICTS = ("true-positive", "false-positive")


class Verdict(Base):
    """An analyst's verdict on an incident (true or false positive) with a reason; the newest one
    per incident counts (older ones stay as history).  Migration 0009."""

    __tablename__ = "verdicts"
    __table_args__ = (CheckConstraint(_in("verdict", VERDICTS), name="verdict"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"), index=True)
    verdict: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(1000))
    analyst: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Double)


SUPPRESSION_KINDS = ("maintenance", "exception")


class Suppression(Base):
    """A maintenance window or an analyst-approved exception (migration 0010): findings it matches
    (:mod:`fleetwarden.control.suppression`) no longer count towards incidents.  ``removed_at`` lifts
    it early; ``closed_incidents`` are the incidents it closed, reopened when it is lifted."""

    __tablename__ = "suppressions"
    __table_args__ = (
        CheckConstraint(_in("kind", SUPPRESSION_KINDS), name="kind"),
        Index("ix_suppressions_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    device_id: Mapped[str | None] = mapped_column(String(200))
    site: Mapped[str | None] = mapped_column(String(200))
    device_class: Mapped[str | None] = mapped_column(String(100))
    category: Mapped[str | None] = mapped_column(String(50))
    destination: Mapped[str | None] = mapped_column(String(253))
    starts_at: Mapped[float | None] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)
    reason: Mapped[str] = mapped_column(String(1000))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Double)
    removed_at: Mapped[float | None] = mapped_column(Double)
    removed_by: Mapped[str | None] = mapped_column(String(200))
    closed_incidents: Mapped[list[Any]] = mapped_column(default=list)


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


CERTIFICATE_STATUSES = ("active", "revoked", "superseded", "expired")
OPERATOR_ROLES = ("admin", "operator", "analyst", "viewer", "service")


class CertificateRecord(Base):
    """A device certificate the FleetWarden CA issued (:mod:`fleetwarden.control.ca`): the public
    certificate only, never a private key.  ``serial`` is lower-case hex, times are epoch seconds;
    ``device_id`` has no foreign key (a certificate may be issued before the device is inventoried)."""

    __tablename__ = "certificates"
    __table_args__ = (CheckConstraint(_in("status", CERTIFICATE_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    device_id: Mapped[str] = mapped_column(String(200), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    key_type: Mapped[str] = mapped_column(String(20))
    key_size: Mapped[int] = mapped_column(Integer)
    subject: Mapped[str] = mapped_column(String(500))
    issued_at: Mapped[float] = mapped_column(Double)
    not_before: Mapped[float] = mapped_column(Double)
    not_after: Mapped[float] = mapped_column(Double)
    status: Mapped[str] = mapped_column(String(20), default="active")
    revoked_at: Mapped[float | None] = mapped_column(Double)
    revocation_reason: Mapped[str | None] = mapped_column(String(40))
    pem: Mapped[str] = mapped_column(Text)


class OperatorRecord(Base):
    """A person or service allowed to use the API, with a role; only the SHA-256 of its token is kept."""

    __tablename__ = "operators"
    __table_args__ = (CheckConstraint(_in("role", OPERATOR_ROLES), name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Double)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    last_used_at: Mapped[float | None] = mapped_column(Double)


SESSION_FACES = ("api", "console")


class ConsoleSessionRecord(Base):
    """A browser sign-in (migration 0012): the API's ``fw_session`` cookie or the console's
    ``fw_console`` cookie (``face``).  Only the SHA-256 of the cookie's random secret is kept, so a
    stolen database signs nobody in.  ``ended_at`` is set by sign-out, by an admin
    (``users end-sessions``) or when the operator is disabled; ``last_seen_at`` is refreshed at most
    once a minute.  Rows are purged a week after they expire."""

    __tablename__ = "console_sessions"
    __table_args__ = (
        CheckConstraint(_in("face", SESSION_FACES), name="face"),
        Index("ix_console_sessions_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id", ondelete="CASCADE"), index=True)
    face: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)
    ended_at: Mapped[float | None] = mapped_column(Double)
    last_seen_at: Mapped[float | None] = mapped_column(Double)
    user_agent: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(64))


KEY_PURPOSES = ("firmware", "attestation")
KEY_ALGORITHMS = ("ed25519", "ecdsa-p256")
ROLLOUT_STATUSES = ("planned", "running", "halted", "completed", "rolled-back")
ROLLOUT_DEVICE_STATUSES = ("pending", "updating", "updated", "regressed", "rolled-back")


class VendorKey(Base):
    """A vendor's public key (:mod:`fleetwarden.control.firmware`): firmware signing (Ed25519) or
    device attestation (Ed25519, ECDSA P-256).  ``fingerprint`` is the SHA-256 of the DER
    SubjectPublicKeyInfo; a revoked key stays, with ``revoked_at``, so old decisions stay explainable."""

    __tablename__ = "vendor_keys"
    __table_args__ = (
        CheckConstraint(_in("purpose", KEY_PURPOSES), name="purpose"),
        CheckConstraint(_in("algorithm", KEY_ALGORITHMS), name="algorithm"),
        Index("ix_vendor_keys_vendor_purpose", "vendor", "purpose"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vendor: Mapped[str] = mapped_column(String(200))
    purpose: Mapped[str] = mapped_column(String(20))
    algorithm: Mapped[str] = mapped_column(String(20))
    public_key_pem: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    added_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double)


class FirmwareImage(Base):
    """A signed firmware image of the registry: only images whose Ed25519 signature over the
    canonical manifest (:func:`fleetwarden.core.manifest.firmware_manifest`) verified against an
    active key of their vendor are stored; ``signed_by`` names that key."""

    __tablename__ = "firmware_images"
    __table_args__ = (
        UniqueConstraint("vendor", "model", "version", "sha256"),
        CheckConstraint("cvss_max IS NULL OR (cvss_max >= 0 AND cvss_max <= 10)", name="cvss_max"),
        Index("ix_firmware_images_vendor_model", "vendor", "model"),
        Index("ix_firmware_images_sha256", "sha256"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vendor: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    sha256: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(200))
    signed_by: Mapped[str] = mapped_column(String(64))
    verified: Mapped[bool] = mapped_column(Boolean, default=True)
    cves: Mapped[list[str]] = mapped_column(default=list)
    cvss_max: Mapped[float | None] = mapped_column(Double)
    release_date: Mapped[float | None] = mapped_column(Double)
    added_at: Mapped[float] = mapped_column(Double)


class Rollout(Base):
    """A staged firmware rollout (:mod:`fleetwarden.control.rollout`): target image, status and the
    plan (waves, maintenance windows, soak, the wave reached)."""

    __tablename__ = "rollouts"
    __table_args__ = (CheckConstraint(_in("status", ROLLOUT_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    vendor: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    target_version: Mapped[str] = mapped_column(String(100))
    target_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="planned")
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
    plan: Mapped[dict[str, Any]] = mapped_column(default=dict)


class RolloutDevice(Base):
    """One device of a rollout: its wave (0 = canary), status and what it ran before.
    ``device_id`` has no foreign key: a retired device's rollout history stays."""

    __tablename__ = "rollout_devices"
    __table_args__ = (
        CheckConstraint(_in("status", ROLLOUT_DEVICE_STATUSES), name="status"),
        CheckConstraint("wave >= 0", name="wave"),
        Index("ix_rollout_devices_device_id", "device_id"),
    )

    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    wave: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    previous_version: Mapped[str | None] = mapped_column(String(100))
    previous_sha256: Mapped[str | None] = mapped_column(String(64))
    reported_sha256: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[float | None] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)


ENROLMENT_RESULTS = ("accepted", "refused")


class ExpectedDevice(Base):
    """An expected shipment line (``fleetwarden onboard expect``): a device that may enrol."""

    __tablename__ = "expected_devices"
    __table_args__ = (UniqueConstraint("vendor", "serial"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial: Mapped[str] = mapped_column(String(64))
    vendor: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    site: Mapped[str] = mapped_column(String(200))
    country: Mapped[str | None] = mapped_column(String(2))
    device_id: Mapped[str | None] = mapped_column(String(200))
    device_class: Mapped[str | None] = mapped_column(String(100))
    imported_at: Mapped[float] = mapped_column(Double)
    enrolled_at: Mapped[float | None] = mapped_column(Double)


class OnboardingNonce(Base):
    """An enrolment challenge (``fleetwarden onboard nonce``), kept as its SHA-256; used once."""

    __tablename__ = "onboarding_nonces"

    nonce_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    issued_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)
    used_at: Mapped[float | None] = mapped_column(Double)
    used_by: Mapped[str | None] = mapped_column(String(64))
    issued_by: Mapped[str] = mapped_column(String(200))


class Enrolment(Base):
    """One provisioning request and what onboarding decided (accepted, or refused with the reason)."""

    __tablename__ = "enrolments"
    __table_args__ = (
        CheckConstraint(_in("result", ENROLMENT_RESULTS), name="result"),
        Index("ix_enrolments_vendor_serial", "vendor", "serial"),
        Index("ix_enrolments_public_key_sha256", "public_key_sha256"),
        Index("ix_enrolments_ts", "ts"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[float] = mapped_column(Double)
    serial: Mapped[str] = mapped_column(String(64))
    vendor: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    device_id: Mapped[str | None] = mapped_column(String(200))
    result: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str | None] = mapped_column(String(40))
    sentence: Mapped[str | None] = mapped_column(String(1000))
    reasons: Mapped[list[str]] = mapped_column(default=list)
    site: Mapped[str] = mapped_column(String(200))
    country: Mapped[str | None] = mapped_column(String(2))
    source: Mapped[str | None] = mapped_column(String(64))
    public_key_sha256: Mapped[str] = mapped_column(String(64))
    firmware_sha256: Mapped[str] = mapped_column(String(64))
    certificate_serial: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Double)


class AuditHead(Base):
    """The newest audit entry (``seq``, ``hash``), one row kept by a database trigger on every
    append (migration 0006), so deleting the newest entries (truncation) shows against it."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


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
    "expected_devices",
    "onboarding_nonces",
    "enrolments",
    "audit_head",
    "certificates",
    "operators",
    "vendor_keys",
    "firmware_images",
    "rollouts",
    "rollout_devices",
    "verdicts",
    "suppressions",
    "console_sessions",
)


# ---------------------------------------------------------------------------- campaign index (0013)

CAMPAIGN_KEY_KINDS = ("subject", "counterpart")


class CampaignKey(Base):
    """One key under which a stored incident is campaign-related to others (migration 0013,
    :mod:`fleetwarden.store.campaigns`): ``kind`` "subject" (an address or entity an attack
    incident is about) or "counterpart" (an other end its findings name, as
    :func:`fleetwarden.detection.correlation.counterparts` reads them), lower case.  Written with
    the incident (:meth:`~fleetwarden.store.repository.Store.record_results`); the primary key is
    the lookup index."""

    __tablename__ = "campaign_keys"
    __table_args__ = (CheckConstraint(_in("kind", CAMPAIGN_KEY_KINDS), name="kind"),)

    kind: Mapped[str] = mapped_column(String(12), primary_key=True)
    key: Mapped[str] = mapped_column(String(253), primary_key=True)
    incident_id: Mapped[int] = mapped_column(
        ForeignKey("incidents.id", ondelete="CASCADE"), primary_key=True, index=True
    )


TABLES += ("campaign_keys",)
