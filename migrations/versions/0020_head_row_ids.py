"""Heads get a sequential row id, and identifier and reference rows are found by it.

An update replaces its resource's identifier and reference rows, found through an index on the
owner's `(resource_type, resource_id)`: client-chosen ids, so every resource written landed on a
random page of that index (a one-patient transaction: 25 of the 112 pages it wrote to the SQLite
log). Each head now has `rid`, handed out in order (a sequence on PostgreSQL, the largest plus one
under SQLite's write lock), and the index rows carry their owner's as `owner_rid`: the owner index
grows at its end. Searches still read the rows' `(resource_type, resource_id)`, unchanged.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX_TABLES = ("fhir_identifier", "fhir_reference")
SEQUENCE = "fhir_resource_rid_seq"


def _row_id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # 0021 keys versions by their head's row id: a version without a head (only a store changed
    # outside trialbridge has one; heads are never deleted) is refused here, before anything
    # changes (SQLite commits each revision on its own)
    orphans = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT count(*) FROM fhir_resource_version v WHERE NOT EXISTS (SELECT 1 FROM "
                "fhir_resource h WHERE h.resource_type = v.resource_type "
                "AND h.resource_id = v.resource_id)"
            )
        )
        .scalar_one()
    )
    if orphans:
        raise RuntimeError(
            f"{orphans} resource versions have no current head: the store was changed outside "
            "trialbridge; restore it from a backup before upgrading"
        )
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column("fhir_resource", sa.Column("rid", _row_id(), nullable=True))
    if postgres:
        op.execute(f"CREATE SEQUENCE {SEQUENCE} AS BIGINT")
        op.execute(f"UPDATE fhir_resource SET rid = nextval('{SEQUENCE}')")
    else:
        op.execute("UPDATE fhir_resource SET rid = rowid")
    with op.batch_alter_table("fhir_resource") as batch:
        batch.alter_column("rid", existing_type=_row_id(), nullable=False)
    op.create_index("uq_fhir_resource_rid", "fhir_resource", ["rid"], unique=True)
    for table in _INDEX_TABLES:
        op.add_column(table, sa.Column("owner_rid", _row_id(), nullable=True))
        op.execute(
            f"UPDATE {table} SET owner_rid = (SELECT h.rid FROM fhir_resource h "
            f"WHERE h.resource_type = {table}.resource_type "
            f"AND h.resource_id = {table}.resource_id)"
        )
        # a search row whose head is missing (a store changed outside trialbridge) never matched
        # anything (a search returns heads) and nothing could replace it: it is dropped
        op.execute(f"DELETE FROM {table} WHERE owner_rid IS NULL")
        with op.batch_alter_table(table) as batch:
            batch.alter_column("owner_rid", existing_type=_row_id(), nullable=False)
        op.create_index(f"ix_{table}_owner_rid", table, ["owner_rid"])
        op.drop_index(f"ix_{table}_owner", table_name=table)


def downgrade() -> None:
    for table in _INDEX_TABLES:
        op.create_index(f"ix_{table}_owner", table, ["resource_type", "resource_id"])
        op.drop_index(f"ix_{table}_owner_rid", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("owner_rid")
    op.drop_index("uq_fhir_resource_rid", table_name="fhir_resource")
    with op.batch_alter_table("fhir_resource") as batch:
        batch.drop_column("rid")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP SEQUENCE {SEQUENCE}")
