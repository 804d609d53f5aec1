"""The correlator's campaign on stored incidents: nullable ``incidents.campaign`` (indexed), the id
linking the incidents one campaign (one C2 address, one scanning source) caused across devices
(:func:`fleetwarden.detection.correlation.find_campaigns`).

Like 0001 it does not import the models; ``batch_alter_table`` so SQLite can alter the table.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 01:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("campaign", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_incidents_campaign"), ["campaign"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_incidents_campaign"))
        batch_op.drop_column("campaign")
