"""Firmware: vendor keys, the signed firmware registry, staged rollouts.

Tables ``vendor_keys``, ``firmware_images``, ``rollouts`` and ``rollout_devices``
(:mod:`fleetwarden.store.firmware`).  Like 0001 it does not import the models.

Revision ID: 0005
Revises: 0002
Create Date: 2026-12-06 23:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = "0005"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "vendor_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vendor", sa.String(length=200), nullable=False),
        sa.Column("purpose", sa.String(length=20), nullable=False),
        sa.Column("algorithm", sa.String(length=20), nullable=False),
        sa.Column("public_key_pem", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("added_at", sa.Double(), nullable=False),
        sa.Column("revoked_at", sa.Double(), nullable=True),
        sa.CheckConstraint("purpose IN ('firmware', 'attestation')", name=op.f("ck_vendor_keys_purpose")),
        sa.CheckConstraint("algorithm IN ('ed25519', 'ecdsa-p256')", name=op.f("ck_vendor_keys_algorithm")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vendor_keys")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_vendor_keys_fingerprint")),
    )
    op.create_index("ix_vendor_keys_vendor_purpose", "vendor_keys", ["vendor", "purpose"], unique=False)

    op.create_table(
        "firmware_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vendor", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=200), nullable=False),
        sa.Column("signed_by", sa.String(length=64), nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("cves", JSON_TYPE, nullable=False),
        sa.Column("cvss_max", sa.Double(), nullable=True),
        sa.Column("release_date", sa.Double(), nullable=True),
        sa.Column("added_at", sa.Double(), nullable=False),
        sa.CheckConstraint(
            "cvss_max IS NULL OR (cvss_max >= 0 AND cvss_max <= 10)", name=op.f("ck_firmware_images_cvss_max")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_firmware_images")),
        sa.UniqueConstraint(
            "vendor",
            "model",
            "version",
            "sha256",
            name=op.f("uq_firmware_images_vendor_model_version_sha256"),
        ),
    )
    op.create_index("ix_firmware_images_vendor_model", "firmware_images", ["vendor", "model"], unique=False)
    op.create_index("ix_firmware_images_sha256", "firmware_images", ["sha256"], unique=False)

    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("vendor", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("target_version", sa.String(length=100), nullable=False),
        sa.Column("target_sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("plan", JSON_TYPE, nullable=False),
        sa.CheckConstraint(
            "status IN ('planned', 'running', 'halted', 'completed', 'rolled-back')",
            name=op.f("ck_rollouts_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )

    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=200), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("previous_version", sa.String(length=100), nullable=True),
        sa.Column("previous_sha256", sa.String(length=64), nullable=True),
        sa.Column("reported_sha256", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.Double(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'updating', 'updated', 'regressed', 'rolled-back')",
            name=op.f("ck_rollout_devices_status"),
        ),
        sa.CheckConstraint("wave >= 0", name=op.f("ck_rollout_devices_wave")),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name=op.f("fk_rollout_devices_rollout_id_rollouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("rollout_id", "device_id", name=op.f("pk_rollout_devices")),
    )
    op.create_index("ix_rollout_devices_device_id", "rollout_devices", ["device_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_rollout_devices_device_id", table_name="rollout_devices")
    op.drop_table("rollout_devices")
    op.drop_table("rollouts")
    op.drop_index("ix_firmware_images_sha256", table_name="firmware_images")
    op.drop_index("ix_firmware_images_vendor_model", table_name="firmware_images")
    op.drop_table("firmware_images")
    op.drop_index("ix_vendor_keys_vendor_purpose", table_name="vendor_keys")
    op.drop_table("vendor_keys")
