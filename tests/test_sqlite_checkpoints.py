"""SQLite under steady writes (service/infra/db.py): the WAL starts again from its beginning, a
writer never waits long for a checkpoint, and writes reuse the connection whose cache is warm."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from service.infra import db
from service.infra.settings import Settings

ROW = "x" * 3000  # about one page a row: a transaction of a few rows appends a few frames


def _engine(path: Path) -> Engine:
    engine = db.make_engine(Settings(database_url=f"sqlite:///{path}"))
    with db.session_scope(engine) as session:
        session.execute(text("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, body TEXT)"))
    return engine


def test_steady_writes_restart_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer with no pause between transactions: the log file stops growing.

    A PASSIVE checkpoint alone never finds the log whole copied while a writer appends, so SQLite
    never started it afresh and the file grew until the commit-time safety net (here far away)."""
    monkeypatch.setattr(db, "RESTART_AFTER_FRAMES", 64)
    monkeypatch.setattr(db, "CHECKPOINT_INTERVAL_SECONDS", 0.02)
    path = tmp_path / "steady.db"
    engine = _engine(path)
    written = 0
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            with db.session_scope(engine) as session:
                for _ in range(4):
                    session.execute(text("INSERT INTO t (body) VALUES (:b)"), {"b": ROW})
            written += 4
        wal_pages = Path(f"{path}-wal").stat().st_size // 4096  # before closing removes it
    finally:
        engine.dispose()
    # every row put at least one page in the log; the file holds a small part of them
    assert written > 2000
    assert wal_pages < written / 4, (wal_pages, written)


