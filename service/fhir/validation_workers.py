"""fhir.resources model checks of atomic Bundles in worker processes, while the request is written.

Model validation is the largest single cost of an ingest and it holds the GIL, so in one process
it cannot overlap with anything. A worker process parses the same request bytes and checks every
entry against its model while the request thread walks, rewrites and writes the Bundle in its
transaction and derives its events; the transaction waits for the verdicts before it commits
and rolls back when a model fails, so what the client sees, and what is stored, is the same as
checking in place (the derivation keeps nothing in memory, and logs nothing, until a commit).

When the request thread is ready to commit before the worker is done, it does not just wait: it
checks entries from the end of the Bundle while the worker goes on from the front, each claiming
one entry at a time in a small shared array (`Claims`), until they meet.

A Bundle goes to a worker only when one is idle: a queue would hold the request's transaction
(and SQLite's write lock) open while it waits. Large Bundles go whenever one is; small ones (a
one-patient transaction) only while no other Bundle is being written in this process (see
`ModelChecks.wanted`). The request thread writes the bytes to the idle worker's pipe itself, so
the worker starts at once: a `ProcessPoolExecutor` hands each job to two helper threads of its
own first, which need the GIL the request thread is holding, and a one-patient transaction's
worker started ~0.7 ms late that way (docs/performance.md). Until the workers have loaded the
models, and whenever a worker has died or failed, Bundles are checked in place, so nothing waits
on a start-up and a lost worker costs speed, never a request.

The workers are spawned, so they import the server's main module: the service's own entry points
(`trialbridge`, `uvicorn api.app:app`) are safe; a script embedding the app must guard its start
with `if __name__ == "__main__":`, as multiprocessing requires.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal

from fhir_mapping.bundles import (
    BODY,
    Verdicts,
    entry_verdicts,
    estimated_atomic_entries,
    model_verdicts,
)
from fhir_mapping.issues import InvalidContentError
from fhir_mapping.json_codec import loads
from service.infra.process import return_free_memory, settle_process
from service.infra.settings import Settings

log = logging.getLogger(__name__)

# After a pool failed to start, Bundles are checked in place this long before the next attempt.
RESTART_BACKOFF_SECONDS = 30.0
# How long a request waits for the worker once it has checked the rest of the Bundle itself: the
# worker then owes at most the entry it is on and its answer (milliseconds). A worker stopped or
# stuck that long is killed and its pool dropped, and the request checks the Bundle in place.
STALL_SECONDS = 30.0

State = Literal["off", "idle", "starting", "ready", "failed"]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_processes() -> int:
    """One worker when there is a second CPU for it, none on a single CPU."""
    return 1 if usable_cpus() >= 2 else 0


# Larger than any entry index: "the worker may go on to the end".
_OPEN = 2**62


class Claims:
    """Who checks which entries of one Bundle: the worker from the front, the request from the back.

    Two cells per worker slot in shared memory: `front`, the first entry the worker has not
    claimed, written only by the worker, and `back`, the first entry the request thread claimed,
    written only by it. Each side claims one entry at a time after reading the other's cell, and
    each cell only moves towards the other, so a stale read can make both sides check the same
    entry (the same verdict twice) but never leave one out: when both have stopped, `front` >=
    `back`.
    """

    def __init__(self, cells: Any, slot: int) -> None:
        self._cells, self._front, self._back = cells, 2 * slot, 2 * slot + 1

    def reset(self) -> None:
        """A new Bundle: nothing claimed, the worker may check every entry."""
        self._cells[self._front], self._cells[self._back] = 0, _OPEN

    def take_front(self, index: int) -> bool:
        """The worker's claim on `index` (asked in order); False once the request has it."""
        if index >= self._cells[self._back]:
            return False
        self._cells[self._front] = index + 1
        return True

    def take_back(self, entries: int) -> int | None:
        """The request thread's next entry, from the end of `entries`; None once they have met."""
        index = int(min(self._cells[self._back], entries)) - 1
        if index < self._cells[self._front]:
            return None
        self._cells[self._back] = index
        return index

    def front(self) -> int:
        """Entries below this were (or are being) checked by the worker."""
        return int(self._cells[self._front])

    def back(self) -> int:
        """Entries from this one on were (or are being) checked by the request thread."""
        return int(self._cells[self._back])

    def all_taken_back(self) -> bool:
        """The request thread has claimed every entry (the worker had not started on any)."""
        return self.back() == 0


_CELLS: Any = None  # the worker's view of the pool's shared claims


def _worker_start(cells: Any) -> None:
    """Load every model once and keep it out of the collector's walks, as the server does."""
    global _CELLS
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    settle_process()
    _CELLS = cells


