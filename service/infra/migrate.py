"""Run and check Alembic migrations against an engine, safely from several processes at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text
from sqlmodel import SQLModel

import migrations
import service.infra.tables  # noqa: F401  (tables on the metadata)

_LOCK_KEY = 0x7472_6961_6C62  # "trialb": one advisory lock id for every replica


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@contextmanager
def _migration_connection(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
            conn.commit()
        try:
            yield conn
        finally:
            if conn.dialect.name == "postgresql":
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
                conn.commit()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`; replicas starting together wait for one another."""
    with _migration_connection(engine) as conn:
        command.upgrade(_config(conn), revision)
        conn.commit()


class SchemaNotReady(Exception):  # noqa: N818 (a condition, not an API error)
    """The schema is not at this release's head and this process may not migrate it."""


def prepare(engine: Engine, *, auto_migrate: bool) -> None:
    """Migrate, or with auto-migration off (the release step migrates) check the schema is at
    head, so a command never writes into a schema older than its code."""
    if auto_migrate:
        upgrade(engine)
        return
    current, head = current_revision(engine), head_revision()
    if current != head:
        engine.dispose()  # the caller stops here: leave no connection open
        raise SchemaNotReady(
            f"the database schema is at {current or 'no revision'}, this release needs {head}: "
            "run `trialbridge migrate` (TRIALBRIDGE_AUTO_MIGRATE is false)"
        )


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to `revision` (used by the migration round-trip test)."""
    with _migration_connection(engine) as conn:
        command.downgrade(_config(conn), revision)
        conn.commit()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@cache
def head_revision() -> str | None:
    """The revision this release's code expects: the newest packaged migration (read once)."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def drift(engine: Engine) -> list[object]:
    """Differences between the models and the migrated database; empty when they agree."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": _ours})
        return list(compare_metadata(ctx, SQLModel.metadata))


def _ours(name: str | None, kind: str, _parents: object) -> bool:
    """The job queue's tables (procrastinate's schema, applied by its own step) are not ours."""
    return not (kind == "table" and (name or "").startswith("procrastinate_"))


def revision(engine: Engine, message: str) -> None:
    """Autogenerate a new revision from the models (developer tool)."""
    with _migration_connection(engine) as conn:
        command.revision(_config(conn), message=message, autogenerate=True)
