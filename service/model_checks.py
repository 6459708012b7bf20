"""fhir.resources model checks of large Bundles in worker processes, while the request is written.

Model validation is the largest single cost of an ingest and it holds the GIL, so in one process
it cannot overlap with anything. A worker process parses the same request bytes and checks every
entry against its model while the request thread walks, rewrites and writes the Bundle in its
transaction and derives its events; the transaction waits for the verdicts before it commits
and rolls back when a model fails, so what the client sees, and what is stored, is the same as
checking in place (the derivation keeps nothing in memory, and logs nothing, until a commit).

A Bundle goes to a worker only when one is idle: a queue would hold the request's transaction
(and SQLite's write lock) open while it waits. Until the workers have loaded the models, and
whenever a worker has died or failed, Bundles are checked in place, so nothing waits on a start-up
and a lost worker costs speed, never a request.

The workers are spawned, so they import the server's main module: the service's own entry points
(`trialbridge`, `uvicorn api.app:app`) are safe; a script embedding the app must guard its start
with `if __name__ == "__main__":`, as multiprocessing requires.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Literal

from fhir_mapping.bundles import Verdicts, estimated_atomic_entries, model_verdicts
from service.process import settle_process
from service.settings import Settings

log = logging.getLogger(__name__)

# After a pool failed to start, Bundles are checked in place this long before the next attempt.
RESTART_BACKOFF_SECONDS = 30.0

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


def _worker_start() -> None:
    """Load every model once and keep it out of the collector's walks, as the server does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    settle_process()


def _worker_ready() -> int:
    """A first job: done once the initializer has loaded the models, so the worker is warm."""
    return os.getpid()


class PendingVerdicts:
    """The model verdicts of one Bundle, computed in a worker; `result()` waits for them."""

    def __init__(self, future: Future[Verdicts], on_lost: Callable[[], None]) -> None:
        self._future, self._on_lost = future, on_lost
        self._result: Verdicts | None = None

    def result(self, in_place: Callable[[], Verdicts]) -> Verdicts:
        """The verdicts (the same answer each call); `in_place()` if the worker could not answer."""
        if self._result is None:
            try:
                self._result = self._future.result()
            except (BrokenProcessPool, CancelledError):  # the worker died, or its pool was dropped
                log.warning("a model-check worker was lost; checking this Bundle in place")
                self._on_lost()
                self._result = in_place()
            except Exception:  # the job itself failed: never the client's fault, keep the pool
                log.exception("a model-check job failed; checking this Bundle in place")
                self._result = in_place()
        return self._result


class ModelChecks:
    """A small process pool for `model_verdicts`, started on first use."""

    def __init__(self, processes: int, min_entries: int) -> None:
        self.processes = processes
        self.min_entries = min_entries
        self.submitted = 0  # Bundles sent to a worker so far (for operators and tests)
        # Re-entrant: cancelling a pool's jobs runs their done-callbacks in the cancelling thread.
        self._lock = threading.RLock()
        self._pool: ProcessPoolExecutor | None = None
        self._warm: list[Future[int]] = []
        self._jobs: set[Future[Verdicts]] = set()  # in flight on the current pool
        self._closed = False
        self._retry_at = 0.0

    @classmethod
    def for_settings(cls, settings: Settings) -> ModelChecks:
        """The pool the settings ask for (unset processes: `default_processes()`)."""
        processes = settings.model_check_processes
        return cls(
            default_processes() if processes is None else processes,
            settings.model_check_min_entries,
        )

    def wanted(self, raw: bytes) -> bool:
        """Whether a request body looks like an atomic Bundle worth sending to a worker."""
        return self.processes > 0 and estimated_atomic_entries(raw) >= self.min_entries

    def submit(self, raw: bytes) -> PendingVerdicts | None:
        """Start checking a Bundle's models in an idle worker; None means: check them in place."""
        with self._lock:
            pool = self._started()
            if pool is None or len(self._jobs) >= self.processes or not self._warmed():
                return None
            try:
                future = pool.submit(model_verdicts, raw)
            except RuntimeError:  # a worker died (BrokenProcessPool), or we are shutting down
                self._discard()
                return None
            self._jobs.add(future)
            self.submitted += 1
        future.add_done_callback(self._job_done)
        return PendingVerdicts(future, lambda: self.lost(pool))

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

    def lost(self, pool: ProcessPoolExecutor) -> None:
        """A worker of `pool` died or failed: drop that pool (once); a later Bundle starts anew."""
        with self._lock:
            if pool is self._pool:
                log.warning("dropping the model-check pool; the next large Bundle starts a new one")
                self._discard()

    def close(self) -> None:
        """Stop the workers for good (at shutdown); later Bundles are checked in place."""
        with self._lock:
            self._closed = True
            pool, self._pool, self._warm, self._jobs = self._pool, None, [], set()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _job_done(self, future: Future[Verdicts]) -> None:
        """A worker is free again (a job of a dropped pool is simply not in the set any more)."""
        with self._lock:
            self._jobs.discard(future)

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

    def _started(self) -> ProcessPoolExecutor | None:
        """The current pool, started if there is none (unless off, closed or backing off)."""
        if self.processes <= 0 or self._closed or time.monotonic() < self._retry_at:
            return None
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),  # never fork a threaded server
                initializer=_worker_start,
            )
            self._warm = [self._pool.submit(_worker_ready) for _ in range(self.processes)]
        return self._pool

    def _discard(self) -> None:
        """Drop the current pool without waiting for it (its jobs are cancelled or abandoned)."""
        pool, self._pool, self._warm, self._jobs = self._pool, None, [], set()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