def _checked_in_worker(raw: bytes | str, slot: int) -> Verdicts:
    """A Bundle's verdicts from the front, up to where the request thread took over.

    `raw` is the body's bytes, or the path of the file a large body was spooled to: read here,
    its bytes are dropped once parsed, and the memory the Bundle took goes back to the system
    after the job (a worker lives on between Bundles).
    """
    claim = Claims(_CELLS, slot).take_front
    if not isinstance(raw, str):
        return model_verdicts(raw, claim)
    try:
        return _spooled_verdicts(raw, claim)
    finally:
        return_free_memory()


def _spooled_verdicts(path: str, claim: Callable[[int], bool]) -> Verdicts:
    try:
        obj = loads(Path(path).read_bytes())  # the bytes live only while they are parsed
    except InvalidContentError as exc:
        return {BODY: exc.issues}
    return entry_verdicts(obj, claim)


# How long `close` waits for a worker to finish its job and stop before it is terminated.
STOP_TIMEOUT_SECONDS = 10.0


def _worker_main(conn: Connection, cells: Any) -> None:
    """A worker's life: load the models, say so, then answer one Bundle at a time until told to
    stop (an empty message) or its server goes away (the pipe closes)."""
    _worker_start(cells)
    conn.send_bytes(pickle.dumps(("ready", os.getpid())))
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not message:
            return
        raw, slot = pickle.loads(message)
        reply: tuple[str, Any]
        try:
            reply = ("ok", _checked_in_worker(raw, slot))
        except Exception as exc:  # the job failed, not the worker: its server checks in place
            reply = ("error", exc)
        try:
            data = pickle.dumps(reply)
        except Exception as exc:  # an exception that does not pickle: say which it was
            data = pickle.dumps(
                ("error", RuntimeError(f"model check failed: {type(exc).__name__}"))
            )
        conn.send_bytes(data)


@dataclass(eq=False)
class _Worker:
    """One worker process, the server's end of its pipe, and the job it is answering."""

    process: BaseProcess
    conn: Connection
    ready: Future[int] = field(default_factory=Future)
    job: Future[Verdicts] | None = None


class _PipePool:
    """Worker processes, each fed through its own pipe by the request thread that has a job for
    it, and answered through a thread of the server's that waits on that pipe (without the GIL)
    and completes the job's future."""

    def __init__(self, processes: int, cells: Any) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a threaded server
        self.workers: list[_Worker] = []
        try:
            for slot in range(processes):
                self._start(context, slot, cells)
        except BaseException:
            self.shutdown(wait=False)
            raise

    def _start(self, context: Any, slot: int, cells: Any) -> None:
        """Start the worker of `slot` and the thread that reads its answers."""
        ours, theirs = context.Pipe(duplex=True)
        process = context.Process(
            target=_worker_main,
            args=(theirs, cells),
            name=f"trialbridge-model-check-{slot}",
            daemon=True,
        )
        process.start()
        theirs.close()  # the worker holds its end: its exit is our end-of-file
        worker = _Worker(process, ours)
        self.workers.append(worker)
        threading.Thread(
            target=self._answers, args=(worker,), name=process.name, daemon=True
        ).start()

    def submit(self, slot: int, raw: bytes | str, future: Future[Verdicts]) -> None:
        """Send a Bundle to the (idle) worker of `slot`, its answer to complete `future` (which
        must be running); OSError or ValueError when the worker is gone."""
        worker = self.workers[slot]
        worker.job = future
        try:
            worker.conn.send_bytes(pickle.dumps((raw, slot)))
        except BaseException:
            worker.job = None
            raise

    def _answers(self, worker: _Worker) -> None:
        """Complete the worker's futures as its answers arrive; when its pipe ends (it stopped or
        died), fail what it still owed with BrokenProcessPool."""
        while True:
            try:
                data = worker.conn.recv_bytes()
            except (EOFError, OSError):
                break
            try:
                kind, value = pickle.loads(data)
            except Exception as exc:  # e.g. an exception class that does not unpickle
                kind, value = "error", RuntimeError(f"unreadable answer: {type(exc).__name__}")
            if kind == "ready":
                worker.ready.set_result(value)
                continue
            job, worker.job = worker.job, None
            if job is None:
                continue
            if kind == "ok":
                job.set_result(value)
            else:
                job.set_exception(
                    value if isinstance(value, Exception) else RuntimeError("model check failed")
                )
        lost = BrokenProcessPool("a model-check worker ended")
        for owed in (worker.ready, worker.job):
            if owed is not None and not owed.done():
                owed.set_exception(lost)
        worker.job = None
        worker.process.join(STOP_TIMEOUT_SECONDS)  # no zombie left behind
        worker.conn.close()

    def shutdown(self, *, wait: bool) -> None:
        """Stop the workers: after their current job (`wait`), or at once."""
        for worker in self.workers:
            if wait:
                with suppress(OSError, ValueError):
                    worker.conn.send_bytes(b"")
            elif worker.process.is_alive():
                worker.process.kill()  # SIGKILL: a stopped worker never acts on SIGTERM
        if wait:
            for worker in self.workers:
                worker.process.join(STOP_TIMEOUT_SECONDS)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join(STOP_TIMEOUT_SECONDS)


