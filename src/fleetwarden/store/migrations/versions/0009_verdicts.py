"""Analyst verdicts on incidents: table ``verdicts`` (:mod:`fleetwarden.store.verdicts`).

Like 0001 it does not import the models.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-07 00:15:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "verdicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("analyst", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.CheckConstraint("verdict IN ('true-positive', 'false-positive')", name=op.f("ck_verdicts_verdict")),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], name=op.f("fk_verdicts_incident_id_incidents"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verdicts")),
    )
    op.create_index(op.f("ix_verdicts_incident_id"), "verdicts", ["incident_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_verdicts_incident_id"), table_name="verdicts")
    op.drop_table("verdicts")
