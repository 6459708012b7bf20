"""Read use cases of the study API: studies, their subjects, and a subject's timeline."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from sqlalchemy import Engine
from sqlmodel import Session

from fhir_mapping.events.model import TrialEvent
from fhir_mapping.partial_dates import in_zone, parse_partial_date, study_day
from service.errors import ApiError
from service.infra.clock import utcnow
from service.infra.db import reading_rows
from service.infra.loop_reads import LoopReads
from service.protocol.schema import StudyProtocol
from service.reads.access import capability, find_protocol, read
from service.reads.paging import decode_cursor, encode_cursor
from service.reads.results import (
    Candidate,
    CandidateEligibility,
    ScreeningPage,
    StudyRef,
    Subject,
    SubjectEndpoints,
    SubjectPage,
    Timeline,
    TimelineEntry,
)
from service.reads.subject_cache import SubjectCache
from service.repositories import eligibility_results, study_subjects, trial_events
from service.studies.registry import kind_of

T = TypeVar("T")
R = TypeVar("R")  # a rendered answer (the API's JSON bytes), kept in the subject cache
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024


def subject_statuses(protocol: StudyProtocol) -> frozenset[str]:
    """Statuses membership can give in this study's kind: others match no subject."""
    return kind_of(protocol).subject_statuses


def _subject(row: Any) -> Subject:
    return Subject(
        subject_id=row.subject_id,
        subject_number=row.subject_number,
        status=row.status,
        enrolled_on=row.enrolled_on,
        day1=row.day1,
        updated_at=row.updated_at,
    )


def _timeline_key(event: TrialEvent) -> tuple[Any, ...]:
    if event.date is None:
        return (1, dt.date.max, dt.datetime.max.replace(tzinfo=dt.UTC), event.kind.value, "")
    first, moment = event.date.sort_key()
    return (0, first, moment, event.kind.value, event.source.resource_id)


def _entry(event: TrialEvent, day1: dt.date | None) -> TimelineEntry:
    day = event.date.day if event.date else None
    return TimelineEntry(
        event, study_day(day, day1) if day is not None and day1 is not None else None
    )


