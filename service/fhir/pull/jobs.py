"""Pulls of the configured sources: run now (the CLI), or as a background job (the API)."""

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

from service.errors import ApiError
from service.fhir.interactions import FhirService
from service.fhir.pull.bulk import Puller, PullReport
from service.fhir.pull.client import HospitalClient, PullError, RetryPolicy
from service.fhir.pull.sources import HospitalSource, load_sources
from service.infra.clock import utcnow
from service.infra.db import reading, writing
from service.infra.settings import Settings
from service.repositories import source_pulls

log = logging.getLogger(__name__)


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
    """The configured sources and their pulls; at most one pull per source in this process."""

    def __init__(
        self,
        engine: Engine,
        store: FhirService,
        settings: Settings,
        sources: dict[str, HospitalSource] | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.engine = engine
        self.store = store
        self.settings = settings
        if sources is None:
            sources = load_sources(settings.sources_file) if settings.sources_file else {}
        self.sources = sources
        self.transport = transport  # a seam: tests play the hospital here
        self.sleep = sleep
        self._running: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

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
        """Pull the source now, in this thread; PullError when it cannot complete."""
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

    def start(self, source_id: str, *, full: bool = False) -> JobStatus:
        """Start a pull in a background thread; 409 `sync_running` while one runs."""
        self.source(source_id)
        job_id = str(uuid.uuid4())
        with self._lock:
            running = self._running.get(source_id)
            if running is not None and running.is_alive():
                raise ApiError(409, "sync_running", f"a pull of {source_id} is already running")
            with writing(self.engine) as session:
                source_pulls.add_job(session, job_id, source_id, utcnow(), _record({}, None))
            thread = threading.Thread(
                target=self._run, args=(source_id, job_id, full), name=f"pull-{source_id}"
            )
            thread.daemon = True
            self._running[source_id] = thread
            thread.start()
        return self.status(source_id, job_id)

    def _run(self, source_id: str, job_id: str, full: bool) -> None:
        last: list[tuple[str, PullReport]] = []

        def say(message: str, report: PullReport) -> None:
            last[:] = [(message, report)]
            with writing(self.engine) as session:
                source_pulls.update_job(
                    session, job_id, progress=_record(report.as_record(), message)
                )

        status, error = "succeeded", None
        try:
            report = self.pull(source_id, full=full, say=say)
            message = last[0][0] if last else None
            progress = _record(report.as_record(), message)
        except PullError as exc:
            status, error = "failed", str(exc)
            progress = _record(last[0][1].as_record(), last[0][0]) if last else _record({}, None)
        except Exception:  # a job must always end: record it, and the traceback goes to the log
            log.exception("pull of a source failed")
            status, error = "failed", "internal error (see the service log)"
            progress = _record({}, None)
        with writing(self.engine) as session:
            source_pulls.update_job(
                session, job_id, progress=progress, status=status, finished_at=utcnow(), error=error
            )

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
        """Until this process's pull of the source ends (tests and shutdown)."""
        thread = self._running.get(source_id)
        if thread is not None:
            thread.join(timeout)


def _record(progress: dict[str, Any], message: str | None) -> str:
    return json.dumps({"progress": progress, "message": message})
