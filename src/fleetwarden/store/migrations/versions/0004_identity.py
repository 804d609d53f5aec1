"""Identity: the certificates the device CA issued and the API's operators.

``certificates`` keeps each issued device certificate (public PEM only, never a key) with its
serial, fingerprint, key description, validity and revocation status; ``operators`` keeps API
users with a role and the SHA-256 of their token (never the token).  Like 0001 it does not
import the models.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=200), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("key_type", sa.String(length=20), nullable=False),
        sa.Column("key_size", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=False),
        sa.Column("issued_at", sa.Double(), nullable=False),
        sa.Column("not_before", sa.Double(), nullable=False),
        sa.Column("not_after", sa.Double(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("revoked_at", sa.Double(), nullable=True),
        sa.Column("revocation_reason", sa.String(length=40), nullable=True),
        sa.Column("pem", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'revoked', 'superseded', 'expired')", name=op.f("ck_certificates_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_certificates")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_certificates_fingerprint")),
        sa.UniqueConstraint("serial", name=op.f("uq_certificates_serial")),
    )
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_certificates_device_id"), ["device_id"], unique=False)

    op.create_table(
        "operators",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("last_used_at", sa.Double(), nullable=True),
        sa.CheckConstraint(
            "role IN ('admin', 'operator', 'analyst', 'viewer', 'service')", name=op.f("ck_operators_role")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operators")),
        sa.UniqueConstraint("name", name=op.f("uq_operators_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_operators_token_hash")),
    )


def downgrade() -> None:
    op.drop_table("operators")
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_certificates_device_id"))
    op.drop_table("certificates")
