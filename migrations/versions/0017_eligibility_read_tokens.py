"""Eligibility read tokens: the stored screening result gets a read token like the subject rows.

`eligibility_result.read_token` is set to a fresh random value, in the write transaction, every
time a candidate's stored result is written (service.repositories.eligibility_results). A process
that cached a candidate's stored eligibility answer serves it again only while the token it read
is unchanged: the hit path reads one indexed column instead of the whole stored row. Rows that
exist already get a token here. Developed on 0015; it follows 0016 (per-patient lookups indexed,
another branch), which must be merged first.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("eligibility_result") as batch:
        batch.add_column(sa.Column("read_token", sa.String(length=32), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        fresh = "md5(random()::text || clock_timestamp()::text || study_id || patient_id)"
    else:
        fresh = "lower(hex(randomblob(16)))"
    op.execute(f"UPDATE eligibility_result SET read_token = {fresh}")


def downgrade() -> None:
    with op.batch_alter_table("eligibility_result") as batch:
        batch.drop_column("read_token")
