"""SQLite under steady writes (service/infra/db.py): the WAL starts again from its beginning, a
writer never waits long for a checkpoint, and writes reuse the connection whose cache is warm."""

from __future__ import annotations

import sqlite3
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
    mine = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t (body) VALUES ('held')")
        started = time.monotonic()
        checkpointer._restart(mine)
        waited = time.monotonic() - started
        assert db.RESTART_WAIT_MS / 1000 <= waited < db.RESTART_WAIT_MS / 1000 + 1.0
        # the gate is open again: a writer of this process would begin at once
        free = threading.Event()

        def begin() -> None:
            checkpointer.wait_for_restart_pass()
            free.set()

        threading.Thread(target=begin, daemon=True).start()
        assert free.wait(1.0)
        # and the pass did not take the write lock or commit anything of its own
        other.execute("COMMIT")
        assert other.execute("SELECT count(*) FROM t").fetchone() == (1,)
        assert mine.execute("PRAGMA busy_timeout").fetchone() == (db.BUSY_TIMEOUT_MS,)
    finally:
        other.close()
        mine.close()
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
        with checkpointer._restart_pass:
            thread = threading.Thread(target=write, daemon=True)
            thread.start()
            assert not began.wait(0.3)  # held at BEGIN
        assert began.wait(5.0)
        thread.join(5.0)
        with db.reading(engine) as session:
            assert session.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
    finally:
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