InPlace = Callable[[Iterable[int] | None], Verdicts]


class PendingVerdicts:
    """The model verdicts of one Bundle, computed in a worker; `result()` waits for them."""

    def __init__(
        self,
        future: Future[Verdicts],
        on_lost: Callable[[], None],
        claims: Claims | None = None,
    ) -> None:
        self._future, self._on_lost, self._claims = future, on_lost, claims
        self._result: Verdicts | None = None
        self.answered_by_worker = False  # after `result()`: the worker parsed the bytes itself

    def result(self, in_place: InPlace, entries: int = 0) -> Verdicts:
        """The verdicts (the same answer each call).

        While the worker is still busy, this thread checks the Bundle's `entries` from the back
        with `in_place(indexes)`; `in_place(None)` checks them all if the worker cannot answer.
        """
        if self._result is None:
            here: Verdicts = {}
            while self._claims is not None and not self._future.done():
                index = self._claims.take_back(entries)
                if index is None:
                    break
                here.update(in_place([index]))
            if self._claims is not None and self._claims.all_taken_back():
                self._result = here  # checked here from first to last: no need to wait
                return self._result
            # its front meets our back; without claims it checks the whole Bundle: no bound
            bound = None if self._claims is None else STALL_SECONDS
            try:
                self._result = {**here, **self._future.result(bound)}
                self.answered_by_worker = True
            except (BrokenProcessPool, CancelledError):  # the worker died, or its pool was dropped
                log.warning("a model-check worker was lost; checking this Bundle in place")
                self._on_lost()
                self._result = self._rest_here(here, in_place, entries)
            except TimeoutError:  # stopped (SIGSTOP, a frozen cgroup) or stuck on one entry
                log.warning(
                    "a model-check worker did not answer in %.0f s; dropping its pool and "
                    "checking this Bundle in place",
                    STALL_SECONDS,
                )
                self._on_lost()
                self._result = self._rest_here(here, in_place, entries)
            except Exception:  # the job itself failed: never the client's fault, keep the pool
                log.exception("a model-check job failed; checking this Bundle in place")
                self._result = self._rest_here(here, in_place, entries)
        return self._result

    def _rest_here(self, here: Verdicts, in_place: InPlace, entries: int) -> Verdicts:
        """The worker's answer is lost: check here what it owed, every entry below those this
        thread has checked already (`here`), or all of them without claims."""
        if self._claims is None or entries <= 0:
            return in_place(None)
        return {**here, **in_place(range(min(self._claims.back(), entries)))}


