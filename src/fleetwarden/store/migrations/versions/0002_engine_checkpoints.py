"""Engine checkpoints: a scale-out worker's detection state per bus partition.

One row per partition (``fleetwarden worker``): the pickled engine, the last stream
sequence it covers and the partition count it was made under.  Like 0001 it does not
import the models.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 09:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "engine_checkpoints",
        sa.Column("partition", sa.String(length=200), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.Column("partitions", sa.Integer(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("partition", name=op.f("pk_engine_checkpoints")),
    )


def downgrade() -> None:
    op.drop_table("engine_checkpoints")
