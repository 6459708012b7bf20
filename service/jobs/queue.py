"""Where bulk jobs and pulls run: one interface, two backends.

- `InProcessQueue` (the embedded SQLite default): threads of the server process run the jobs; at
  start and then every half lease they pick up the jobs no runner holds (queued, or whose runner's
  lease expired: a crash), so an unfinished job resumes when the server starts again.
- `ProcrastinateQueue` (PostgreSQL): jobs are deferred to procrastinate, a queue kept in the same
  PostgreSQL, and run by `trialbridge worker` processes; a worker re-defers the jobs whose runner
  stopped renewing its lease (a killed worker), which resume from their checkpoints.

Either way the job's state, checkpoint and lease are in our own `bulk_job` table: the queue only
says "run job X"; running it twice is harmless (the claim lets one runner in, the checkpoint
fences a runner whose lease was taken over).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from sqlalchemy import Engine, text

from service.fhir.pull.jobs import SourcePulls
from service.jobs.bulk import BulkJobs

log = logging.getLogger(__name__)

QUEUE = "trialbridge"
BULK_TASK = "trialbridge.bulk_job"
PULL_TASK = "trialbridge.pull"
_SCHEMA_LOCK = 0x7472_6961_6C63  # one advisory lock id for every process applying the schema


class JobQueue(Protocol):
    """Runs bulk jobs and claimed pulls somewhere: this process, or job workers."""

    def submit_bulk(self, job_id: str) -> None:
        """Run the bulk job (created and queued in the database) soon."""

    def submit_pull(self, source_id: str, job_id: str, full: bool) -> None:
        """Run the claimed pull job soon."""

    def start(self) -> None:
        """Start running (and resuming) jobs."""

    def stop(self) -> None:
        """Stop taking jobs (a running one keeps its checkpoint; its lease then expires)."""


class InProcessQueue:
    """Threads of this process run the jobs; unfinished ones are picked up at start."""

    def __init__(
        self,
        jobs: BulkJobs,
        pulls: SourcePulls | None = None,
        *,
        threads: int = 2,
        sweep_seconds: float | None = None,
    ) -> None:
        self.jobs = jobs
        self.pulls = pulls
        self.threads = threads
        self.sweep_seconds = sweep_seconds or max(jobs.settings.job_lease_seconds / 2, 0.5)
        self._work: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self._held: set[str] = set()  # bulk jobs queued or running here
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started: list[threading.Thread] = []

    def submit_bulk(self, job_id: str) -> None:
        """Queue the job here unless it is queued or running here already."""
        with self._lock:
            if job_id in self._held:
                return
            self._held.add(job_id)
        self._work.put(partial(self._bulk, job_id))

    def _bulk(self, job_id: str) -> None:
        try:
            self.jobs.run(job_id)
        finally:
            with self._lock:
                self._held.discard(job_id)

    def submit_pull(self, source_id: str, job_id: str, full: bool) -> None:
        """Queue the claimed pull."""
        assert self.pulls is not None
        self._work.put(partial(self.pulls.run_claimed, source_id, job_id, full))

    def start(self) -> None:
        """The runner threads and the sweeper (which resumes unfinished jobs at once)."""
        for n in range(self.threads):
            thread = threading.Thread(target=self._run, name=f"job-runner-{n}", daemon=True)
            thread.start()
            self._started.append(thread)
        sweeper = threading.Thread(target=self._sweep, name="job-sweeper", daemon=True)
        sweeper.start()
        self._started.append(sweeper)

    def stop(self) -> None:
        """Stop the threads after the jobs they run reach their next chunk or end."""
        self._stop.set()
        self.jobs.stopping.set()  # a running job leaves at its checkpoint; resumed at next start
        for _ in range(self.threads):
            self._work.put(None)
        for thread in self._started:
            thread.join(timeout=10)

    def _run(self) -> None:
        while (task := self._work.get()) is not None:
            try:
                task()
            except Exception:  # a job records its own failure; this keeps the thread alive
                log.exception("a job failed outside its own handling")

    def _sweep(self) -> None:
        while not self._stop.is_set():
            try:
                for job_id in self.jobs.unfinished():
                    self.submit_bulk(job_id)
                self.jobs.sweep_spools()
            except Exception:  # not migrated yet, or the database briefly away
                log.debug("looking for unfinished jobs failed; will retry", exc_info=True)
            self._stop.wait(self.sweep_seconds)


def conninfo(database_url: str) -> str:
    """A libpq connection string from our SQLAlchemy URL."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://"):
        if database_url.startswith(prefix):
            return "postgresql://" + database_url[len(prefix) :]
    return database_url