class ModelChecks:
    """A small process pool for `model_verdicts`, started on first use."""

    def __init__(
        self, processes: int, min_entries: int, min_entries_alone: int | None = None
    ) -> None:
        self.processes = processes
        self.min_entries = min_entries
        # smaller Bundles go too while no other Bundle is being written in this process
        self.min_entries_alone = min_entries if min_entries_alone is None else min_entries_alone
        self._writing = 0  # Bundles being written in this process now (see `writing`)
        self.submitted = 0  # Bundles sent to a worker so far (for operators and tests)
        # Re-entrant, so that a job's done-callback (`_job_done`) run by a thread already holding
        # it cannot deadlock.
        self._lock = threading.RLock()
        self._pool: _PipePool | None = None
        self._warm: list[Future[int]] = []
        self._jobs: dict[Future[Verdicts], int] = {}  # in flight: their claims slot
        self._cells: Any = None  # the current pool's shared claims, two cells per worker
        self._closed = False
        self._retry_at = 0.0

    @classmethod
    def for_settings(cls, settings: Settings) -> ModelChecks:
        """The pool the settings ask for (unset processes: `default_processes()`)."""
        processes = settings.model_check_processes
        return cls(
            default_processes() if processes is None else processes,
            settings.model_check_min_entries,
            settings.model_check_min_entries_alone,
        )

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Count a Bundle being written in this process while the block runs."""
        with self._lock:
            self._writing += 1
        try:
            yield
        finally:
            with self._lock:
                self._writing -= 1

    def wanted(self, raw: bytes) -> bool:
        """Whether a request body looks like an atomic Bundle worth sending to a worker.

        A large one always is. A small one (a one-patient transaction) only while it is the one
        Bundle this process is writing (`writing`; a caller outside it counts as alone): a second
        core is then likely idle, and the worker takes its ~1 ms of model checks off the request's
        path. Only this process's Bundles are counted, not other server processes, single-resource
        writes or bulk jobs: a heuristic for "another core is free", not a measure of it.
        """
        if self.processes <= 0:
            return False
        entries = estimated_atomic_entries(raw)
        if entries >= self.min_entries:
            return True
        with self._lock:
            alone = self._writing <= 1
        return alone and entries >= self.min_entries_alone

    def submit(self, raw: bytes | str) -> PendingVerdicts | None:
        """Start checking a Bundle's models in an idle worker; None means: check them in place.

        The worker's slot is taken under the lock, the bytes are written outside it: a body of up
        to `large_body_bytes` takes milliseconds to pass through the pipe, and every Bundle
        request asks the lock (`writing`, `wanted`) meanwhile.
        """
        future: Future[Verdicts] = Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            pool = self._started()
            if pool is None or len(self._jobs) >= self.processes or not self._warmed():
                return None
            slot = min(set(range(self.processes)) - set(self._jobs.values()))
            claims = Claims(self._cells, slot)
            claims.reset()
            self._jobs[future] = slot
        try:
            pool.submit(slot, raw, future)
        except (OSError, ValueError):  # the worker died: its pipe is broken or closed
            with self._lock:
                self._jobs.pop(future, None)
                if pool is self._pool:
                    self._discard()
            return None
        with self._lock:
            self.submitted += 1
        future.add_done_callback(self._job_done)
        return PendingVerdicts(future, lambda: self.lost(pool), claims)

    def state(self) -> State:
        """Off (none configured, or closed), idle (not started yet), starting, ready, or failed."""
        with self._lock:
            if self.processes <= 0 or self._closed:
                return "off"
            if self._pool is None:
                return "failed" if self._retry_at > time.monotonic() else "idle"
            if not all(f.done() for f in self._warm):
                return "starting"
            return "ready" if self._warmed() else "failed"

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Start the workers if needed and wait (in all at most `timeout` s) until they are warm."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._started()
            warm = list(self._warm)
        for future in warm:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            future.result(left)
        return bool(warm)

    def busy(self) -> int:
        """Jobs in flight on the current pool, answers nobody waits for included."""
        with self._lock:
            return len(self._jobs)

    def worker_pids(self) -> list[int]:
        """Process ids of the warm workers (for operators and tests)."""
        with self._lock:
            return [f.result() for f in self._warm if f.done() and f.exception() is None]

    def lost(self, pool: _PipePool) -> None:
        """A worker of `pool` died or failed: drop that pool (once); a later Bundle starts anew."""
        with self._lock:
            if pool is self._pool:
                log.warning("dropping the model-check pool; the next large Bundle starts a new one")
                self._discard()

    def close(self) -> None:
        """Stop the workers for good (at shutdown); later Bundles are checked in place."""
        with self._lock:
            self._closed = True
            pool, self._pool, self._warm, self._jobs = self._pool, None, [], {}
        if pool is not None:
            pool.shutdown(wait=True)

    def _job_done(self, future: Future[Verdicts]) -> None:
        """A worker is free again (a job of a dropped pool is simply not in the set any more)."""
        with self._lock:
            self._jobs.pop(future, None)

    def _warmed(self) -> bool:
        """Every worker has loaded the models; a failed start drops the pool and backs off."""
        if not all(f.done() for f in self._warm):
            return False
        if any(f.cancelled() or f.exception() is not None for f in self._warm):
            log.error("model-check workers failed to start; checking in place for a while")
            self._discard()
            self._retry_at = time.monotonic() + RESTART_BACKOFF_SECONDS
            return False
        return True

    def _started(self) -> _PipePool | None:
        """The current pool, started if there is none (unless off, closed or backing off)."""
        if self.processes <= 0 or self._closed or time.monotonic() < self._retry_at:
            return None
        if self._pool is None:
            try:
                self._cells = multiprocessing.get_context("spawn").RawArray("q", 2 * self.processes)
                self._pool = _PipePool(self.processes, self._cells)
            except Exception:  # no process could start (limits, memory, a daemonic server)
                log.exception("model-check workers could not be started; checking in place")
                self._retry_at = time.monotonic() + RESTART_BACKOFF_SECONDS
                return None
            self._warm = [worker.ready for worker in self._pool.workers]
        return self._pool

    def _discard(self) -> None:
        """Drop the current pool without waiting for it (its jobs are cancelled or abandoned)."""
        pool, self._pool, self._warm, self._jobs = self._pool, None, [], {}
        if pool is not None:
            pool.shutdown(wait=False)
