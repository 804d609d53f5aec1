"""Maintenance windows and analyst-approved exceptions: table ``suppressions``
(:mod:`fleetwarden.store.suppression`).

Like 0001 it does not import the models.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 01:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("device_id", sa.String(length=200), nullable=True),
        sa.Column("site", sa.String(length=200), nullable=True),
        sa.Column("device_class", sa.String(length=100), nullable=True),
        sa.Column("category", sa.String(length=50), nullable=True),
        sa.Column("destination", sa.String(length=253), nullable=True),
        sa.Column("starts_at", sa.Double(), nullable=True),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("removed_at", sa.Double(), nullable=True),
        sa.Column("removed_by", sa.String(length=200), nullable=True),
        sa.Column("closed_incidents", JSONType, nullable=False),
        sa.CheckConstraint("kind IN ('maintenance', 'exception')", name=op.f("ck_suppressions_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppressions")),
    )
    op.create_index("ix_suppressions_expires_at", "suppressions", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_suppressions_expires_at", table_name="suppressions")
    op.drop_table("suppressions")
