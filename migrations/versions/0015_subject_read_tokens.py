"""Subject read tokens: a per-subject value each write renews, so reads can serve cached answers.

`study_subject.read_token` is set to a fresh random value, in the write transaction, for every
patient a write re-derives (service.derivation.refresh). A process that cached a subject's
timeline or outcomes serves them again only while the token it read is unchanged. Rows that
exist already get a token here.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("study_subject") as batch:
        batch.add_column(sa.Column("read_token", sa.String(length=32), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        fresh = "md5(random()::text || clock_timestamp()::text || study_id || patient_id)"
    else:
        fresh = "lower(hex(randomblob(16)))"
    op.execute(f"UPDATE study_subject SET read_token = {fresh}")


def downgrade() -> None:
    with op.batch_alter_table("study_subject") as batch:
        batch.drop_column("read_token")
