"""Cohort outcomes computed off the request path: snapshots, and the thread that keeps them fresh.

A write that changes a study's cohort inputs adds a row to `study_change` in its own transaction
(derivation). Each server process runs one `CohortRefresher` thread: it notices changed studies
(its own writes at once, other processes' when it polls), waits until a study has been quiet for
the debounce time (or stale for the longest delay), takes the study's lease so that one process
computes it at a time, computes from the stored events, and stores the snapshot (outcomes JSON
with evidence sealed, and each figure's data: figures are drawn when first read, not here) while
deleting exactly the change rows it saw.
A change committed during the computation keeps its row, so the new snapshot is stale and
another pass follows. Reads (`cohort_reports`) only read snapshots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import orjson
from sqlalchemy import Engine
from sqlmodel import Session

from fhir_mapping.events.model import EventKind
from service.infra import metrics, migrate
from service.infra.clock import iso_utc, utcnow
from service.infra.db import writing
from service.infra.leases import LeaseKeeper
from service.infra.process import collector_paused
from service.privacy.evidence import Cited, minimised
from service.protocol.schema import StudyProtocol
from service.reads.access import read
from service.repositories import cohort_snapshots, eligibility_results, study_subjects, trial_events
from service.repositories.cohort_snapshots import Figure, ListingRow, SnapshotHead
from service.stats.balance import table_to_json
from service.studies.document import document_to_json, flow_to_json
from service.studies.kind import CohortData, CohortReport, Member, Screened
from service.studies.registry import kind_of

log = logging.getLogger(__name__)

# A lease outlives a crashed holder by at most this long; a live holder renews it every third.
LEASE_SECONDS = 60.0
# How soon to look again at a study another process is computing, or whose computation failed.
BUSY_RETRY_SECONDS = 0.25
FAILURE_RETRY_SECONDS = 30.0
Seal = Callable[[str, Cited], str]  # (study id, cited source) -> evidence id
Outcome = Literal["computed", "fresh", "busy", "lost", "failed"]


def _release() -> str:
    try:
        return version("trialbridge")
    except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return "unknown"


# How a snapshot is laid out; a new layout makes every stored snapshot stale (computed again).
# 2: per-subject and swimmer rows in listings of their own, not in the outcomes body.
SNAPSHOT_LAYOUT = 2


def basis_of(protocol: StudyProtocol) -> str:
    """What a snapshot was computed under: the protocol as loaded, the release computing it and
    the snapshot layout."""
    text = f"{protocol.model_dump_json()}\x1f{_release()}\x1f{SNAPSHOT_LAYOUT}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _jsonable(value: Any) -> Any:
    """JSON for what a study kind may put in its body beside plain JSON values."""
    if isinstance(value, dt.datetime):
        return iso_utc(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def to_json(value: Any) -> str:
    """Compact JSON, strict about non-finite numbers (what the API has always refused to send)."""
    return json.dumps(
        value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_jsonable
    )


def snapshot_digest(head: SnapshotHead, body: str, *more: str) -> str:
    """The validator of everything a snapshot's answers show except `stale` (`more`: the listing
    and the report document stored with it)."""
    h = hashlib.sha256()
    for part in (
        head.study_id,
        head.protocol_version,
        str(head.data_as_of),
        iso_utc(head.computed_at),
        head.plots,
        body,
        *more,
    ):
        h.update(part.encode())
        h.update(b"\x1f")
    return h.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Refreshed:
    """What one attempt to refresh a study did."""

    study_id: str
    outcome: Outcome  # computed | fresh (nothing to do) | busy (another holds the lease) | ...
    seconds: float = 0.0
    data_as_of: int | None = None


@dataclass(slots=True)
class _Watch:
    """A stale study this process is waiting to compute (monotonic times)."""

    newest: int | None  # the newest change number seen
    changed: float  # when a change was last noticed
    since: float  # when the study was first seen stale
    retry_at: float = 0.0


def kind_report(protocol: StudyProtocol, cohort: CohortData) -> CohortReport:
    """The study kind's cohort report (what the refresher computes unless told otherwise)."""
    return kind_of(protocol).cohort_report(protocol, cohort)


