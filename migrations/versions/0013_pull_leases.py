"""Pull leases: a running pull job holds its source until `lease_until`; at most one runs per source.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RUNNING = sa.text("status = 'running'")


def upgrade() -> None:
    with op.batch_alter_table("pull_job") as batch:
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    # the unique index below needs at most one running job per source: an older duplicate
    # (two processes of the previous release) is recorded as ended
    op.execute(
        "UPDATE pull_job SET status = 'failed', "
        "error = 'abandoned: another pull of the source was running (upgrade to leases)' "
        "WHERE status = 'running' AND EXISTS (SELECT 1 FROM pull_job AS newer "
        "WHERE newer.source_id = pull_job.source_id AND newer.status = 'running' "
        "AND (newer.started_at > pull_job.started_at "
        "OR (newer.started_at = pull_job.started_at AND newer.id > pull_job.id)))"
    )
    op.create_index(
        "uq_pull_job_running",
        "pull_job",
        ["source_id"],
        unique=True,
        sqlite_where=_RUNNING,
        postgresql_where=_RUNNING,
    )


def downgrade() -> None:
    op.drop_index("uq_pull_job_running", table_name="pull_job")
    with op.batch_alter_table("pull_job") as batch:
        batch.drop_column("lease_until")
