"""Deviation pages read in id order from an index instead of sorting the study's deviations.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_deviation_study_id", "deviation", ["study_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_deviation_study_id", table_name="deviation")
