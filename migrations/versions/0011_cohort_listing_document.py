"""Cohort snapshots keep the per-subject listing and the report document, so reads never compute.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
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
    with op.batch_alter_table("cohort_snapshot") as batch:
        batch.add_column(sa.Column("document", sa.Text(), nullable=True))
    op.create_table(
        "cohort_listing",
        sa.Column("study_id", sa.String(length=64), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("study_id", "subject_id"),
    )


def downgrade() -> None:
    op.drop_table("cohort_listing")
    with op.batch_alter_table("cohort_snapshot") as batch:
        batch.drop_column("document")
