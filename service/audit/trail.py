"""Audit records of requests that write nothing, stored before their request is answered.

A read must not be answered until its AuditEvent is durable (a crash loses no answered read),
yet one commit per read would make every read wait on the database alone. Requests hand their
record to one writer thread and wait; the writer commits whatever has queued up meanwhile in a
single transaction (group commit) and then releases all of their waiters at once. Under load a
commit carries many reads; alone, a read waits for one small insert.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from service.errors import DatabaseUnavailableError
from service.infra.db import writing
from service.repositories.audit_records import Recorded, insert_records

log = logging.getLogger(__name__)
MAX_BATCH = 500
ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class _Waiting:
    record: Recorded
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():  # the request was cancelled meanwhile
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


class AuditTrail:
    """One writer thread per process, committing queued records in batches."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)

    def start(self) -> None:
        """Start the writer."""
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then stop."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    async def record(self, record: Recorded) -> None:
        """Return once `record` is committed; DatabaseUnavailableError if it cannot be."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Waiting(record, loop, done))
        await done

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            error = self._commit([w.record for w in batch])
            for waiting in batch:
                waiting.loop.call_soon_threadsafe(_settle, waiting.done, error)

    def _commit(self, records: Sequence[Recorded]) -> BaseException | None:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with writing(self.engine) as session:
                    insert_records(session, records)
                return None
            except Exception as exc:  # any failure: retried, then every waiter hears of it
                if attempt == ATTEMPTS:
                    log.error(
                        "audit records could not be stored (%s): their requests are refused",
                        type(exc).__name__,
                    )
                    return DatabaseUnavailableError("read")
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")
