"""Per-patient look-ups of a write use an index: subject rows by patient, deviations by patient.

Every write that re-derives a patient reads that patient's subject rows in every study
(`study_subject.patient_id`, not the leading column of the primary key), renews their read
tokens, and reads the patient's deviations in each interventional study (the index by study and
subject covered only the study). Both were scans whose cost grew with the database: a
one-patient write into 10^5 patients cost several times one into 10^4 (issue 19).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_study_subject_patient", "study_subject", ["patient_id"])
    op.create_index("ix_deviation_study_patient", "deviation", ["study_id", "patient_id"])


def downgrade() -> None:
    op.drop_index("ix_deviation_study_patient", table_name="deviation")
    op.drop_index("ix_study_subject_patient", table_name="study_subject")
