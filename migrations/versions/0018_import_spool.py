"""Import spool in the database: asynchronous `$import` bodies wait for their job in a table.

With jobs on the PostgreSQL queue, a body a server received was spooled to a folder the job
workers had to share (a ReadWriteMany volume in Kubernetes). It now waits in `import_spool`, in
pieces of about a megabyte, and any worker reads it; the pieces are deleted when the job ends.
A body being received when its server died is swept once it is a day old and no job names it.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "import_spool",
        sa.Column("spool_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("spool_id", "seq"),
    )


def downgrade() -> None:
    op.drop_table("import_spool")
