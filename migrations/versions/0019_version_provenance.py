"""Each new version names the Provenance that recorded it, instead of one audit entity row per version.

A write's Provenance was found by target through `audit_entity`, one row per version written and an
index on the random `Type/id`: about 17 of the ~110 pages a one-patient transaction wrote to the
SQLite log. The version row, written anyway, now carries the Provenance id, and a search by target
reads it through the version's primary key. Rows written before this revision keep their
`audit_entity` rows (the column stays empty for them), and searches read both.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # nullable without a default: O(1) on both backends, whatever the table's size
    op.add_column(
        "fhir_resource_version",
        sa.Column("provenance_id", sa.String(length=64), nullable=True),
    )


def downgrade() -> None:
    # Provenances written since name their targets nowhere else: give them entity rows first
    op.execute(
        "INSERT INTO audit_entity (record_id, entity) "
        "SELECT DISTINCT provenance_id, resource_type || '/' || resource_id "
        "FROM fhir_resource_version WHERE provenance_id IS NOT NULL"
    )
    with op.batch_alter_table("fhir_resource_version") as batch:
        batch.drop_column("provenance_id")
