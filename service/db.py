"""Engines and sessions: SQLite tuned for one writer at a time, PostgreSQL pooled."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlmodel import Session

from service.settings import Settings


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, see _sqlite_begin
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


WRITE = {"trialbridge_write": True}


def _sqlite_begin(conn: Any) -> None:
    # Writers BEGIN IMMEDIATE: they take the write lock up front and queue instead of failing to
    # upgrade a read lock; readers BEGIN DEFERRED and, with WAL, never wait for a writer.
    write = conn.get_execution_options().get("trialbridge_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def make_engine(settings: Settings) -> Engine:
    """Create the engine for the configured database (never at import time)."""
    if settings.is_sqlite:
        path = settings.sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            settings.database_url,
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
    )


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work that writes: commit on success, roll back on any error."""
    with Session(engine.execution_options(**WRITE), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
