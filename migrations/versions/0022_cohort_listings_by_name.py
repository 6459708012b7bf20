"""A cohort snapshot keeps more than one listing: each row names it (`subjects`, `swimmer`, …).

The NCT06088771 outcomes body carried a row per subject and a swimmer row per dosed subject, and
the cirAE body a row per excluded patient, so both grew with the cohort (5 MB at 10^4 patients).
Those rows now live only in listings paged at their own endpoints, keyed by (study, listing,
subject). The table holds derived data: it is created
anew, and the snapshots are dropped with their figures, so each study is computed again under the
new layout (reads answer 503 `cohort_not_ready` until then, as on a new database); `data_as_of`
carries on from where each study's dropped snapshot was.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _listing_table(*, named: bool) -> None:
    """`cohort_listing` keyed by (study, listing, subject), or as before 0022 by (study, subject)."""
    columns = [
        sa.Column("study_id", sa.String(length=64), nullable=False),
        *([sa.Column("listing", sa.String(length=16), nullable=False)] if named else []),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
    ]
    key = ("study_id", "listing", "subject_id") if named else ("study_id", "subject_id")
    op.create_table("cohort_listing", *columns, sa.PrimaryKeyConstraint(*key))


def _drop_snapshots() -> None:
    """Every snapshot, its figures and its listing rows: derived data, computed again.

    A running computation's lease goes first, so it counts as lost and stores nothing; each
    study's `data_as_of` stays as a pending change (its number was used, so it is free), so the
    next snapshot reflects at least as much as the dropped one did and `data_as_of` never goes
    back. Snapshot, figures, listing: the order a refresher stores them in, so a refresher of a
    replica still running the old release waits here instead of deadlocking.
    """
    op.execute("DELETE FROM cohort_lease")
    op.execute(
        "INSERT INTO study_change (id, study_id) SELECT s.data_as_of, s.study_id"
        " FROM cohort_snapshot s WHERE s.data_as_of > 0"
        " AND NOT EXISTS (SELECT 1 FROM study_change c WHERE c.id = s.data_as_of)"
    )
    op.execute("DELETE FROM cohort_snapshot")
    op.execute("DELETE FROM cohort_figure")
    op.drop_table("cohort_listing")


def upgrade() -> None:
    _drop_snapshots()
    _listing_table(named=True)


def downgrade() -> None:
    _drop_snapshots()
    _listing_table(named=False)
