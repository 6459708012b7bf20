"""fhir.resources model checks of large Bundles in worker processes, while the request is written.

Model validation is the largest single cost of an ingest and it holds the GIL, so in one process
it cannot overlap with anything. A worker process parses the same request bytes and checks every
entry against its model while the request thread walks, rewrites and writes the Bundle in its
transaction; the transaction waits for the verdict before it commits and rolls back when a model
fails, so what the client sees, and what is stored, is the same as checking in place.

The pool starts on the first Bundle that qualifies; until its workers have loaded the models,
and whenever a worker has died, Bundles are checked in place, so nothing waits on a start-up and
a lost worker costs speed, not requests.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Literal

from fhir_mapping.bundles import model_verdicts
from fhir_mapping.issues import Issue
from fhir_mapping.validation import preload_models
from service.settings import Settings

log = logging.getLogger(__name__)

Verdicts = dict[int, list[Issue]]


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
    preload_models()
    gc.collect()
    gc.freeze()


def _worker_ready() -> int:
    """A first job: done once the initializer has loaded the models, so the worker is warm."""
    return os.getpid()


class PendingVerdicts:
    """The model verdicts of one Bundle, computed elsewhere; `result()` waits for them."""

    def __init__(self, future: Future[Verdicts], raw: bytes, on_lost: Callable[[], None]) -> None:
        self._future, self._raw, self._on_lost = future, raw, on_lost
        self._result: Verdicts | None = None

    def result(self) -> Verdicts:
        """The verdicts (the same answer each call); checked in place if the worker was lost."""
        if self._result is None:
            try:
                self._result = self._future.result()
            except (BrokenProcessPool, CancelledError):  # lost, or cancelled with its pool
                self._on_lost()
                self._result = model_verdicts(self._raw)
        return self._result

    def cancel(self) -> None:
        """Not needed any more (the Bundle failed before its models mattered)."""
        self._future.cancel()


class ModelChecks:
    """A small process pool for `model_verdicts`, started on first use."""

    def __init__(self, processes: int, min_entries: int) -> None:
        self.processes = processes
        self.min_entries = min_entries
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._warm: list[Future[int]] = []
        self.submitted = 0  # Bundles sent to a worker so far (for operators and tests)

    @classmethod
    def for_settings(cls, settings: Settings) -> ModelChecks:
        """The pool the settings ask for (unset processes: `default_processes()`)."""
        processes = settings.model_check_processes
        return cls(
            default_processes() if processes is None else processes,
            settings.model_check_min_entries,
        )

    def wanted(self, entries: int) -> bool:
        """Whether a Bundle of this many entries is worth sending to a worker."""
        return self.processes > 0 and entries >= self.min_entries

    def submit(self, raw: bytes) -> PendingVerdicts | None:
        """Start checking a Bundle's models in a worker; None means: check them in place."""
        with self._lock:
            pool = self._started()
            if pool is None or not all(f.done() for f in self._warm):
                return None
            try:
                future = pool.submit(model_verdicts, raw)
                self.submitted += 1
            except (BrokenProcessPool, RuntimeError):  # a worker died, or we are shutting down
                self._discard()
                return None
        used = pool
        return PendingVerdicts(future, raw, lambda: self.lost(used))

    def state(self) -> Literal["off", "idle", "starting", "ready"]:
        """Off (no workers configured), idle (not started yet), starting, or ready."""
        with self._lock:
            if self.processes <= 0:
                return "off"
            if self._pool is None:
                return "idle"
            return "ready" if all(f.done() for f in self._warm) else "starting"

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Start the workers if needed and wait until they have loaded the models."""
        with self._lock:
            self._started()
            warm = list(self._warm)
        for future in warm:
            future.result(timeout)
        return bool(warm)

    def worker_pids(self) -> list[int]:
        """Process ids of the warm workers (for operators and tests)."""
        with self._lock:
            return [f.result() for f in self._warm if f.done() and not f.exception()]

    def lost(self, pool: ProcessPoolExecutor) -> None:
        """A worker of `pool` died: drop that pool (once); the next Bundle starts a fresh one."""
        with self._lock:
            if pool is self._pool:
                log.warning("a model-check worker process was lost; starting a new pool")
                self._discard()

    def close(self) -> None:
        """Stop the workers (at shutdown)."""
        with self._lock:
            pool, self._pool, self._warm = self._pool, None, []
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _started(self) -> ProcessPoolExecutor | None:
        if self.processes <= 0:
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
        pool, self._pool, self._warm = self._pool, None, []
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
