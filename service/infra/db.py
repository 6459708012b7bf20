"""Engines and sessions: SQLite tuned for one writer at a time, PostgreSQL pooled."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlmodel import Session

from service.errors import DatabaseUnavailableError
from service.infra.settings import Settings

log = logging.getLogger(__name__)

# The committing writer checkpoints only when the background checkpointer has fallen this far
# behind (pages of 4 KiB): a safety net, not the normal path.
WAL_AUTOCHECKPOINT_PAGES = 16384


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, see _sqlite_begin
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    cur.close()


WRITE = {"trialbridge_write": True}


def _sqlite_begin(conn: Any) -> None:
    # Writers BEGIN IMMEDIATE: they take the write lock up front and queue instead of failing to
    # upgrade a read lock; readers BEGIN DEFERRED and, with WAL, never wait for a writer.
    write = conn.get_execution_options().get("trialbridge_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


CHECKPOINT_INTERVAL_SECONDS = 0.25


class WalCheckpointer:
    """Copies the SQLite WAL into the database file on its own thread, off the request path.

    SQLite's automatic checkpoint runs inside the commit of whichever writer crosses the WAL
    size limit, so a large write paid for the copy and its fsync too (about as much as the
    commit itself); a PASSIVE checkpoint after each write does the same work without making
    anyone wait. Durability is unchanged: it is decided at commit, not at checkpoint. At most
    one checkpoint runs per CHECKPOINT_INTERVAL_SECONDS: one after every small write cost a
    quarter of the rate of one-patient transactions (the checkpoint's fsync on every commit).
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """A write committed: checkpoint soon (the thread starts with the first write)."""
        with self._lock:
            if self._thread is None:
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop,), name="sqlite-checkpoint", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        """Finish the thread (the engine is being disposed)."""
        with self._lock:
            thread, stop = self._thread, self._stop
            self._thread = self._stop = None
        if thread is not None and stop is not None:
            stop.set()
            self._wake.set()
            thread.join(timeout=10)

    def _run(self, stop: threading.Event) -> None:
        try:
            conn = sqlite3.connect(self._path, timeout=30, check_same_thread=False)
        except sqlite3.Error as exc:
            log.warning("WAL checkpointer not started for %s: %s", self._path, exc)
            return
        try:
            while not stop.is_set():
                self._wake.wait()
                self._wake.clear()
                if not stop.is_set():
                    self._checkpoint(conn)
                    stop.wait(CHECKPOINT_INTERVAL_SECONDS)  # later writes share the next one
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the writers' own safety-net checkpoint still applies
            log.warning("WAL checkpoint of %s failed: %s", self._path, exc)


_CHECKPOINTERS: weakref.WeakKeyDictionary[Engine, WalCheckpointer] = weakref.WeakKeyDictionary()


def _attach_checkpointer(engine: Engine, path: str) -> None:
    checkpointer = WalCheckpointer(path)
    _CHECKPOINTERS[engine] = checkpointer
    event.listen(engine, "engine_disposed", lambda _engine: checkpointer.stop())


def make_engine(settings: Settings) -> Engine:
    """Create the engine for the configured database (never at import time)."""
    if settings.is_sqlite:
        path = settings.sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            settings.database_url,
            connect_args={"check_same_thread": False, "timeout": 30},
            hide_parameters=True,  # error messages must not quote stored values (patient data)
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        if path is not None:
            _attach_checkpointer(engine, str(path))
        return engine
    engine = create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        hide_parameters=True,  # error messages must not quote stored values (patient data)
    )
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


# A pooled connection idle longer than this is pinged before use (a restarted server or a dropped
# connection is then replaced, not handed to a request); one used just now is not.
PING_AFTER_IDLE_SECONDS = 1.0
_CHECKED_IN = "trialbridge_checked_in"


def _note_checkin(_dbapi_conn: Any, record: Any) -> None:
    record.info[_CHECKED_IN] = time.monotonic()


def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """`pool_pre_ping`, except for a connection returned within the last second: under steady
    load the ping was one round trip in every ~15 of a small write, and a connection that just
    served a request is as alive as a ping would show. A failed ping makes the pool connect again.
    """
    checked_in = record.info.get(_CHECKED_IN)
    if checked_in is not None and time.monotonic() - checked_in < PING_AFTER_IDLE_SECONDS:
        return
    try:
        with dbapi_conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        dbapi_conn.rollback()  # idle again, as the pool hands connections out
    except Exception as exc:  # any failure: this connection is not to be used
        raise DisconnectionError("the pooled connection did not answer a ping") from exc


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
    checkpointer = _CHECKPOINTERS.get(engine)
    if checkpointer is not None:
        checkpointer.poke()


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    """A read-only session; an unreachable database is `DatabaseUnavailableError` (a 503)."""
    try:
        with Session(engine) as session:
            yield session
    except OperationalError as exc:
        raise DatabaseUnavailableError("read") from exc


@contextmanager
def reading_rows(engine: Engine) -> Iterator[Connection]:
    """`reading` without an ORM session, for a hot single-row lookup (a per-request check)."""
    try:
        with engine.connect() as conn:
            yield conn
    except OperationalError as exc:
        raise DatabaseUnavailableError("read") from exc


@contextmanager
def writing(engine: Engine) -> Iterator[Session]:
    """`session_scope`, with an unreachable database as `DatabaseUnavailableError` (a 503)."""
    try:
        with session_scope(engine) as session:
            yield session
    except OperationalError as exc:
        raise DatabaseUnavailableError("write") from exc
