"""Engines and sessions: SQLite tuned for one writer at a time, PostgreSQL pooled."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlmodel import Session

from service.errors import DatabaseUnavailableError
from service.infra import driver
from service.infra.settings import Settings

log = logging.getLogger(__name__)

# The committing writer checkpoints only when the log has grown this long (pages of 4 KiB, 64 MiB)
# because the background checkpointer could not start it afresh: a safety net, not the normal path.
WAL_AUTOCHECKPOINT_PAGES = 16384
# How long a statement waits for another connection's lock before failing with "locked".
BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, see _sqlite_begin
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    cur.close()


WRITE = {"trialbridge_write": True}


def _sqlite_begin(checkpointer: WalCheckpointer | None, conn: Any) -> None:
    """Writers BEGIN IMMEDIATE, queueing for the write lock instead of failing to upgrade a read
    lock (and not while a restart pass holds them); readers BEGIN DEFERRED and never wait."""
    write = conn.get_execution_options().get("trialbridge_write", False)
    if write and checkpointer is not None:
        with checkpointer.writer_beginning():
            driver.execute(conn, "BEGIN IMMEDIATE")
        return
    driver.execute(conn, "BEGIN IMMEDIATE" if write else "BEGIN")


CHECKPOINT_INTERVAL_SECONDS = 0.25
# A checkpoint that leaves the WAL at least this long (frames of ~4 KiB: 16 MiB) is followed by a
# restart pass, which waits at most RESTART_WAIT_MS for a writer already in its transaction.
RESTART_AFTER_FRAMES = 4096
RESTART_WAIT_MS = 20
# How often the held pass looks whether the writer in its transaction has committed: often, as
# this process's other writers wait meanwhile; each look is one BEGIN IMMEDIATE, a few µs.
RESTART_POLL_SECONDS = 0.0002
# Checkpoints let pass, at most, while a reader keeps the log from starting afresh.
RESTART_MAX_BACKOFF = 32
# When more than this many frames were appended during a PASSIVE checkpoint (a large write), they
# are copied by another one, up to RESTART_CATCH_UP_PASSES times, before writers are held back.
RESTART_HELD_FRAMES = 2048
RESTART_CATCH_UP_PASSES = 2


class WalCheckpointer:
    """Copies the SQLite WAL into the database file on its own thread, off the request path.

    SQLite's automatic checkpoint runs inside the commit of whichever writer crosses the WAL
    size limit, so a large write paid for the copy and its fsync too (about as much as the
    commit itself); a PASSIVE checkpoint after each write does the same work without making
    anyone wait. Durability is unchanged: it is decided at commit, not at checkpoint. At most
    one checkpoint runs per CHECKPOINT_INTERVAL_SECONDS: one after every small write cost a
    quarter of the rate of one-patient transactions (the checkpoint's fsync on every commit).

    Under steady writes a PASSIVE checkpoint never ends with the whole log copied (writers append
    while it copies), and SQLite starts the log again from its beginning only when a writer
    begins on a whole-copied log that no reader's snapshot still uses; so the log grew to the
    safety net's size, and then one writer's commit paid for a checkpoint of all it had not
    copied: 20–50 ms, once every ~100 one-patient writes. So a long log gets a restart pass: the
    database file is synced first, unheld; then this process's writers wait at `BEGIN` (a
    `RESTART` checkpoint would leave them in SQLite's busy handler, which sleeps 1, 2, 5, 10 ms…)
    while the writer already in its transaction finishes (polled, at most RESTART_WAIT_MS) and
    the frames appended meanwhile are copied and synced (5–15 ms of waiting in all on the
    development machine); the next writer starts the log afresh. A pass that cannot copy the
    whole log (a reader's older snapshot) makes the next ones wait longer.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        # Writers of this process pass this gate to BEGIN: closed (`_held`) during a restart
        # pass; `_beginning` counts those past it whose BEGIN IMMEDIATE has not returned yet, so
        # the pass's own probe of the write lock never slips in ahead of one (which would leave
        # that writer in SQLite's busy handler, sleeping 1, 2, 5 ms… while the pass copies).
        self._gate = threading.Condition()
        self._held = False
        self._beginning = 0
        # Checkpoints to let pass before holding writers again: doubled each time a hold could
        # not copy the whole log (a reader's snapshot lies in it, so SQLite cannot start it
        # afresh either), back to 0 once one could.
        self._backoff = 0
        self._skip = 0  # checkpoints still to let pass
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
            conn = sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
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

    @contextmanager
    def writer_beginning(self) -> Iterator[None]:
        """Around a writer's BEGIN IMMEDIATE: not while writers are held, and counted until it
        has returned (the writer then holds the lock, or has failed to)."""
        with self._gate:
            while self._held:
                self._gate.wait()
            self._beginning += 1
        try:
            yield
        finally:
            with self._gate:
                self._beginning -= 1
                if not self._beginning:
                    self._gate.notify_all()

    @contextmanager
    def _writers_held(self, timeout: float) -> Iterator[bool]:
        """Close the gate; yields whether the writers already past it began within `timeout`."""
        with self._gate:
            self._held = True
            began = self._gate.wait_for(lambda: not self._beginning, timeout)
        try:
            yield began
        finally:
            with self._gate:
                self._held = False
                self._gate.notify_all()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            busy, log_frames, _ = _passive(conn)
            if busy:  # another connection's checkpoint is running
                return
            if log_frames < RESTART_AFTER_FRAMES or self._should_wait():
                return
            for _ in range(RESTART_CATCH_UP_PASSES):  # a large write meanwhile: copied unheld
                busy, again, _ = _passive(conn)
                if busy:
                    return
                if again - log_frames <= RESTART_HELD_FRAMES:
                    break
                log_frames = again
            else:
                return  # writes outpace the copy: the writers' own checkpoint has its turn
            whole = self._restart(conn)
            if whole is not None:  # it ran: a reader in the log made it copy less, back off
                self._backoff = 0 if whole else min(max(1, 2 * self._backoff), RESTART_MAX_BACKOFF)
                self._skip = self._backoff
        except (sqlite3.Error, OSError) as exc:  # the writers' own safety net still applies
            log.warning("WAL checkpoint of %s failed: %s", self._path, exc)

    def _should_wait(self) -> bool:
        """Whether to let this checkpoint pass without holding writers (see `_backoff`)."""
        if self._skip > 0:
            self._skip -= 1
            return True
        return False

    def _restart(self, conn: sqlite3.Connection) -> bool | None:
        """Copy the rest of the log while no writer of this process begins: whether all of it
        was copied (a reader's older snapshot keeps frames back), None when it gave up waiting."""
        # The pass ends by syncing the database file: what the PASSIVE checkpoints copied is
        # synced now, before writers are held, so that they wait for the pass's few pages only
        # (20–25 ms a hold otherwise, on this development machine's disk).
        _sync_database_file(self._path)
        deadline = time.monotonic() + RESTART_WAIT_MS / 1000
        with self._writers_held(RESTART_WAIT_MS / 1000) as began:
            if not began:
                return None  # a writer past the gate still waits for the lock (another process)
            # The writer already in its transaction finishes first. Polled, not left to SQLite's
            # busy handler, whose sleeps (1, 2, 5 ms…) would hold the waiting writers longer.
            conn.execute("PRAGMA busy_timeout=0")
            try:
                while not _write_lock_free(conn):
                    if time.monotonic() > deadline:
                        return None  # a long write (or another process's): next time
                    time.sleep(RESTART_POLL_SECONDS)
                busy, log_frames, copied = _passive(conn)
                return not busy and copied == log_frames
            finally:
                if conn.in_transaction:  # the probe's ROLLBACK failed: never keep the lock
                    conn.rollback()
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


# Descriptors of database files opened to fdatasync them, by (device, inode): never closed. Closing
# any descriptor of a file drops every POSIX lock this process holds on it, SQLite's included, and
# another process would then take this one for gone (and delete the WAL it is still writing to).
# SQLite keeps its own descriptors the same way; this is at most one more per database file.
_SYNC_FDS: dict[tuple[int, int], int] = {}
_SYNC_FDS_LOCK = threading.Lock()


def _sync_database_file(path: str) -> None:
    """fdatasync(2) the database file, whichever connection wrote its dirty pages."""
    found = os.stat(path)
    key = (found.st_dev, found.st_ino)
    with _SYNC_FDS_LOCK:
        fd = _SYNC_FDS.get(key)
        if fd is None:
            fd = _SYNC_FDS[key] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    os.fdatasync(fd)


def _passive(conn: sqlite3.Connection) -> tuple[bool, int, int]:
    """A PASSIVE checkpoint: (busy: another checkpoint was running, frames in the log, frames
    copied)."""
    busy, log_frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return bool(busy), int(log_frames), int(copied)


def _write_lock_free(conn: sqlite3.Connection) -> bool:
    """Whether no connection holds the database's write lock (taken and given back at once)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
            raise
        return False
    conn.execute("ROLLBACK")
    return True


_CHECKPOINTERS: weakref.WeakKeyDictionary[Engine, WalCheckpointer] = weakref.WeakKeyDictionary()


def _attach_checkpointer(engine: Engine, path: str) -> WalCheckpointer:
    checkpointer = WalCheckpointer(path)
    _CHECKPOINTERS[engine] = checkpointer
    event.listen(engine, "engine_disposed", lambda _engine: checkpointer.stop())
    return checkpointer


def make_engine(settings: Settings) -> Engine:
    """Create the engine for the configured database (never at import time)."""
    if settings.is_sqlite:
        path = settings.sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # A file's pool hands out the connection used last: SQLite empties a connection's page
        # cache when another one has written since, so the pool's default (its least recently
        # used one) made every one-patient write read ~180 pages back. (An in-memory database
        # has a pool of its own, without the choice.)
        pool: dict[str, Any] = {} if path is None else {"pool_use_lifo": True}
        engine = create_engine(
            settings.database_url,
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
            hide_parameters=True,  # error messages must not quote stored values (patient data)
            **pool,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        checkpointer = None if path is None else _attach_checkpointer(engine, str(path))
        event.listen(engine, "begin", partial(_sqlite_begin, checkpointer))
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


_WRITER = "_trialbridge_writer"


def _writer(engine: Engine) -> Engine:
    """The engine with the write option (`_sqlite_begin`), made once per engine (each copy costs
    ~10 µs) and kept on it: a cycle the collector frees with the engine, where a cache keyed by
    the engine would keep every engine alive (the copy refers to it)."""
    found: Engine | None = getattr(engine, _WRITER, None)
    if found is None:
        found = engine.execution_options(**WRITE)
        setattr(engine, _WRITER, found)
    return found


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work that writes: commit on success, roll back on any error."""
    with Session(_writer(engine), expire_on_commit=False) as session:
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
