"""One-row SQLite lookups a request makes on the event loop, never waiting: a cached answer's check.

A cached per-subject answer is served after one indexed lookup of its read token. In a worker
thread that lookup cost more in the hand-off (a lock, a wake-up, the result sent back to the loop)
and in the pool and transaction around it than in SQLite. Here it is a B-tree probe on a
connection of the calling thread's own (never the pool's: a checkout can wait for a connection),
in autocommit (the statement is its own read transaction, so it sees every commit before it), with
`busy_timeout` 0 and `query_only`: if SQLite would wait for a lock, or fails at all, the answer is
"not known here" and the caller does its read in a worker thread as before. PostgreSQL's lookup is
a network round trip, which must not hold up the loop: there the answer is always "not known here".
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine

log = logging.getLogger(__name__)
_WOULD_WAIT = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def sqlite_file(engine: Engine) -> str | None:
    """The file of a SQLite engine's database; None for PostgreSQL, memory or a URI name."""
    if engine.dialect.name != "sqlite":
        return None
    name = engine.url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return name


class LoopReads:
    """Lookups answered on the calling thread without waiting, or not at all (None)."""

    def __init__(self, engine: Engine) -> None:
        self._path = sqlite_file(engine)
        self._local = threading.local()  # each thread its own connection (sqlite3 requires it)

    @property
    def enabled(self) -> bool:
        """Whether lookups can be answered here at all (SQLite on a file)."""
        return self._path is not None

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
        """The first column of the one row `sql` finds; None when there is none, or when it is
        not known here (PostgreSQL, a lock SQLite would wait for, any error)."""
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