def _cohort(
    session: Session, study_id: str, zone: dt.tzinfo, protocol: StudyProtocol | None = None
) -> CohortData:
    """The study's subjects with their events (in the site's calendar) and its screening list;
    with the `protocol` of a kind that reduces its members, their records instead (`_records`)."""
    rows = study_subjects.study_subjects(session, study_id)
    kind = kind_of(protocol) if protocol is not None else None
    reduce = kind.reduce_member if kind is not None else None
    screened = [_screened(r) for r in eligibility_results.study_eligibility(session, study_id)]
    if protocol is not None and kind is not None and reduce is not None:
        records = _records(session, rows, zone, protocol, reduce, kind.days_only_events)
        return CohortData((), screened, records)
    events = trial_events.events_of(session, [r.patient_id for r in rows], zone=zone)
    members = [
        Member(r.patient_id, r.subject_id, r.status, r.day1, events[r.patient_id]) for r in rows
    ]
    return CohortData(members, screened)


def _records(
    session: Session,
    rows: Sequence[Any],
    zone: dt.tzinfo,
    protocol: StudyProtocol,
    reduce: Callable[[Any, Member], Any],
    days_only: frozenset[EventKind] = frozenset(),
) -> list[Any]:
    """Each member reduced as soon as its chunk of events is read, its events dropped then: the
    process holds one chunk's events and the records, not every member's events. Events of the
    `days_only` kinds are never built: the member has their latest day seen instead."""
    row_of = {r.patient_id: r for r in rows}  # a patient is a study's subject once
    records: list[Any] = []
    chunks = trial_events.events_and_days_by_chunk(
        session, list(row_of), zone=zone, days_only=days_only
    )
    # closed here, not when a traceback lets go of this frame: a failing reduction must not leave
    # the fetch ahead running on the connection after the session has given it back
    with contextlib.closing(chunks):
        for events, seen in chunks:
            for patient_id in list(events):  # the chunk's patients, in the rows' order
                r, own = row_of[patient_id], events.pop(patient_id)  # its events go once reduced
                member = Member(
                    patient_id, r.subject_id, r.status, r.day1, own, seen.get(patient_id)
                )
                records.append(reduce(protocol, member))
    return records


