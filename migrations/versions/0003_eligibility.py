"""Eligibility results per candidate, kept current on ingest.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "eligibility_result",
        sa.Column("study_id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("subject_id", sa.String(length=32), nullable=False),
        sa.Column("overall", sa.String(length=16), nullable=False),
        sa.Column("n_met", sa.Integer(), nullable=False),
        sa.Column("n_not_met", sa.Integer(), nullable=False),
        sa.Column("n_unknown", sa.Integer(), nullable=False),
        sa.Column("at_enrollment", sa.String(length=16), nullable=True),
        sa.Column("protocol_version", sa.String(length=64), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("study_id", "patient_id"),
        sa.UniqueConstraint("study_id", "subject_id", name="uq_eligibility_subject_id"),
    )
    op.create_index("ix_eligibility_overall", "eligibility_result", ["study_id", "overall"])


def downgrade() -> None:
    op.drop_index("ix_eligibility_overall", table_name="eligibility_result")
    op.drop_table("eligibility_result")
