"""The write path keeps only what something reads: drop the type/hash index and the owner FKs.

* ix_fhir_resource_type_hash: content hashes are only compared with the head found by primary
  key (is this PUT a no-op?), so the index was a random-order B-tree insert per resource written.
* fhir_identifier / fhir_reference -> fhir_resource foreign keys: heads are never deleted (a FHIR
  delete is a version), and index rows are written by the same statement group as their head, in
  the same transaction. The constraint checked what cannot happen, with a per-row trigger and
  lookup on PostgreSQL (~10 % of a large transaction's time), and its ON DELETE CASCADE never ran.

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

_INDEX_TABLES = ("fhir_identifier", "fhir_reference")
# SQLite constraints have no names: batch mode reflects them under this convention.
_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _fk_name(table: str) -> str:
    if op.get_bind().dialect.name == "postgresql":
        return f"{table}_resource_type_resource_id_fkey"  # PostgreSQL's name in 0001
    return f"fk_{table}_resource_type_fhir_resource"


def upgrade() -> None:
    op.drop_index("ix_fhir_resource_type_hash", table_name="fhir_resource")
    for table in _INDEX_TABLES:
        with op.batch_alter_table(table, naming_convention=_NAMING) as batch:
            batch.drop_constraint(_fk_name(table), type_="foreignkey")


def downgrade() -> None:
    for table in _INDEX_TABLES:
        with op.batch_alter_table(table, naming_convention=_NAMING) as batch:
            batch.create_foreign_key(
                _fk_name(table),
                "fhir_resource",
                ["resource_type", "resource_id"],
                ["resource_type", "resource_id"],
                ondelete="CASCADE",
            )
    op.create_index(
        "ix_fhir_resource_type_hash", "fhir_resource", ["resource_type", "content_hash"]
    )
