"""Drop ix_fhir_resource_type_hash: no query reads it, and every write paid for it.

Content hashes are only ever compared with the head found by primary key (is this PUT a no-op?),
so an index over (type, hash) was a random-order B-tree insert per resource written and nothing
else.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_fhir_resource_type_hash", table_name="fhir_resource")


def downgrade() -> None:
    op.create_index(
        "ix_fhir_resource_type_hash", "fhir_resource", ["resource_type", "content_hash"]
    )
