"""One-row lookups a request makes on the event loop: a cached answer's check, without a thread.

A cached per-subject answer is served after one indexed lookup of its read token. In a worker
thread that lookup cost more in the hand-off (a lock, a wake-up, the result sent back to the loop)
and in the pool and transaction around it than in the database. SQLite's is a B-tree probe on a
connection of the calling thread's own (never the pool's: a checkout can wait for a connection),
in autocommit (the statement is its own read transaction, so it sees every commit before it), with
`busy_timeout` 0 and `query_only`: if SQLite would wait for a lock, or fails at all, the answer is
"not known here" and the caller does its read in a worker thread as before. PostgreSQL's is a
network round trip, so it is awaited (`PostgresLookups`) on one of a few asynchronous connections
of the loop's own, each serving one lookup at a time; a lookup never queues for one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import sqlite3
import threading
import time
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import pq
from sqlalchemy import Engine

log = logging.getLogger(__name__)
_WOULD_WAIT = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
# A token lookup is one indexed row: longer than this, and the worker thread's path answers.
LOOKUP_TIMEOUT_SECONDS = 1.0
# The server ends a lookup's statement after this, so a connection whose lookup was given up on
# is soon free again (a cancel from the client would hold it while the query drains).
STATEMENT_TIMEOUT_MS = 1000
# After a connection is lost or cannot be made, no new one is tried for this long.
RECONNECT_AFTER_SECONDS = 1.0
# Connections a process keeps for loop lookups. A lookup that finds them all busy is not answered
# here (the worker thread reads) rather than queued behind another's round trip.
MAX_CONNECTIONS = 4
APPLICATION_NAME = "trialbridge-loop-reads"  # how pg_stat_activity shows these connections
# A dead network is noticed by the kernel in seconds, not the default two hours.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2}
_KEEPALIVES_COUNT = 3
_Conn = psycopg.AsyncConnection[Any]


def sqlite_file(engine: Engine) -> str | None:
    """The file of a SQLite engine's database; None for PostgreSQL, memory or a URI name."""
    if engine.dialect.name != "sqlite":
        return None
    name = engine.url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return name


def postgres_connect_kwargs(engine: Engine) -> dict[str, Any] | None:
    """psycopg's connection parameters for a PostgreSQL engine's database; None for SQLite.

    Taken from the dialect as the engine's own connections get them (never a URL rendered back to
    text: a password with a space or a `%`, or an `options` value, would not survive that), plus
    this use's statement timeout, keepalives and application name.
    """
    if engine.dialect.name != "postgresql":
        return None
    _args, params = engine.dialect.create_connect_args(engine.url)
    kwargs = {key: value for key, value in params.items() if key != "context"}
    timeout = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
    kwargs["options"] = f"{kwargs['options']} {timeout}" if kwargs.get("options") else timeout
    kwargs.setdefault("application_name", APPLICATION_NAME)
    kwargs.setdefault("connect_timeout", 2)  # libpq's shortest
    for key, value in {**_KEEPALIVES, "keepalives_count": _KEEPALIVES_COUNT}.items():
        kwargs.setdefault(key, value)
    return kwargs


@functools.lru_cache(maxsize=64)
def _pyformat(sql: str) -> str:
    """`sql` with psycopg's `%s` placeholders for its `?` ones (our constants, never user text)."""
    if "%" in sql or "'" in sql or '"' in sql:
        raise ValueError("a loop lookup's SQL has no literals, quoted names or % signs")
    return sql.replace("?", "%s")