def test_a_restart_pass_gives_up_on_a_long_write(tmp_path: Path) -> None:
    """A write transaction held open elsewhere: the pass waits at most RESTART_WAIT_MS, then
    lets this process's writers begin again (they would otherwise wait for that other write)."""
    path = tmp_path / "held.db"
    engine = _engine(path)
    checkpointer = db.WalCheckpointer(str(path))
    other = sqlite3.connect(path, isolation_level=None)
    mine = sqlite3.connect(path, timeout=db.BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t (body) VALUES ('held')")
        ran: list[bool | None] = []
        started = time.monotonic()
        attempt = threading.Thread(target=lambda: ran.append(checkpointer._restart(mine)))
        attempt.start()
        attempt.join(5.0)
        waited = time.monotonic() - started
        assert ran == [None]  # it gave up
        assert db.RESTART_WAIT_MS / 1000 <= waited < 5.0
        # the gate is open again: a writer of this process would begin at once
        free = threading.Event()

        def begin() -> None:
            with checkpointer.writer_beginning():
                free.set()

        threading.Thread(target=begin, daemon=True).start()
        assert free.wait(1.0)
        # its connection holds no lock and waits for others as every connection does
        assert not mine.in_transaction
        assert mine.execute("PRAGMA busy_timeout").fetchone() == (db.BUSY_TIMEOUT_MS,)
        other.execute("COMMIT")
    finally:
        other.close()
        mine.close()
        engine.dispose()


def test_in_memory_databases_still_work() -> None:
    """An in-memory SQLite database has a pool of its own (no LIFO choice) and no checkpointer."""
    engine = db.make_engine(Settings(database_url="sqlite:///:memory:"))
    try:
        with db.session_scope(engine) as session:
            session.execute(text("CREATE TABLE t (n INTEGER)"))
            session.execute(text("INSERT INTO t VALUES (1)"))
        with db.reading(engine) as session:
            assert session.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
        assert engine not in db._CHECKPOINTERS
    finally:
        engine.dispose()


def test_writers_wait_at_begin_while_a_restart_pass_runs(tmp_path: Path) -> None:
    """The gate holds back a writer of this process at BEGIN, and lets it go afterwards."""
    path = tmp_path / "gate.db"
    engine = _engine(path)
    checkpointer = db._CHECKPOINTERS[engine]
    began = threading.Event()

    def write() -> None:
        with db.session_scope(engine) as session:
            session.execute(text("INSERT INTO t (body) VALUES ('w')"))
        began.set()

    try:
        with checkpointer._writers_held(1.0) as began_before:
            assert began_before  # no writer was past the gate
            thread = threading.Thread(target=write, daemon=True)
            thread.start()
            assert not began.wait(0.3)  # held at BEGIN
        assert began.wait(5.0)
        thread.join(5.0)
        assert not thread.is_alive()
        with db.reading(engine) as session:
            assert session.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
    finally:
        engine.dispose()


def test_a_restart_pass_does_not_probe_ahead_of_a_writer_past_the_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer of this process that passed the gate before it closed begins first: the pass
    takes the write lock to probe only once that writer's BEGIN has returned (had the probe
    come first, the writer would sleep in SQLite's busy handler while the pass copies), and it
    gives up, gate open again, if that writer's BEGIN does not return within RESTART_WAIT_MS."""
    path = tmp_path / "ahead.db"
    engine = _engine(path)
    checkpointer = db.WalCheckpointer(str(path))
    mine = sqlite3.connect(path, timeout=db.BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    probes: list[int] = []
    probe = db._write_lock_free

    def counted(conn: sqlite3.Connection) -> bool:
        probes.append(1)
        return probe(conn)

    monkeypatch.setattr(db, "_write_lock_free", counted)
    try:
        monkeypatch.setattr(db, "RESTART_WAIT_MS", 5000)
        ran: list[bool | None] = []
        with checkpointer.writer_beginning():  # past the gate, its BEGIN not returned yet
            attempt = threading.Thread(target=lambda: ran.append(checkpointer._restart(mine)))
            attempt.start()
            time.sleep(0.2)
            assert probes == []
        attempt.join(5.0)
        assert ran == [True]
        assert probes == [1]

        monkeypatch.setattr(db, "RESTART_WAIT_MS", 50)
        with checkpointer.writer_beginning():  # its BEGIN never returns while the pass waits
            checkpointer_ran = checkpointer._restart(mine)
        assert checkpointer_ran is None
        assert probes == [1]
        began = threading.Event()

        def begin() -> None:  # the gate is open again
            with checkpointer.writer_beginning():
                began.set()

        threading.Thread(target=begin, daemon=True).start()
        assert began.wait(1.0)
    finally:
        mine.close()
        engine.dispose()


def test_writes_reuse_the_connection_used_last(tmp_path: Path) -> None:
    """SQLite drops a connection's page cache when another connection wrote since: the pool hands
    out the one used last (its cache still valid), not the least recently used one."""
    engine = _engine(tmp_path / "lifo.db")
    try:
        with engine.connect() as first, engine.connect() as second:  # two in the pool
            used_last = first.connection.dbapi_connection  # returned after `second`
            assert second.connection.dbapi_connection is not used_last
        seen = []
        for _ in range(4):
            with db.session_scope(engine) as session:
                session.execute(text("INSERT INTO t (body) VALUES ('w')"))
                seen.append(session.connection().connection.dbapi_connection)
        assert all(conn is used_last for conn in seen)
    finally:
        engine.dispose()


def test_a_reader_in_the_log_makes_the_pass_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader whose snapshot lies in the log keeps SQLite from starting it afresh: holding
    writers for it every checkpoint would buy nothing, so the pass waits longer each time."""
    monkeypatch.setattr(db, "RESTART_AFTER_FRAMES", 64)
    monkeypatch.setattr(db, "CHECKPOINT_INTERVAL_SECONDS", 0.01)
    checkpoints: list[int] = []
    holds: list[int] = []
    checkpoint, restart = db.WalCheckpointer._checkpoint, db.WalCheckpointer._restart

    def counted_checkpoint(self: db.WalCheckpointer, conn: sqlite3.Connection) -> None:
        checkpoints.append(1)
        checkpoint(self, conn)

    def counted_restart(self: db.WalCheckpointer, conn: sqlite3.Connection) -> bool | None:
        holds.append(1)
        return restart(self, conn)

    monkeypatch.setattr(db.WalCheckpointer, "_checkpoint", counted_checkpoint)
    monkeypatch.setattr(db.WalCheckpointer, "_restart", counted_restart)
    path = tmp_path / "reader.db"
    engine = _engine(path)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        with db.session_scope(engine) as session:  # something in the log for the reader to see
            session.execute(text("INSERT INTO t (body) VALUES (:b)"), {"b": ROW})
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            with db.session_scope(engine) as session:
                for _ in range(4):
                    session.execute(text("INSERT INTO t (body) VALUES (:b)"), {"b": ROW})
        reader.execute("COMMIT")
    finally:
        reader.close()
        engine.dispose()
    assert len(checkpoints) > 40
    # doubling waits (1, 2, 4, …): a handful of holds, not one per checkpoint
    assert len(holds) <= len(checkpoints) / 4, (len(holds), len(checkpoints))


_COUNT = (
    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print(c.execute('{}').fetchone()[0])"
)


def _other_process(path: Path, query: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _COUNT.format(query), str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(done.stdout)


def test_syncing_the_database_file_keeps_sqlite_locks(tmp_path: Path) -> None:
    """The restart pass syncs the database file through a descriptor of its own. Closing one
    would drop every lock this process holds on the file: another process closing its connection
    would then take itself for the last user and delete the WAL this one still writes to."""
    path = tmp_path / "locks.db"
    engine = _engine(path)
    try:
        with db.session_scope(engine) as session:
            session.execute(text("INSERT INTO t (body) VALUES ('first')"))
        db._sync_database_file(str(path))
        db._sync_database_file(str(path))  # the same descriptor again
        assert _other_process(path, "SELECT count(*) FROM t") == 1  # opens, reads, closes
        with db.session_scope(engine) as session:
            for _ in range(100):
                session.execute(text("INSERT INTO t (body) VALUES ('later')"))
        assert Path(f"{path}-wal").exists()
        assert _other_process(path, "SELECT count(*) FROM t") == 101
    finally:
        engine.dispose()
