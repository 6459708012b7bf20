"""Pulls of the configured sources: run now (the CLI), or as a background job (the API and the
schedule); each holds its source's lease so that one pull of a source runs at a time."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from service.errors import ApiError
from service.fhir.interactions import FhirService
from service.fhir.pull.bulk import Puller, PullReport
from service.fhir.pull.client import HospitalClient, PullError, RetryPolicy
from service.fhir.pull.sources import HospitalSource, load_sources
from service.infra.clock import utcnow
from service.infra.db import reading, writing
from service.infra.leases import LeaseKeeper
from service.infra.settings import Settings
from service.repositories import source_pulls

log = logging.getLogger(__name__)

# A running job's lease outlives a dead process by at most this long; a live one renews every third.
LEASE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A pull job: running, succeeded or failed, with its progress."""

    id: str
    source_id: str
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    progress: dict[str, Any]
    message: str | None
    error: str | None


class SourcePulls:
    """The configured sources and their pulls: at most one pull per source across processes
    (a running `pull_job` row holds the source's lease, renewed while the pull runs)."""

    def __init__(
        self,
        engine: Engine,
        store: FhirService,
        settings: Settings,
        sources: dict[str, HospitalSource] | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.engine = engine
        self.store = store
        self.settings = settings
        if sources is None:
            sources = load_sources(settings.sources_file) if settings.sources_file else {}
        self.sources = sources
        self.transport = transport  # a seam: tests play the hospital here
        self.sleep = sleep
        self.lease_seconds = lease_seconds
        self._running: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        # given, `start` hands each claimed pull to it (the job queue) instead of a thread here
        self.launcher: Callable[[str, str, bool], None] | None = None

    def source(self, source_id: str) -> HospitalSource:
        """The source, or 404 `source_not_found`."""
        found = self.sources.get(source_id)
        if found is None:
            raise ApiError(404, "source_not_found", f"no source {source_id[:64]!r} is configured")
        return found

    def pull(
        self,
        source_id: str,
        *,
        full: bool = False,
        say: Callable[[str, PullReport], None] | None = None,
    ) -> PullReport:
        """Pull the source now, in this thread, as a job holding the source's lease; 409
        `sync_running` while another pull of it runs anywhere; PullError when it cannot complete."""
        self.source(source_id)
        job_id = self._claim(source_id)
        report = self._run(source_id, job_id, full, say, reraise=True)
        assert report is not None
        return report

    def _pull(
        self, source_id: str, full: bool, say: Callable[[str, PullReport], None]
    ) -> PullReport:
        source = self.source(source_id)
        policy = RetryPolicy(
            max_retries=self.settings.pull_max_retries,
            max_wait_seconds=self.settings.pull_max_wait_seconds,
            timeout_seconds=self.settings.pull_timeout_seconds,
            sleep=self.sleep,
        )
        client = HospitalClient(source, policy, transport=self.transport)
        try:
            puller = Puller(
                self.engine, self.store, client, poll_limit=self.settings.pull_poll_limit, say=say
            )
            return puller.run(full=full)
        finally:
            client.close()

    def _claim(self, source_id: str) -> str:
        """A new running job holding the source's lease (taking over one whose lease expired);
        409 `sync_running` while another holds it, in this process or any other."""
        job_id = str(uuid.uuid4())
        now = utcnow()
        try:
            with writing(self.engine) as session:
                if source_pulls.abandon_expired(session, source_id, now):
                    log.warning("a pull of %s whose process stopped was taken over", source_id)
                until = now + dt.timedelta(seconds=self.lease_seconds)
                source_pulls.add_job(session, job_id, source_id, now, _record({}, None), until)
        except IntegrityError:
            raise ApiError(
                409, "sync_running", f"a pull of {source_id} is already running"
            ) from None
        return job_id

    def start(self, source_id: str, *, full: bool = False) -> JobStatus:
        """Start a pull in a background thread; 409 `sync_running` while one runs anywhere."""
        self.source(source_id)
        with self._lock:
            running = self._running.get(source_id)
            if running is not None and running.is_alive():
                raise ApiError(409, "sync_running", f"a pull of {source_id} is already running")
            job_id = self._claim(source_id)
            if self.launcher is not None:
                self.launcher(source_id, job_id, full)
                return self.status(source_id, job_id)
            thread = threading.Thread(
                target=self._run, args=(source_id, job_id, full), name=f"pull-{source_id}"
            )
            thread.daemon = True
            self._running[source_id] = thread
            thread.start()
        return self.status(source_id, job_id)

    def run_claimed(self, source_id: str, job_id: str, full: bool) -> None:
        """Run a pull `start` claimed, in this thread (a job queue's task)."""
        self._run(source_id, job_id, full)

    def _run(
        self,
        source_id: str,
        job_id: str,
        full: bool,
        echo: Callable[[str, PullReport], None] | None = None,
        *,
        reraise: bool = False,
    ) -> PullReport | None:
        """Run a claimed job to its end, renewing its lease, and record how it ended."""
        last: list[tuple[str, PullReport]] = []
        keeper = LeaseKeeper(
            self.engine,
            lambda session, until: source_pulls.renew_lease(session, job_id, until),
            self.lease_seconds,
            "pull",
        )

        def say(message: str, report: PullReport) -> None:
            if keeper.lost:
                raise PullError("the pull's lease was lost (another process took the source over)")
            last[:] = [(message, report)]
            with writing(self.engine) as session:
                source_pulls.update_job(
                    session, job_id, progress=_record(report.as_record(), message)
                )
            if echo is not None:
                echo(message, report)

        status, error = "succeeded", None
        report: PullReport | None = None
        failure: BaseException | None = None
        with keeper:
            try:
                report = self._pull(source_id, full, say)
                message = last[0][0] if last else None
                progress = _record(report.as_record(), message)
            except PullError as exc:
                status, error, failure = "failed", str(exc), exc
                progress = (
                    _record(last[0][1].as_record(), last[0][0]) if last else _record({}, None)
                )
            except Exception as exc:  # a job must always end: record it, the traceback to the log
                log.exception("pull of a source failed")
                status, error, failure = "failed", "internal error (see the service log)", exc
                progress = _record({}, None)
            with writing(self.engine) as session:
                source_pulls.update_job(
                    session,
                    job_id,
                    progress=progress,
                    status=status,
                    finished_at=utcnow(),
                    error=error,
                )
        if reraise and failure is not None:
            raise failure
        return report

    def status(self, source_id: str, job_id: str) -> JobStatus:
        """A job of the source, or 404 `job_not_found`."""
        self.source(source_id)
        with reading(self.engine) as session:
            row = source_pulls.job(session, source_id, job_id)
        if row is None:
            raise ApiError(404, "job_not_found", f"no pull job {job_id[:64]!r} of {source_id}")
        stored = json.loads(row.progress)
        return JobStatus(
            id=row.id,
            source_id=row.source_id,
            status=row.status,
            started_at=row.started_at,
            finished_at=row.finished_at,
            progress=stored.get("progress", {}),
            message=stored.get("message"),
            error=row.error,
        )

    def wait(self, source_id: str, timeout: float | None = None) -> None:
        """Until this process's pull of the source ends, or (started on a job queue) until no
        pull of it runs (tests and shutdown)."""
        thread = self._running.get(source_id)
        if thread is not None:
            thread.join(timeout)
            return
        deadline = time.monotonic() + (timeout if timeout is not None else 3600.0)
        while time.monotonic() < deadline:
            with reading(self.engine) as session:
                if source_pulls.running_job(session, source_id) is None:
                    return
            time.sleep(0.05)


def _record(progress: dict[str, Any], message: str | None) -> str:
    return json.dumps({"progress": progress, "message": message})
