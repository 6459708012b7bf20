"""The pull schedule: one thread per server process starts each source's pull when it falls due.

A source is due when its newest job (from any process, however it was started) began at least its
interval ago. The job's lease decides who runs it: when two processes find a source due at once,
one starts the pull and the other gets `sync_running` and waits for the next turn.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from service.errors import ApiError
from service.fhir.pull.jobs import SourcePulls
from service.infra import migrate
from service.infra.clock import utcnow
from service.infra.db import reading
from service.repositories import source_pulls

log = logging.getLogger(__name__)

# The longest sleep: a pull another process started is noticed at least this often.
MAX_WAIT_SECONDS = 30.0
# How soon to look again at a source whose pull is running, or whose start failed.
BUSY_WAIT_SECONDS = 5.0


class PullScheduler:
    """Starts the scheduled sources' incremental pulls as they fall due."""

    def __init__(self, pulls: SourcePulls) -> None:
        self.pulls = pulls
        default = pulls.settings.pull_interval_seconds
        self.intervals = {
            source_id: seconds
            for source_id, source in sorted(pulls.sources.items())
            if (seconds := source.interval_seconds(default)) > 0
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._schema_ready = False

    def start(self) -> None:
        """Start the thread, if any source is scheduled."""
        if not self.intervals:
            return
        log.info("pull schedule: %d source(s)", len(self.intervals))
        self._thread = threading.Thread(target=self._run, name="pull-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop starting pulls (a running one ends with the process; its lease then expires)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.run_once() if self._ready() else MAX_WAIT_SECONDS
            except Exception:  # the database may be briefly away: try again later
                log.exception("the pull schedule failed to look at its sources; will retry")
                wait = BUSY_WAIT_SECONDS
            self._stop.wait(wait)

    def _ready(self) -> bool:
        """Whether the lease column exists: a server may start before the release migrates."""
        if not self._schema_ready:
            self._schema_ready = (
                migrate.current_revision(self.pulls.engine) == migrate.head_revision()
            )
        return self._schema_ready

    def run_once(self) -> float:
        """Start every due source's pull; the seconds until the next one may fall due."""
        waits = [MAX_WAIT_SECONDS]
        for source_id, interval in self.intervals.items():
            waits.append(self._visit(source_id, interval))
        return max(min(waits), 0.05)

    def _visit(self, source_id: str, interval: float) -> float:
        with reading(self.pulls.engine) as session:
            latest = source_pulls.latest_job(session, source_id)
        now = utcnow()
        if latest is not None:
            if latest.running and latest.lease_until is not None and latest.lease_until > now:
                return min(interval, BUSY_WAIT_SECONDS)
            due = latest.started_at + dt.timedelta(seconds=interval)
            if not latest.running and due > now:
                return (due - now).total_seconds()
            # due, or running under an expired lease: starting takes the dead job over
        try:
            self.pulls.start(source_id)
        except ApiError as exc:  # another process started it first
            if exc.code != "sync_running":
                raise
            return min(interval, BUSY_WAIT_SECONDS)
        log.info("scheduled pull of %s started", source_id)
        return interval
