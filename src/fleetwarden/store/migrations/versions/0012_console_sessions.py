"""Browser sign-ins kept in the store: table ``console_sessions`` (:mod:`fleetwarden.store.sessions`),
so sessions survive restarts, are shared by every server process and can be ended server-side.
Only the SHA-256 of a session's secret is stored.

Like 0001 it does not import the models.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 02:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("operator_id", sa.Integer(), nullable=False),
        sa.Column("face", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("ended_at", sa.Double(), nullable=True),
        sa.Column("last_seen_at", sa.Double(), nullable=True),
        sa.Column("user_agent", sa.String(length=200), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.CheckConstraint("face IN ('api', 'console')", name=op.f("ck_console_sessions_face")),
        sa.ForeignKeyConstraint(
            ["operator_id"], ["operators.id"], name=op.f("fk_console_sessions_operator_id_operators"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_sessions")),
        sa.UniqueConstraint("secret_sha256", name=op.f("uq_console_sessions_secret_sha256")),
    )
    op.create_index(op.f("ix_console_sessions_operator_id"), "console_sessions", ["operator_id"], unique=False)
    op.create_index("ix_console_sessions_expires_at", "console_sessions", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_console_sessions_expires_at", table_name="console_sessions")
    op.drop_index(op.f("ix_console_sessions_operator_id"), table_name="console_sessions")
    op.drop_table("console_sessions")
