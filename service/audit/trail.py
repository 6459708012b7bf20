"""Audit records of requests that write nothing: journaled before the answer, stored in batches.

A read must not be answered unless its AuditEvent survives a crash, yet a database commit per
read would cost more than the read (bench/audit_reads.py). So a request appends its record as
one line to this process's journal segment (a local file, `TRIALBRIDGE_AUDIT_SPOOL_DIR`) and is
answered; the write lands in the kernel before the answer leaves, so killing the process loses
nothing. A writer thread moves the records into the database every fraction of a second, in one
transaction per batch, then deletes the segment. A process that starts (or `trialbridge audit
export`) first stores the segments that dead processes left behind. Inserts are idempotent (the
record id is unique), so a segment stored twice is stored once.

A segment is locked (flock) while its process still appends to it: recovery never takes a live
process's segment. If the journal cannot be written, the request is refused (503), never answered
unrecorded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from service.errors import DatabaseUnavailableError
from service.infra.db import writing
from service.repositories.audit_records import Recorded, insert_records

log = logging.getLogger(__name__)
FLUSH_SECONDS = 0.25
MAX_BATCH = 2000
SEGMENT_SUFFIX = ".ndjson"


def _line(record: Recorded) -> bytes:
    return (
        orjson.dumps(
            {
                "id": record.id,
                "kind": record.kind,
                "recorded": record.recorded.isoformat(),
                "agent": record.agent,
                "request_id": record.request_id,
                "content": record.content,
                "entities": record.entities,
            }
        )
        + b"\n"
    )


def _parse(line: bytes) -> Recorded | None:
    """A journal line as a record; None for a torn last line (the process died mid-write)."""
    try:
        raw: dict[str, Any] = orjson.loads(line)
        return Recorded(
            raw["id"],
            raw["kind"],
            dt.datetime.fromisoformat(raw["recorded"]),
            raw["agent"],
            raw["request_id"],
            raw["content"],
            tuple(raw["entities"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


class _Segment:
    """One journal file, locked by its process while open for appending."""

    def __init__(self, folder: Path) -> None:
        name = f"audit-{os.getpid()}-{uuid.uuid4().hex}{SEGMENT_SUFFIX}"
        making = folder / f".{name}.new"  # invisible to recovery until it is locked
        self.fd = os.open(making, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path = folder / name
        os.rename(making, self.path)
        self.records: list[Recorded] = []

    def append(self, record: Recorded) -> None:
        data = _line(record)
        written = os.write(self.fd, data)  # one write(2) of one line: in the kernel on return
        if written != len(data):
            raise OSError(f"short write to the audit journal ({written} of {len(data)} bytes)")
        self.records.append(record)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class AuditTrail:
    """This process's journal and the thread that stores it."""

    def __init__(self, engine: Engine, spool_dir: Path) -> None:
        self.engine = engine
        self.spool_dir = spool_dir
        self._lock = threading.Lock()  # the current segment and the list of unstored ones
        self._storing = threading.Lock()  # one store at a time: a flush waits for one in flight
        self._segment: _Segment | None = None
        self._unstored: list[_Segment] = []  # closed, waiting for (another try at) the database
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)

    def start(self) -> None:
        """Store what dead processes left, open a segment, and start the writer."""
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        recover(self.engine, self.spool_dir)
        self._segment = _Segment(self.spool_dir)
        self._thread.start()

    def stop(self) -> None:
        """Store everything journaled, then stop."""
        if self._thread.is_alive():
            self._stopping.set()
            self._wake.set()
            self._thread.join()

    async def record(self, record: Recorded) -> None:
        """Journal `record`; DatabaseUnavailableError (a 503) when it cannot be."""
        self.append(record)

    def append(self, record: Recorded) -> None:
        """Journal `record` (a few microseconds: one write to a local file)."""
        with self._lock:
            try:
                if self._segment is None:
                    self._segment = _Segment(self.spool_dir)
                self._segment.append(record)
            except OSError as exc:
                log.error("the audit journal cannot be written (%s): requests are refused", exc)
                raise DatabaseUnavailableError("read") from exc
            full = len(self._segment.records) >= MAX_BATCH
        if full:
            self._wake.set()

    def flush(self) -> None:
        """Store everything journaled so far, now (a search must see what was just answered).

        When it returns, every record appended before the call is in the database: a batch the
        writer thread was storing meanwhile is waited for.
        """
        self._rotate()
        self._store()

    def _rotate(self) -> None:
        with self._lock:
            segment = self._segment
            if segment is None or not segment.records:
                return
            self._segment = None  # the next append opens a fresh one
            segment.close()  # its lock goes: complete, it may be recovered by anyone now
            self._unstored.append(segment)

    def _store(self) -> None:
        with self._storing:
            self._store_waiting()

    def _store_waiting(self) -> None:
        with self._lock:
            waiting, self._unstored = self._unstored, []
        failed: list[_Segment] = []
        for segment in waiting:
            try:
                try:
                    with writing(self.engine) as session:
                        insert_records(session, segment.records)
                except IntegrityError:  # another process's start stored this segment meanwhile
                    with writing(self.engine) as session:
                        insert_records(session, segment.records, idempotent=True)
            except Exception as exc:  # kept on disk and in memory: tried again next time
                log.warning("audit records wait for the database (%s)", type(exc).__name__)
                failed.append(segment)
                continue
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()
        if failed:
            with self._lock:
                self._unstored[:0] = failed

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            self.flush()
        self.flush()
        with self._lock:  # appended meanwhile: stored below; empty: nothing to keep
            last, self._segment = self._segment, None
        if last is not None and last.records:
            last.close()
            with self._lock:
                self._unstored.append(last)
            self._store()
        elif last is not None:
            last.close()
            with contextlib.suppress(FileNotFoundError):
                last.path.unlink()


def _orphans(spool_dir: Path) -> Iterator[tuple[Path, int]]:
    """Segments no live process holds: (path, an fd holding its lock now)."""
    for path in sorted(spool_dir.glob(f"audit-*{SEGMENT_SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # stored meanwhile by its owner
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its process is alive and appending
            os.close(fd)
            continue
        yield path, fd


def recover(engine: Engine, spool_dir: Path) -> int:
    """Store the records of segments left by processes that died; how many were found."""
    if not spool_dir.is_dir():
        return 0
    found = 0
    for path, fd in _orphans(spool_dir):
        try:
            with os.fdopen(fd, "rb", closefd=False) as lines:
                records = [r for line in lines if (r := _parse(line)) is not None]
            with writing(engine) as session:
                insert_records(session, records, idempotent=True)
            path.unlink(missing_ok=True)
            found += len(records)
        finally:
            os.close(fd)
    if found:
        log.warning("stored %d audit record(s) journaled by a process that stopped early", found)
    return found