class PostgresLookups:
    """PostgreSQL lookups awaited on one event loop, each on a connection it has to itself.

    Up to MAX_CONNECTIONS autocommit connections (each statement sees every commit before it; a
    read never waits for a writer's row lock), opened on demand. A lookup takes an idle one, or
    opens one, or waits its turn for one; all within LOOKUP_TIMEOUT_SECONDS. The query runs in a
    task of its own, so a lookup past its bound is given up on, never cancelled (a cancel holds
    the connection while the query drains): the task gives the connection back when the server
    has answered (the statement timeout ends it within STATEMENT_TIMEOUT_MS). A connection is kept
    only if it is healthy and idle after its lookup, whatever the error was; a lost connection or
    a failed connect sends the waiting lookups to the thread path and stops new connections for
    RECONNECT_AFTER_SECONDS. While every connection is held by a query already given up on (a
    server answering nothing in time), a lookup goes to the thread path at once instead of
    waiting out its bound for a turn.
    """

    def __init__(self, connect_kwargs: dict[str, Any]) -> None:
        self._kwargs = connect_kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._waiting: collections.deque[asyncio.Future[_Conn | None]] = collections.deque()
        self._open = 0  # idle, in use, or being opened
        self._tasks: set[asyncio.Task[Any]] = set()
        self._overdue: set[asyncio.Task[Any]] = set()  # given up on, query still running
        self._retry_at = 0.0
        self._closing = False  # aclose has begun: connections are closed, not kept
        self._generation = 0  # bumped by _forget: a task of an earlier one counts nothing here

    @property
    def connections(self) -> int:
        """Connections open or being opened (for tests and capacity checks)."""
        return self._open

    async def lookup(self, sql: str, params: tuple[Any, ...]) -> Any | None:
        """The first column of the one row `sql` (with `?` placeholders) finds; None when there
        is none, or when it is not known here (an error, no connection, the time bound)."""
        if sql.count("?") != len(params):
            raise ValueError("a loop lookup's parameters do not match its placeholders")
        query = _pyformat(sql)
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._forget(loop)
        if self._closing:
            return None
        deadline = loop.time() + LOOKUP_TIMEOUT_SECONDS
        if self._idle:
            conn: _Conn | None = self._idle.pop()
        elif self._open < MAX_CONNECTIONS and time.monotonic() >= self._retry_at:
            conn = None  # the task opens one
            self._open += 1
        elif self._open and len(self._overdue) >= self._open:
            log.debug("every event-loop connection is held by an overdue query: thread path")
            return None
        elif self._open:
            try:
                conn = await self._turn(deadline)
            except TimeoutError:
                conn = None
            if conn is None:
                log.debug("no event-loop connection came free: the worker thread reads")
                return None
        else:  # none open, and not trying again yet
            return None
        task = loop.create_task(self._run(conn, query, params, self._generation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            done, _pending = await asyncio.wait((task,), timeout=max(deadline - loop.time(), 0))
        finally:
            if not task.done():  # past the bound, or the request was cancelled: given up on
                self._overdue.add(task)
                task.add_done_callback(self._overdue.discard)
        if not done:
            log.info("event-loop lookup not answered in time: the worker thread reads")
            return None
        rows: list[tuple[Any, ...]] | None = task.result()
        return rows[0][0] if rows is not None and len(rows) == 1 else None

    async def _turn(self, deadline: float) -> _Conn | None:
        """Wait for a connection another lookup gives back (TimeoutError past the deadline);
        None when one was lost instead (the others are likely going too)."""
        turn: asyncio.Future[_Conn | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            async with asyncio.timeout_at(deadline):
                return await turn
        except BaseException:  # the deadline, or the request cancelled
            if turn.done() and not turn.cancelled() and (handed := turn.result()) is not None:
                self._release(handed)  # handed over just as the wait ended: pass it on
            turn.cancel()
            raise

    async def _run(
        self, conn: _Conn | None, query: str, params: tuple[Any, ...], generation: int
    ) -> Any:
        """Open a connection if given none, run the query, and give the connection back."""
        try:
            if conn is None:
                conn = await psycopg.AsyncConnection.connect(autocommit=True, **self._kwargs)
            cursor = await conn.execute(query, params)
            return await cursor.fetchall()
        except Exception as exc:  # psycopg's, the network's, or a parameter it cannot encode
            # the class and SQLSTATE only: a message can quote connection parameters
            log.info(
                "event-loop lookup not answered (%s, SQLSTATE %s): the worker thread reads",
                type(exc).__name__,
                getattr(exc, "sqlstate", None),
            )
            return None
        finally:
            await self._give_back(conn, generation)

    async def _give_back(self, conn: _Conn | None, generation: int) -> None:
        """Keep a connection that can serve the next lookup; close any other (all of them once
        aclose has begun)."""
        ours = generation == self._generation and asyncio.get_running_loop() is self._loop
        if (
            ours
            and not self._closing
            and conn is not None
            and not conn.closed
            and not conn.broken
            and conn.info.transaction_status == pq.TransactionStatus.IDLE
        ):
            self._release(conn)
            return
        if ours:
            self._open -= 1
            self._retry_at = time.monotonic() + RECONNECT_AFTER_SECONDS
            self._turn_away()  # this server or its network is in trouble
        if conn is not None:
            await _close(conn)

    def _turn_away(self) -> None:
        """Send every lookup waiting its turn to the thread path."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)

    def _release(self, conn: _Conn) -> None:
        """Hand a connection to the first lookup still waiting, or keep it idle."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(conn)
                return
        self._idle.append(conn)

    def _forget(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start afresh on a new loop: connections made on another (finished) one are closed
        without it."""
        for conn in self._idle:
            conn.pgconn.finish()
        self._idle, self._open, self._tasks, self._loop = [], 0, set(), loop
        self._overdue = set()
        self._waiting.clear()
        self._closing = False
        self._generation += 1

    async def settled(self) -> None:
        """Wait for the lookups still running, given up on or not (each ends by its statement
        timeout, or its connection's keepalives)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=STATEMENT_TIMEOUT_MS / 1000 + 1)

    async def aclose(self) -> None:
        """Close the connections (at shutdown, on the loop that used them), after the lookups
        still running have ended; no lookup on this loop opens or keeps one afterwards."""
        if self._loop is not asyncio.get_running_loop():
            self._forget(asyncio.get_running_loop())
            return
        self._closing = True
        self._turn_away()
        # each running lookup closes its connection as it ends (a waiter handed one just
        # before may have started one more): wait for them all, within the statement timeout
        deadline = asyncio.get_running_loop().time() + STATEMENT_TIMEOUT_MS / 1000 + 1
        while self._tasks:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=left)
        idle, self._idle = self._idle, []
        for conn in idle:
            self._open -= 1
            await _close(conn)


async def _close(conn: psycopg.AsyncConnection[Any]) -> None:
    """Close a connection that may already be broken (nothing is left to do then)."""
    with contextlib.suppress(psycopg.Error, OSError):
        await conn.close()


class LoopReads:
    """Lookups answered on the event loop, or not at all (None): the caller then uses a thread."""

    def __init__(self, engine: Engine) -> None:
        self._path = sqlite_file(engine)
        self._local = threading.local()  # each thread its own connection (sqlite3 requires it)
        kwargs = postgres_connect_kwargs(engine)
        self.postgres = None if kwargs is None else PostgresLookups(kwargs)

    @property
    def enabled(self) -> bool:
        """Whether lookups can be answered here at all (SQLite on a file, or PostgreSQL)."""
        return self._path is not None or self.postgres is not None

    async def lookup(self, sql: str, params: tuple[Any, ...]) -> Any | None:
        """`scalar` of `sql` (written with `?` placeholders) on whichever database this is."""
        if self._path is not None:
            return self.scalar(sql, params)
        if self.postgres is None:
            return None
        return await self.postgres.lookup(sql, params)

    async def aclose(self) -> None:
        """Close the loop's PostgreSQL connections (at shutdown, on the loop that used them)."""
        if self.postgres is not None:
            await self.postgres.aclose()

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
