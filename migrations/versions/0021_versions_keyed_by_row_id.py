"""Versions are keyed by their head's row id: `(rid, version_id)` instead of `(type, id, version)`.

The version primary key was the last B-tree but the head's own keyed by client-chosen ids: every
resource created landed on a random page of it (a one-patient transaction: 21 of the 91.5 pages
it wrote to the SQLite log). Keyed by the head's sequential `rid` (0020), a new resource's first
version appends at the key's end. Versions are read through their head, found by type and id as
before; the key still refuses a second writer of the same version number.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "fhir_resource_version"
_PKEY = "fhir_resource_version_pkey"  # PostgreSQL's name for it since 0001
_OLD_KEY = ("resource_type", "resource_id", "version_id")
_NEW_KEY = ("rid", "version_id")
_COLUMNS = (
    "resource_type",
    "resource_id",
    "version_id",
    "last_updated",
    "content_hash",
    "deleted",
    "content",
    "source",
    "request_id",
    "provenance_id",
)
# SQLite cannot change a primary key: the table is copied into one with the other key
_SQLITE_TABLE = """CREATE TABLE {name} (
	resource_type VARCHAR(64) NOT NULL,
	resource_id VARCHAR(64) NOT NULL,
	version_id INTEGER NOT NULL,
	last_updated DATETIME NOT NULL,
	content_hash VARCHAR(64) NOT NULL,
	deleted BOOLEAN NOT NULL,
	content TEXT,
	source VARCHAR(200) NOT NULL,
	request_id VARCHAR(36) NOT NULL,
	provenance_id VARCHAR(64),{rid}
	PRIMARY KEY ({key})
)"""


def _sqlite_copy(key: Sequence[str], with_rid: bool) -> None:
    columns = ", ".join(_COLUMNS)
    op.execute(
        _SQLITE_TABLE.format(
            name=f"_{_TABLE}_new",
            rid="\n\trid INTEGER NOT NULL," if with_rid else "",
            key=", ".join(key),
        )
    )
    if with_rid:  # heads in `rid` order (their unique index), each one's versions by the old key
        selected = ", ".join(f"v.{c}" for c in _COLUMNS)
        op.execute(
            f"INSERT INTO _{_TABLE}_new ({columns}, rid) SELECT {selected}, h.rid "
            f"FROM fhir_resource h JOIN {_TABLE} v ON v.resource_type = h.resource_type "
            "AND v.resource_id = h.resource_id ORDER BY h.rid, v.version_id"
        )
    else:
        op.execute(
            f"INSERT INTO _{_TABLE}_new ({columns}) SELECT {columns} FROM {_TABLE} "
            "ORDER BY resource_type, resource_id, version_id"
        )
    op.drop_index("ix_fhir_resource_version_request_id", table_name=_TABLE)
    op.execute(f"DROP TABLE {_TABLE}")
    op.execute(f"ALTER TABLE _{_TABLE}_new RENAME TO {_TABLE}")
    op.create_index("ix_fhir_resource_version_request_id", _TABLE, ["request_id"])


def upgrade() -> None:
    # (0020 has checked that every version has its head, before changing anything)
    if op.get_bind().dialect.name != "postgresql":
        _sqlite_copy(_NEW_KEY, with_rid=True)
        return
    op.add_column(_TABLE, sa.Column("rid", sa.BigInteger(), nullable=True))
    op.execute(
        f"UPDATE {_TABLE} v SET rid = h.rid FROM fhir_resource h "
        "WHERE h.resource_type = v.resource_type AND h.resource_id = v.resource_id"
    )
    op.alter_column(_TABLE, "rid", existing_type=sa.BigInteger(), nullable=False)
    op.drop_constraint(_PKEY, _TABLE, type_="primary")
    op.create_primary_key(_PKEY, _TABLE, list(_NEW_KEY))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        _sqlite_copy(_OLD_KEY, with_rid=False)
        return
    op.drop_constraint(_PKEY, _TABLE, type_="primary")
    op.create_primary_key(_PKEY, _TABLE, list(_OLD_KEY))
    op.drop_column(_TABLE, "rid")
