"""One-row lookups a request makes on the event loop: a cached answer's check, without a thread.

A cached per-subject answer is served after one indexed lookup of its read token. In a worker
thread that lookup cost more in the hand-off (a lock, a wake-up, the result sent back to the loop)
and in the pool and transaction around it than in the database. SQLite's is a B-tree probe on a
connection of the calling thread's own (never the pool's: a checkout can wait for a connection),
in autocommit (the statement is its own read transaction, so it sees every commit before it), with
`busy_timeout` 0 and `query_only`: if SQLite would wait for a lock, or fails at all, the answer is
"not known here" and the caller does its read in a worker thread as before. PostgreSQL's is a
network round trip, so it is awaited on an asynchronous connection of the loop's own (autocommit:
each statement sees every commit before it; a read never waits for a writer's lock), bounded by
LOOKUP_TIMEOUT_SECONDS; a failure or a timeout closes it and answers "not known here", and after
one the loop does not try again for RECONNECT_AFTER_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from typing import Any
from urllib.parse import quote

import psycopg
from sqlalchemy import Engine

log = logging.getLogger(__name__)
_WOULD_WAIT = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
# A token lookup is one indexed row: longer than this, and the worker thread's path answers.
LOOKUP_TIMEOUT_SECONDS = 1.0
RECONNECT_AFTER_SECONDS = 1.0


def sqlite_file(engine: Engine) -> str | None:
    """The file of a SQLite engine's database; None for PostgreSQL, memory or a URI name."""
    if engine.dialect.name != "sqlite":
        return None
    name = engine.url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return name


def postgres_conninfo(engine: Engine) -> str | None:
    """libpq's connection string for a PostgreSQL engine's database; None for SQLite."""
    if engine.dialect.name != "postgresql":
        return None
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class LoopReads:
    """Lookups answered on the event loop, or not at all (None): the caller then uses a thread."""

    def __init__(self, engine: Engine) -> None:
        self._path = sqlite_file(engine)
        self._local = threading.local()  # each thread its own connection (sqlite3 requires it)
        self._conninfo = postgres_conninfo(engine)
        self._pg: psycopg.AsyncConnection[Any] | None = None
        self._pg_loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Lock | None = None
        self._retry_at = 0.0

    @property
    def enabled(self) -> bool:
        """Whether lookups can be answered here at all (SQLite on a file, or PostgreSQL)."""
        return self._path is not None or self._conninfo is not None

    async def lookup(self, sql: str, params: tuple[Any, ...]) -> Any | None:
        """`scalar` of `sql` (written with `?` placeholders) on whichever database this is."""
        if self._path is not None:
            return self.scalar(sql, params)
        if self._conninfo is None:
            return None
        try:
            conn = await self._postgres()
            if conn is None:
                return None
            async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
                cursor = await conn.execute(sql.replace("?", "%s"), params)
                rows = await cursor.fetchall()
        except (psycopg.Error, OSError, TimeoutError) as exc:
            log.info(
                "event-loop lookup not answered (%s): the worker thread reads", type(exc).__name__
            )
            await self._drop_postgres()
            return None
        return rows[0][0] if len(rows) == 1 else None

    async def _postgres(self) -> psycopg.AsyncConnection[Any] | None:
        """The loop's connection, opened on first use (and again after a failure has cooled)."""
        loop = asyncio.get_running_loop()
        if self._pg is not None and self._pg_loop is loop and not self._pg.closed:
            return self._pg
        if self._connecting is None or self._pg_loop is not loop:
            await self._drop_postgres()
            self._connecting, self._pg_loop = asyncio.Lock(), loop
        async with self._connecting:  # one connect at a time; the others wait for it
            if self._pg is not None and not self._pg.closed:
                return self._pg
            if time.monotonic() < self._retry_at:
                return None
            assert self._conninfo is not None
            self._retry_at = time.monotonic() + RECONNECT_AFTER_SECONDS
            async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
                self._pg = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            self._retry_at = 0.0
            return self._pg

    async def _drop_postgres(self) -> None:
        conn, self._pg = self._pg, None
        if conn is None or conn.closed:
            return
        try:
            if self._pg_loop is asyncio.get_running_loop():
                await conn.close()
            else:  # made on another (finished) loop: close the socket without it
                conn.pgconn.finish()
        except (psycopg.Error, OSError):
            pass
        self._retry_at = time.monotonic() + RECONNECT_AFTER_SECONDS

    async def aclose(self) -> None:
        """Close the loop's PostgreSQL connection (at shutdown, on the loop that used it)."""
        await self._drop_postgres()

    def _connection(self) -> sqlite3.Connection | None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None or self._path is None:
            return conn
        # mode=rw: a missing file is an error, never a new empty database; timeout=0: a lock is
        # never waited for (SQLITE_BUSY at once); autocommit: each statement its own transaction
        conn = sqlite3.connect(
            f"file:{quote(self._path)}?mode=rw", uri=True, timeout=0, isolation_level=None
        )
        conn.execute("PRAGMA query_only=ON")
        self._local.conn = conn
        return conn

    def scalar(self, sql: str, params: tuple[Any, ...]) -> Any | None:
        """SQLite: the first column of the one row `sql` finds; None when there is none, or when
        it is not known here (PostgreSQL, a lock SQLite would wait for, any error)."""
        try:
            conn = self._connection()
            if conn is None:
                return None
            rows = conn.execute(sql, params).fetchall()  # to the end: the statement is reset
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) not in _WOULD_WAIT:
                log.info("event-loop lookup not answered (%s): the worker thread reads", exc)
                self.close()  # a file replaced or removed: open it again next time
            return None
        return rows[0][0] if len(rows) == 1 else None

    def close(self) -> None:
        """Close the calling thread's connection (it is opened again on the next lookup)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()