@dataclass(frozen=True)
class StudyReader:
    """Reads for the study API, over one engine and the loaded protocols."""

    engine: Engine
    protocols: dict[str, StudyProtocol]
    zone: dt.tzinfo = dt.UTC  # the site's time zone: events are read in its calendar
    # rendered per-subject answers of this process (service.reads.subject_cache)
    cache: SubjectCache[Any] = field(default_factory=lambda: SubjectCache(DEFAULT_CACHE_BYTES))
    # the read-token check of a cached answer, made on the event loop
    loop_reads: LoopReads = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "loop_reads", LoopReads(self.engine))  # frozen: set once here

    def protocol(self, study_id: str) -> StudyProtocol:
        """The protocol of a study this deployment serves, else 404."""
        return find_protocol(self.protocols, study_id)

    def _read(self, work: Callable[[Session], T]) -> T:
        return read(self.engine, work)

    def _subject_events(self, study_id: str, subject_id: str) -> tuple[Any, list[TrialEvent]]:
        """A subject's row and all of its events, read together; 404 for an unknown subject."""

        def work(session: Session) -> tuple[Any, list[TrialEvent]]:
            row = study_subjects.find_subject(session, study_id, subject_id)
            if row is None:
                return None, []
            return row, trial_events.events_of(session, [row.patient_id], zone=self.zone)[
                row.patient_id
            ]

        row, events = self._read(work)
        if row is None:
            raise ApiError(
                404, "subject_not_found", f"no subject {subject_id!r} in study {study_id}"
            )
        return row, events

    def _rendered(
        self,
        read: str,
        study_id: str,
        subject_id: str,
        render: Callable[[Any, list[TrialEvent]], R],
    ) -> R:
        """`render(row, events)` of a subject, or what it gave while the row's read token is the
        one it was given with (the token and the events are read in one session, token first:
        the events are at least as new as the token says)."""
        key = (read, study_id, subject_id)
        with reading_rows(self.engine) as conn:  # the hot path: one indexed row, no ORM session
            exists, token = study_subjects.read_token(conn, study_id, subject_id)
        cached = self.cache.get(key, token) if exists and token is not None else None
        if cached is not None:
            return cast(R, cached)

        def work(session: Session) -> tuple[Any, Any, list[TrialEvent]]:
            row = study_subjects.find_subject(session, study_id, subject_id)
            if row is None:
                return None, None, []
            hit = self.cache.get(key, row.read_token) if row.read_token is not None else None
            if hit is not None:
                return row, hit, []
            events = trial_events.events_of(session, [row.patient_id], zone=self.zone)
            return row, None, events[row.patient_id]

        row, hit, events = self._read(work)
        if row is None:
            raise ApiError(
                404, "subject_not_found", f"no subject {subject_id!r} in study {study_id}"
            )
        if hit is not None:
            return cast(R, hit)
        value = render(row, events)
        if row.read_token is not None:
            self.cache.put(key, row.read_token, value)
        return value

    async def _kept(self, read: str, study_id: str, subject_id: str, token_sql: str) -> Any | None:
        """The answer kept for `read` of this subject if the read token it was rendered at is
        still the stored one, asked on the event loop; None when that is not known here (nothing
        kept, another token, a lock, a failed lookup): the caller reads in a worker thread
        (`timeline_answer` and the others), which checks the token again."""
        if not self.loop_reads.enabled or not self.cache.holds((read, study_id, subject_id)):
            return None
        token = await self.loop_reads.lookup(token_sql, (study_id, subject_id))
        return None if token is None else self.cache.get((read, study_id, subject_id), token)

    async def timeline_kept(self, study_id: str, subject_id: str) -> Any | None:
        """`timeline_answer`'s kept answer while it is current, without a thread, else None."""
        self.protocol(study_id)  # an unknown study is a 404 as on the full path
        return await self._kept("timeline", study_id, subject_id, study_subjects.READ_TOKEN_SQL)

    async def outcomes_kept(self, study_id: str, subject_id: str) -> Any | None:
        """`outcomes_answer`'s kept answer while it is current, without a thread, else None."""
        capability(self.protocols, study_id, "subject_outcomes", "per-subject trial outcomes")
        return await self._kept("outcomes", study_id, subject_id, study_subjects.READ_TOKEN_SQL)

    async def stored_eligibility_kept(self, study_id: str, subject_id: str) -> Any | None:
        """`stored_eligibility_answer`'s kept answer while it is current, without a thread."""
        capability(self.protocols, study_id, "screening", "eligibility criteria")
        return await self._kept(
            "eligibility", study_id, subject_id, eligibility_results.READ_TOKEN_SQL
        )

    def subjects(
        self,
        study_id: str,
        *,
        cursor: str | None,
        limit: int,
        status: str | None,
        subject_number: str | None,
    ) -> SubjectPage:
        """A page of a study's subjects, with the cursor of the next page."""
        protocol = self.protocol(study_id)
        known = subject_statuses(protocol)
        if status is not None and status not in known:
            raise ApiError(
                422,
                "invalid_request",
                "the request is not valid",
                [{"loc": ["query", "status"], "msg": f"must be one of {', '.join(sorted(known))}"}],
            )
        after = decode_cursor(cursor) if cursor else None
        rows = self._read(
            lambda s: study_subjects.list_subjects(
                s,
                study_id,
                after=after,
                limit=limit + 1,
                status=status,
                subject_number=subject_number,
            )
        )
        page = rows[:limit]
        more = len(rows) > limit
        return SubjectPage(
            StudyRef.of(protocol),
            [_subject(r) for r in page],
            encode_cursor(page[-1].subject_id) if more and page else None,
        )

    def timeline(self, study_id: str, subject_id: str) -> Timeline:
        """A subject's events in study-day order, each with its evidence."""
        protocol = self.protocol(study_id)
        row, events = self._subject_events(study_id, subject_id)
        ordered = sorted(events, key=_timeline_key)
        return Timeline(
            StudyRef.of(protocol), _subject(row), utcnow(), [_entry(e, row.day1) for e in ordered]
        )

    def timeline_answer(self, study_id: str, subject_id: str, render: Callable[[Timeline], R]) -> R:
        """`render` of the subject's timeline, served again while the subject's data is unchanged
        (its `computed_at` is for the caller to set: the answer is current at each request)."""
        protocol = self.protocol(study_id)

        def build(row: Any, events: list[TrialEvent]) -> R:
            ordered = sorted(events, key=_timeline_key)
            return render(
                Timeline(
                    StudyRef.of(protocol),
                    _subject(row),
                    utcnow(),
                    [_entry(e, row.day1) for e in ordered],
                )
            )

        return self._rendered("timeline", study_id, subject_id, build)

    def outcomes_answer(
        self, study_id: str, subject_id: str, render: Callable[[SubjectEndpoints], R]
    ) -> R:
        """`render` of the subject's endpoints, served again while the subject's data is
        unchanged (as `timeline_answer`)."""
        protocol, outcomes_of = capability(
            self.protocols, study_id, "subject_outcomes", "per-subject trial outcomes"
        )

        def build(row: Any, events: list[TrialEvent]) -> R:
            endpoints = outcomes_of(protocol, events, row.day1)
            return render(SubjectEndpoints(StudyRef.of(protocol), subject_id, utcnow(), endpoints))

        return self._rendered("outcomes", study_id, subject_id, build)

    def outcomes(self, study_id: str, subject_id: str) -> SubjectEndpoints:
        """Per-subject endpoints: time to surgery, MPR, pCR, EFS, OS, safety."""
        protocol, outcomes_of = capability(
            self.protocols, study_id, "subject_outcomes", "per-subject trial outcomes"
        )
        row, events = self._subject_events(study_id, subject_id)
        endpoints = outcomes_of(protocol, events, row.day1)
        return SubjectEndpoints(StudyRef.of(protocol), subject_id, utcnow(), endpoints)

    def screening(
        self, study_id: str, *, cursor: str | None, limit: int, overall: str | None
    ) -> ScreeningPage:
        """The screening list: every candidate's overall status and verdict counts."""
        protocol, _ = capability(self.protocols, study_id, "screening", "eligibility criteria")
        after = decode_cursor(cursor) if cursor else None
        rows = self._read(
            lambda s: eligibility_results.list_eligibility(
                s, study_id, after=after, limit=limit + 1, overall=overall
            )
        )
        page = rows[:limit]
        candidates = [
            Candidate(
                subject_id=r.subject_id,
                overall=r.overall,
                met=r.n_met,
                not_met=r.n_not_met,
                unknown=r.n_unknown,
                at_enrollment=r.at_enrollment,
                as_of=r.as_of,
                computed_at=r.computed_at,
            )
            for r in page
        ]
        more = len(rows) > limit and page
        return ScreeningPage(
            StudyRef.of(protocol), candidates, encode_cursor(page[-1].subject_id) if more else None
        )

    def stored_eligibility_answer(
        self, study_id: str, subject_id: str, render: Callable[[CandidateEligibility], R]
    ) -> R:
        """`render` of the candidate's stored result, served again while the stored row holds the
        read token it was rendered at (every write of the row gives it a new one)."""
        protocol, _ = capability(self.protocols, study_id, "screening", "eligibility criteria")
        key = ("eligibility", study_id, subject_id)
        with reading_rows(self.engine) as conn:  # the hot path: one indexed column, no ORM
            exists, token = eligibility_results.read_token(conn, study_id, subject_id)
            cached = self.cache.get(key, token) if exists and token is not None else None
            if cached is not None:
                return cast(R, cached)
            row = eligibility_results.find_eligibility(conn, study_id, subject_id)
        if row is None:
            raise ApiError(
                404,
                "subject_not_found",
                f"no screening candidate {subject_id!r} in study {study_id}",
            )
        # the token and the content come from one row, read together
        value = render(_stored_eligibility(protocol, subject_id, row))
        if row.read_token is not None:
            self.cache.put(key, row.read_token, value)
        return value

    def subject_eligibility(
        self, study_id: str, subject_id: str, as_of: str | None
    ) -> CandidateEligibility:
        """A candidate's criteria: the stored result, or computed on demand for a given day."""
        protocol, screening = capability(
            self.protocols, study_id, "screening", "eligibility criteria"
        )
        day = parse_as_of(as_of, self.zone) if as_of is not None else None

        def work(session: Session) -> tuple[Any, list[TrialEvent]]:
            row = eligibility_results.find_eligibility(session, study_id, subject_id)
            if row is None or day is None:
                return row, []
            return row, trial_events.events_of(session, [row.patient_id], zone=self.zone)[
                row.patient_id
            ]

        row, events = self._read(work)
        if row is None:
            raise ApiError(
                404,
                "subject_not_found",
                f"no screening candidate {subject_id!r} in study {study_id}",
            )
        if day is None:
            return _stored_eligibility(protocol, subject_id, row)
        verdicts = screening(protocol, events, day)
        return CandidateEligibility(
            StudyRef.of(protocol), subject_id, utcnow(), verdicts, row.at_enrollment
        )


