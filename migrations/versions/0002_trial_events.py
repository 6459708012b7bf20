"""Trial events, their dependencies, study subjects and service secrets.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
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
        "trial_event",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("source_type", sa.String(length=64), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("source_version", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("first_day", sa.Date(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_trial_event_patient_day", "trial_event", ["patient_id", "first_day"])
    op.create_index("ix_trial_event_source", "trial_event", ["source_type", "source_id"])
    op.create_table(
        "trial_event_dependency",
        sa.Column("source_type", sa.String(length=64), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=512), nullable=False),
        sa.PrimaryKeyConstraint("source_type", "source_id", "target"),
    )
    op.create_index("ix_trial_event_dependency_target", "trial_event_dependency", ["target"])
    op.create_table(
        "study_subject",
        sa.Column("study_id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("subject_id", sa.String(length=32), nullable=False),
        sa.Column("subject_number", sa.String(length=256), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("enrolled_on", sa.Date(), nullable=True),
        sa.Column("day1", sa.Date(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("study_id", "patient_id"),
        sa.UniqueConstraint("study_id", "subject_id", name="uq_study_subject_subject_id"),
    )
    op.create_index("ix_study_subject_number", "study_subject", ["study_id", "subject_number"])
    op.create_table(
        "service_secret",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("service_secret")
    op.drop_index("ix_study_subject_number", table_name="study_subject")
    op.drop_table("study_subject")
    op.drop_index("ix_trial_event_dependency_target", table_name="trial_event_dependency")
    op.drop_table("trial_event_dependency")
    op.drop_index("ix_trial_event_source", table_name="trial_event")
    op.drop_index("ix_trial_event_patient_day", table_name="trial_event")
    op.drop_table("trial_event")