def ensure_schema(engine: Engine) -> bool:
    """Apply procrastinate's schema to the PostgreSQL database when it lacks it (the migrate step
    calls this after our migrations); True when it was applied now."""
    if engine.dialect.name != "postgresql":
        return False
    from procrastinate.schema import SchemaManager

    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK})
        conn.commit()
        try:
            present = conn.execute(text("SELECT to_regclass('procrastinate_jobs')")).scalar()
            conn.commit()
            if present is not None:
                return False
            raw: Any = conn.connection.driver_connection
            raw.execute(SchemaManager.get_schema())  # several statements: the simple protocol
            raw.commit()
            log.info("the job queue's schema (procrastinate) was applied")
            return True
        finally:
            conn.rollback()
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK})
            conn.commit()


@dataclass
class _Runtime:
    """What the tasks of a worker process run with."""

    jobs: BulkJobs
    pulls: SourcePulls | None


_runtime: list[_Runtime] = []


def _run_bulk(job_id: str) -> None:
    _runtime[0].jobs.run(job_id)


def _run_pull(source_id: str, job_id: str, full: bool) -> None:
    pulls = _runtime[0].pulls
    assert pulls is not None
    pulls.run_claimed(source_id, job_id, full)


def procrastinate_app(database_url: str) -> Any:
    """A procrastinate App on our PostgreSQL with our two tasks."""
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=conninfo(database_url))
    )
    app.task(name=BULK_TASK, queue=QUEUE)(_run_bulk)
    app.task(name=PULL_TASK, queue=QUEUE)(_run_pull)
    return app


class ProcrastinateQueue:
    """Defers jobs to procrastinate (same PostgreSQL); `trialbridge worker` runs them."""

    def __init__(self, database_url: str) -> None:
        self.app = procrastinate_app(database_url)
        self._open = False
        self._lock = threading.Lock()

    def _opened(self) -> Any:
        with self._lock:
            if not self._open:
                self.app.open()
                self._open = True
        return self.app

    def submit_bulk(self, job_id: str) -> None:
        """Defer the job (once: a job already waiting under this id is enough)."""
        from procrastinate.exceptions import AlreadyEnqueued

        task = self._opened().tasks[BULK_TASK]
        with contextlib.suppress(AlreadyEnqueued):  # one waiting job per id is enough
            task.configure(queueing_lock=f"bulk:{job_id}").defer(job_id=job_id)

    def submit_pull(self, source_id: str, job_id: str, full: bool) -> None:
        """Defer the claimed pull."""
        task = self._opened().tasks[PULL_TASK]
        task.defer(source_id=source_id, job_id=job_id, full=full)

    def start(self) -> None:
        """Nothing runs here: workers do."""

    def stop(self) -> None:
        """Close the connection pool."""
        with self._lock:
            if self._open:
                self.app.close()
                self._open = False


class Sweeper:
    """Re-submits the bulk jobs no runner holds (a worker was killed), every half lease, and
    deletes the spooled bodies no job will read (`BulkJobs.sweep_spools`)."""

    def __init__(self, jobs: BulkJobs, submit: Callable[[str], None], seconds: float) -> None:
        self.jobs, self.submit, self.seconds = jobs, submit, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-sweeper", daemon=True)

    def start(self) -> None:
        """Sweep now and then every `seconds`."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sweeping."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for job_id in self.jobs.unfinished():
                    self.submit(job_id)
                self.jobs.sweep_spools()  # bodies whose server stopped while receiving them
            except Exception:
                log.warning("re-submitting unfinished jobs failed; will retry", exc_info=True)
            self._stop.wait(self.seconds)


def run_worker(jobs: BulkJobs, pulls: SourcePulls | None, database_url: str) -> None:
    """A job worker in the foreground until SIGTERM/SIGINT: procrastinate runs the tasks; a
    sweeper re-defers jobs whose runner died. On the signal, a running bulk job leaves at its
    next chunk (its lease released, so another worker resumes it at once) and the worker ends."""
    _runtime[:] = [_Runtime(jobs, pulls)]
    deferrer = ProcrastinateQueue(database_url)
    sweeper = Sweeper(jobs, deferrer.submit_bulk, max(jobs.settings.job_lease_seconds / 2, 0.5))
    sweeper.start()
    try:
        asyncio.run(_work(procrastinate_app(database_url), jobs))
    finally:
        sweeper.stop()
        deferrer.stop()


async def _work(app: Any, jobs: BulkJobs) -> None:
    async with app.open_async():
        task = asyncio.create_task(
            app.run_worker_async(
                queues=[QUEUE],
                name="trialbridge-worker",
                fetch_job_polling_interval=1.0,
                delete_jobs="successful",
                install_signal_handlers=False,
            )
        )
        loop = asyncio.get_running_loop()

        def stop() -> None:
            log.info("stopping: the running job leaves at its next chunk")
            jobs.stopping.set()
            task.cancel()  # procrastinate then waits for the running task

        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, stop)
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_queue(jobs: BulkJobs, pulls: SourcePulls | None) -> JobQueue:
    """The queue the settings ask for."""
    settings = jobs.settings
    if settings.jobs_in_process():
        return InProcessQueue(jobs, pulls)
    return ProcrastinateQueue(settings.database_url)