def _stored_eligibility(protocol: StudyProtocol, subject_id: str, row: Any) -> CandidateEligibility:
    stored = json.loads(row.payload)
    stored.pop("at_enrollment", None)
    return CandidateEligibility(
        StudyRef.of(protocol), subject_id, row.computed_at, stored, row.at_enrollment
    )


_ZONE = re.compile(r"(?:Z|[+-]\d{2}:\d{2})$")
# Eligibility counts back weeks from the as-of day (and forward from dates near it): keep it far
# from date.min and date.max so no date arithmetic can overflow.
AS_OF_FIRST = dt.date(1900, 1, 1)
AS_OF_LAST = dt.date(9000, 12, 31)


def parse_as_of(text: str, zone: dt.tzinfo = dt.UTC) -> dt.date:
    """An as-of day: a full date, or a dateTime with its zone (its local day is used; a UTC one's
    day is the site's, in `zone`)."""
    parsed = parse_partial_date(text) if text.isascii() else None  # `\d` also matches '٢'
    parsed = in_zone(parsed, zone) if parsed is not None else None
    zoned = parsed is not None and (parsed.precision != "time" or _ZONE.search(text) is not None)
    if (
        parsed is None
        or parsed.day is None
        or not zoned
        or not AS_OF_FIRST <= parsed.day <= AS_OF_LAST
    ):
        shown = text if len(text) <= 100 else text[:100] + "…"
        raise ApiError(
            400,
            "invalid_as_of",
            f"as_of {shown!r} must be a date (2025-03-15) or a dateTime with a zone, "
            f"from {AS_OF_FIRST.isoformat()} to {AS_OF_LAST.isoformat()}",
        )
    return parsed.day
