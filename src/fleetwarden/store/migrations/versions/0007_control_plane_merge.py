"""Join the control plane's four branches (inventory 0003, identity 0004, firmware 0005,
onboarding 0006), which were written side by side on top of 0002, back into one head.

No schema change: a merge revision only records that all four are applied.

Revision ID: 0007
Revises: 0003, 0004, 0005, 0006
Create Date: 2026-12-07 00:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0007"
down_revision: str | Sequence[str] | None = ("0003", "0004", "0005", "0006")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
