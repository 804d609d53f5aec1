"""The campaign index: table ``campaign_keys`` (:mod:`fleetwarden.store.campaigns`), one row per
(kind, key, incident) for the subjects of attack incidents and the counterparts every incident's
findings name, so a recording finds the stored incidents campaign-related to its new findings
without reading them all.  Incidents stored before this revision are not indexed: they link to
new findings again once a finding of their own device is recorded (which re-indexes its story).

Like 0001 it does not import the models.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 03:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaign_keys",
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("key", sa.String(length=253), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.CheckConstraint("kind IN ('subject', 'counterpart')", name=op.f("ck_campaign_keys_kind")),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_campaign_keys_incident_id_incidents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("kind", "key", "incident_id", name=op.f("pk_campaign_keys")),
    )
    op.create_index("ix_campaign_keys_incident_id", "campaign_keys", ["incident_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_campaign_keys_incident_id", table_name="campaign_keys")
    op.drop_table("campaign_keys")
