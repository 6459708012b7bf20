"""Trial event ids are never reused, so "new rows" is visible from the ids (outcome caches).

SQLite hands out max(rowid) + 1, so deleting the newest events and deriving them again reused their
ids; AUTOINCREMENT makes ids strictly increase. PostgreSQL sequences never reuse ids: nothing to do.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _sqlite_autoincrement(enabled: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "trial_event", recreate="always", table_kwargs={"sqlite_autoincrement": enabled}
    ):
        pass


def upgrade() -> None:
    _sqlite_autoincrement(True)


def downgrade() -> None:
    _sqlite_autoincrement(False)