def _json(text: str) -> Any:
    """A stored JSON text: orjson (a cohort's screening list is 10^4+ rows), or the standard
    library for what orjson refuses and `json.dumps` may have written (NaN, huge integers)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _screened(row: Any) -> Screened:
    """A stored screening row as the kinds read it (criteria from its stored payload)."""
    payload = _json(row.payload)
    criteria = payload.get("criteria") if isinstance(payload, dict) else None
    as_of = row.as_of if isinstance(row.as_of, dt.date) else dt.date.fromisoformat(str(row.as_of))
    return Screened(
        patient_id=row.patient_id,
        subject_id=row.subject_id,
        overall=row.overall,
        at_enrollment=row.at_enrollment,
        as_of=as_of,
        criteria=tuple(c for c in criteria or () if isinstance(c, dict)),
    )


@dataclass(frozen=True, slots=True)
class _Stored:
    """A computed report in the form a snapshot stores (evidence sealed)."""

    body: str
    plots: str
    figures: dict[str, str]  # name -> the figure's data (FigureData JSON)
    listings: dict[str, list[ListingRow]]  # listing name -> its rows, in subject-id order
    document: str | None


def _stored(study_id: str, report: CohortReport, seal: Seal, kept: frozenset[str]) -> _Stored:
    """The report's outcomes (with its flow and Table 1), listings and document as stored JSON;
    `kept`: the listings its kind serves (rows of another would be stored and never answered)."""

    def sealed(value: Any) -> Any:
        return minimised(value, lambda cited: seal(study_id, cited))

    outcomes = dict(report.body)
    if report.flow is not None:
        outcomes["flow"] = flow_to_json(report.flow)
    if report.table1 is not None:
        outcomes["table1"] = table_to_json(report.table1)
    found = {name: rows for name, rows in report.listings().items() if rows}
    unserved = set(found) - kept
    if unserved:
        raise ValueError(f"{study_id}: rows for listings its kind does not serve: {unserved}")
    listings: dict[str, list[ListingRow]] = {
        name: [
            ListingRow(
                r.subject_id, to_json(sealed({"subject_id": r.subject_id, **dict(r.fields)}))
            )
            for r in rows
        ]
        for name, rows in found.items()
    }
    document = report.document() if report.document is not None else None
    return _Stored(
        body=to_json(sealed(outcomes)),
        plots=to_json(sorted(report.plots)),
        figures={name: data.to_json() for name, data in sorted(report.plots.items())},
        listings=listings,
        document=to_json(document_to_json(document)) if document is not None else None,
    )


class CohortRefresher:
    """Keeps every study's cohort snapshot fresh, off the request path, one computation at a time.

    `interval_seconds` is how often it looks for changes other processes made (0: this process
    computes only when `?fresh=true` asks it to); `debounce_seconds` how long a study must be quiet
    before it is computed; `max_delay_seconds` how long a study may stay stale under steady writes.
    """

    def __init__(
        self,
        engine: Engine,
        protocols: Mapping[str, StudyProtocol],
        seal: Seal,
        *,
        interval_seconds: float = 2.0,
        debounce_seconds: float = 1.0,
        max_delay_seconds: float = 30.0,
        owner: str | None = None,
        zone: dt.tzinfo = dt.UTC,
    ) -> None:
        self.engine = engine
        self.protocols = dict(protocols)
        self.zone = zone  # the site's time zone: events are read in its calendar
        self.seal = seal
        self.interval = interval_seconds
        self.debounce = debounce_seconds
        self.max_delay = max_delay_seconds
        self.owner = (owner or f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}")[
            :64
        ]
        self.basis = {study_id: basis_of(p) for study_id, p in self.protocols.items()}
        # the computation itself; a test may wrap it to act while a computation runs
        self.report_of: Callable[[StudyProtocol, CohortData], CohortReport] = kind_report
        self._lock = threading.Lock()
        self._watch: dict[str, _Watch] = {}
        self._forced: dict[str, int] = {}
        self._rebased: set[str] = set()  # studies recomputed once for another release's snapshot
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stored = threading.Condition()
        self._thread: threading.Thread | None = None
        self._schema_ready = False
        self._waiting_logged = False

    @property
    def automatic(self) -> bool:
        """Whether this process computes stale studies by itself."""
        return self.interval > 0

    # -- the thread -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (it makes a first pass at once: studies with no snapshot yet)."""
        self._thread = threading.Thread(target=self._run, name="cohort-refresher", daemon=True)
        self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        """Finish the current computation and stop (a long one is left to its lease)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            if self._thread.is_alive():
                log.warning("the cohort refresher is still computing; its lease will expire")

    def notice(self, study_ids: frozenset[str]) -> None:
        """A write of this process changed these studies (called after its commit)."""
        if not self.automatic:
            return
        now = time.monotonic()
        with self._lock:
            for study_id in study_ids & self.protocols.keys():
                watch = self._watch.get(study_id)
                if watch is None:
                    self._watch[study_id] = _Watch(None, now, now)
                else:
                    watch.changed = now
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._next_wait())
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if self._ready():
                    self.run_pass()
            except Exception:  # the database may be briefly down; the change log keeps everything
                log.exception("cohort refresh pass failed; will retry")
                self._stop.wait(min(FAILURE_RETRY_SECONDS, max(self.interval, 1.0)))

    def _ready(self) -> bool:
        """Whether the snapshot tables exist: a server may start before the release migrates."""
        if self._schema_ready:
            return True
        revision, head = migrate.current_revision(self.engine), migrate.head_revision()
        self._schema_ready = revision == head
        if not self._schema_ready and not self._waiting_logged:
            log.warning(
                "cohort refresh waits for the schema: at revision %s, this release needs %s",
                revision or "none",
                head,
            )
            self._waiting_logged = True
        return self._schema_ready

    def _next_wait(self) -> float | None:
        """Seconds until the next study falls due, or the next poll; None: until woken."""
        now = time.monotonic()
        with self._lock:
            due = [
                max(
                    w.retry_at,
                    now
                    if self._forced.get(s)
                    else min(w.changed + self.debounce, w.since + self.max_delay),
                )
                for s, w in self._watch.items()
            ]
        wait = [max(d - now, 0.01) for d in due]
        if self.automatic:
            wait.append(self.interval)
        return min(wait) if wait else None

    # -- passes -----------------------------------------------------------------------------------

    def run_pass(self, *, everything: bool = False, force: bool = False) -> list[Refreshed]:
        """Compute the studies that are due. `everything`: every stale study now, no debounce
        (the CLI's one pass); `force`: every study, stale or not."""
        heads, pending = read(self.engine, _state)
        now = time.monotonic()
        results: list[Refreshed] = []
        for study_id in sorted(self.protocols):
            head, changes = heads.get(study_id), pending.get(study_id)
            with self._lock:
                forced = self._forced.get(study_id, 0) > 0
                # another release's snapshot: recomputed once, not back and forth with it
                rebase = (
                    head is not None
                    and head.basis != self.basis[study_id]
                    and (forced or study_id not in self._rebased)
                )
                stale = head is None or changes is not None or rebase
                if not (stale or force):
                    self._watch.pop(study_id, None)
                    continue
                if not (self.automatic or forced or everything or force):
                    continue
                watch = self._watch.get(study_id)
                newest = changes.newest if changes is not None else None
                if watch is None:
                    # nothing to wait for without changes (no snapshot yet, another release's)
                    quiet_since = now if changes is not None else -math.inf
                    watch = self._watch[study_id] = _Watch(newest, quiet_since, now)
                elif newest != watch.newest:
                    watch.newest, watch.changed = newest, now
                due = (
                    everything
                    or force
                    or forced
                    or (
                        now >= watch.retry_at
                        and (
                            now - watch.changed >= self.debounce
                            or now - watch.since >= self.max_delay
                        )
                    )
                )
            if not due:
                continue
            result = self.refresh(study_id, force=force)
            results.append(result)
            with self._lock:
                if result.outcome in ("computed", "fresh"):
                    self._watch.pop(study_id, None)
                    if rebase:
                        self._rebased.add(study_id)
                elif result.outcome == "busy":
                    watch.retry_at = time.monotonic() + BUSY_RETRY_SECONDS
                elif result.outcome == "failed":
                    watch.retry_at = time.monotonic() + FAILURE_RETRY_SECONDS
        return results

    # -- one study --------------------------------------------------------------------------------

    def refresh(self, study_id: str, *, force: bool = False) -> Refreshed:
        """Compute and store one study's snapshot under its lease, unless it is fresh already."""
        now = utcnow()
        with writing(self.engine) as session:
            taken = cohort_snapshots.acquire_lease(
                session, study_id, self.owner, now, now + dt.timedelta(seconds=LEASE_SECONDS)
            )
        if not taken:
            return Refreshed(study_id, "busy")
        try:
            with LeaseKeeper(
                self.engine,
                lambda session, until: cohort_snapshots.renew_lease(
                    session, study_id, self.owner, until
                ),
                LEASE_SECONDS,
                "cohort",
            ) as keeper:
                if not force:
                    head = self.fresh_head(study_id)
                    if head is not None:  # another process stored it while we waited
                        return Refreshed(study_id, "fresh", data_as_of=head.data_as_of)
                return self._compute(study_id, keeper)
        finally:
            try:
                with writing(self.engine) as session:
                    cohort_snapshots.release_lease(session, study_id, self.owner)
            except Exception:  # it expires by itself
                log.warning("releasing a cohort lease failed", exc_info=True)
            with self._stored:
                self._stored.notify_all()

    def _compute(self, study_id: str, keeper: LeaseKeeper) -> Refreshed:
        protocol = self.protocols[study_id]
        started = time.perf_counter()
        try:
            # the change numbers first: the data read after them reflects at least those changes
            ids = read(self.engine, lambda s: cohort_snapshots.pending_ids(s, study_id))
            with collector_paused():  # a large, live, acyclic build: collections only cost
                cohort = read(self.engine, lambda s: _cohort(s, study_id, self.zone, protocol))
                report = self.report_of(protocol, cohort)
                del cohort
                stored = _stored(study_id, report, self.seal, kind_of(protocol).listings)
                del report
            seconds = time.perf_counter() - started
            data_as_of = None if keeper.lost else self._store(protocol, ids, stored, seconds)
        except Exception:
            metrics.COHORT_COMPUTATIONS.labels(study_id, "failed").inc()
            log.exception("computing the cohort outcomes of %s failed", study_id)
            return Refreshed(study_id, "failed", time.perf_counter() - started)
        metrics.COHORT_COMPUTE_SECONDS.labels(study_id).observe(seconds)
        if data_as_of is None:
            metrics.COHORT_COMPUTATIONS.labels(study_id, "discarded").inc()
            log.warning("the cohort lease of %s was lost during its computation", study_id)
            return Refreshed(study_id, "lost", seconds)
        metrics.COHORT_COMPUTATIONS.labels(study_id, "stored").inc()
        log.info(
            "cohort outcomes of %s computed in %.2f s (data as of change %d)",
            study_id,
            seconds,
            data_as_of,
        )
        return Refreshed(study_id, "computed", seconds, data_as_of)

    def _store(
        self,
        protocol: StudyProtocol,
        ids: Sequence[int],
        stored: _Stored,
        seconds: float,
    ) -> int | None:
        """Store the snapshot and consume its changes, if the lease is still ours."""
        study_id = protocol.id
        with writing(self.engine) as session:
            until = utcnow() + dt.timedelta(seconds=LEASE_SECONDS)
            if not cohort_snapshots.renew_lease(session, study_id, self.owner, until):
                return None
            before = cohort_snapshots.snapshot_head(session, study_id)
            cohort_snapshots.consume(session, study_id, ids)
            data_as_of = max([*ids, before.data_as_of if before is not None else 0])
            head = SnapshotHead(
                study_id=study_id,
                protocol_version=protocol.version,
                basis=self.basis[study_id],
                data_as_of=data_as_of,
                computed_at=utcnow(),
                compute_seconds=round(seconds, 3),
                digest="",
                plots=stored.plots,
            )
            listing = "\n".join(
                f"{name}\x1f{r.body}" for name, rows in stored.listings.items() for r in rows
            )
            figures = "\n".join(f"{name}\x1f{data}" for name, data in stored.figures.items())
            digest = snapshot_digest(head, stored.body, listing, stored.document or "", figures)
            head = dataclasses.replace(head, digest=digest)
            cohort_snapshots.store_snapshot(
                session,
                head,
                stored.body,
                # each figure's data, tagged with the snapshot it belongs to (drawn when read)
                [
                    Figure(name, cohort_snapshots.FIGURE_DATA, digest, data.encode())
                    for name, data in stored.figures.items()
                ],
                document=stored.document,
                listings=stored.listings,
            )
        return data_as_of

    # -- fresh ------------------------------------------------------------------------------------

    def fresh_head(self, study_id: str, up_to: int | None = None) -> SnapshotHead | None:
        """The study's snapshot if it is fresh: this release's, reflecting every change
        (numbered `up_to` or lower, if given)."""

        def check(session: Session) -> SnapshotHead | None:
            head = cohort_snapshots.snapshot_head(session, study_id)
            if head is None or head.basis != self.basis[study_id]:
                return None
            return None if cohort_snapshots.has_pending(session, study_id, up_to) else head

        return read(self.engine, check)

    def wait_fresh(self, study_id: str, timeout: float) -> SnapshotHead | None:
        """Wait (at most `timeout` seconds) for a snapshot reflecting every change made so far,
        computed now without the debounce if need be; None when the time ran out."""
        deadline = time.monotonic() + timeout
        target = read(self.engine, lambda s: cohort_snapshots.newest_change(s, study_id))
        with self._lock:
            self._forced[study_id] = self._forced.get(study_id, 0) + 1
        try:
            self._wake.set()
            while True:
                head = self.fresh_head(study_id, target)
                if head is not None:
                    return head
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if self._thread is None or not self._thread.is_alive():
                    # no thread in this process (a command): compute here
                    if self.refresh(study_id).outcome == "busy":
                        time.sleep(min(left, BUSY_RETRY_SECONDS))
                    continue
                with self._stored:  # woken by our own stores; others' are seen by polling
                    self._stored.wait(min(left, 0.1))
        finally:
            with self._lock:
                self._forced[study_id] -= 1
                if not self._forced[study_id]:
                    del self._forced[study_id]


def _state(
    session: Session,
) -> tuple[dict[str, SnapshotHead], dict[str, cohort_snapshots.Pending]]:
    """Every snapshot's head and every study's unreflected changes."""
    heads = {h.study_id: h for h in cohort_snapshots.snapshot_heads(session)}
    return heads, cohort_snapshots.pending(session)
