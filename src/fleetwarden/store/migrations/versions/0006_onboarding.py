"""Onboarding and the audit head.

``expected_devices`` (the imported shipments), ``onboarding_nonces`` (enrolment challenges, kept
as SHA-256, used once), ``enrolments`` (every provisioning request and its verdict), and
``audit_head``: one row holding the newest audit entry's ``seq`` and ``hash``, kept by a trigger
on ``audit_entries`` in the same transaction as every append (so the repository needs no change
and no code path can append without moving it).  The head only moves forward and cannot be
deleted (triggers refuse both), so deleting the newest entries shows as a chain shorter than its
head.  Like 0001 it does not import the models.

Revision ID: 0006
Revises: 0002
Create Date: 2026-12-01 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _expected_devices()
    _nonces()
    _enrolments()
    _audit_head()


def _expected_devices() -> None:
    op.create_table(
        "expected_devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("vendor", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("site", sa.String(length=200), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("device_id", sa.String(length=200), nullable=True),
        sa.Column("device_class", sa.String(length=100), nullable=True),
        sa.Column("imported_at", sa.Double(), nullable=False),
        sa.Column("enrolled_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_expected_devices")),
        sa.UniqueConstraint("vendor", "serial", name=op.f("uq_expected_devices_vendor_serial")),
    )


def _nonces() -> None:
    op.create_table(
        "onboarding_nonces",
        sa.Column("nonce_sha256", sa.String(length=64), nullable=False),
        sa.Column("issued_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("used_at", sa.Double(), nullable=True),
        sa.Column("used_by", sa.String(length=64), nullable=True),
        sa.Column("issued_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("nonce_sha256", name=op.f("pk_onboarding_nonces")),
    )


def _enrolments() -> None:
    op.create_table(
        "enrolments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("vendor", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("device_id", sa.String(length=200), nullable=True),
        sa.Column("result", sa.String(length=10), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=True),
        sa.Column("sentence", sa.String(length=1000), nullable=True),
        sa.Column("reasons", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("site", sa.String(length=200), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.Column("public_key_sha256", sa.String(length=64), nullable=False),
        sa.Column("firmware_sha256", sa.String(length=64), nullable=False),
        sa.Column("certificate_serial", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.CheckConstraint("result IN ('accepted', 'refused')", name=op.f("ck_enrolments_result")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrolments")),
    )
    with op.batch_alter_table("enrolments", schema=None) as batch_op:
        batch_op.create_index("ix_enrolments_public_key_sha256", ["public_key_sha256"], unique=False)
        batch_op.create_index("ix_enrolments_ts", ["ts"], unique=False)
        batch_op.create_index("ix_enrolments_vendor_serial", ["vendor", "serial"], unique=False)


def _audit_head() -> None:
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    # a store that already has entries starts with its current head
    op.execute(
        "INSERT INTO audit_head (id, seq, hash) "
        "SELECT 1, seq, hash FROM audit_entries WHERE seq = (SELECT MAX(seq) FROM audit_entries)"
    )
    if op.get_bind().dialect.name == "postgresql":
        _audit_head_postgres()
    else:
        _audit_head_sqlite()


def _audit_head_sqlite() -> None:
    op.execute(
        "CREATE TRIGGER audit_head_follow AFTER INSERT ON audit_entries BEGIN "
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, NEW.seq, NEW.hash) "
        "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash; END"
    )
    op.execute(
        "CREATE TRIGGER audit_head_forward BEFORE UPDATE ON audit_head WHEN NEW.seq <= OLD.seq OR NEW.id != 1 "
        "BEGIN SELECT RAISE(ABORT, 'audit_head only moves forward'); END"
    )
    op.execute(
        "CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head "
        "BEGIN SELECT RAISE(ABORT, 'audit_head only moves forward'); END"
    )


def _audit_head_postgres() -> None:
    op.execute(
        """
        CREATE FUNCTION fw_audit_head_follow() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO audit_head (id, seq, hash) VALUES (1, NEW.seq, NEW.hash)
            ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_head_follow AFTER INSERT ON audit_entries "
        "FOR EACH ROW EXECUTE FUNCTION fw_audit_head_follow()"
    )
    op.execute(
        """
        CREATE FUNCTION fw_audit_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' OR NEW.seq <= OLD.seq OR NEW.id <> 1 THEN
                RAISE EXCEPTION 'audit_head only moves forward';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_head_forward BEFORE UPDATE OR DELETE ON audit_head "
        "FOR EACH ROW EXECUTE FUNCTION fw_audit_head_forward()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_head_follow ON audit_entries")
        op.execute("DROP TRIGGER IF EXISTS audit_head_forward ON audit_head")
        op.execute("DROP FUNCTION IF EXISTS fw_audit_head_follow()")
        op.execute("DROP FUNCTION IF EXISTS fw_audit_head_forward()")
    else:
        for name in ("audit_head_follow", "audit_head_forward", "audit_head_no_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("audit_head")
    with op.batch_alter_table("enrolments", schema=None) as batch_op:
        batch_op.drop_index("ix_enrolments_vendor_serial")
        batch_op.drop_index("ix_enrolments_ts")
        batch_op.drop_index("ix_enrolments_public_key_sha256")
    op.drop_table("enrolments")
    op.drop_table("onboarding_nonces")
    op.drop_table("expected_devices")
