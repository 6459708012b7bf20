"""JSON shapes of the study API: typed service results in, wire dictionaries out."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from api import schemas
from service.infra.clock import iso_utc
from service.privacy.ages import whole_years
from service.privacy.evidence import Cited, minimised
from service.protocol.schema import StudyProtocol
from service.reads.results import (
    CandidateEligibility,
    CohortOutcomes,
    DeviationDetail,
    DeviationPage,
    ListingPage,
    ScreeningPage,
    StudyRef,
    Subject,
    SubjectEndpoints,
    SubjectPage,
    Timeline,
    TimelineEntry,
)
from service.repositories.webhook_outbox import Subscription
from service.stats.figures import MEDIA_TYPES

_HEADER_KEYS = ("kind", "id", "version", "title", "sources")
Seal = Callable[[Cited], str]  # a study's evidence ids (service.privacy.evidence)


def study_summary(protocol: StudyProtocol) -> dict[str, Any]:
    """What a list of studies shows."""
    return {
        "id": protocol.id,
        "version": protocol.version,
        "title": protocol.title,
        "kind": protocol.kind,
    }


def study_detail(protocol: StudyProtocol) -> dict[str, Any]:
    """The study with every protocol setting (windows, doses, criteria, choices)."""
    dumped = protocol.model_dump(mode="json")
    settings = {k: v for k, v in dumped.items() if k not in _HEADER_KEYS}
    return {**study_summary(protocol), "sources": list(protocol.sources), "settings": settings}


def _study(ref: StudyRef) -> dict[str, str]:
    return {"id": ref.id, "version": ref.version}


def _subject(s: Subject) -> dict[str, Any]:
    return {
        "subject_id": s.subject_id,
        "subject_number": s.subject_number,
        "status": s.status,
        "enrolled_on": s.enrolled_on.isoformat() if s.enrolled_on else None,
        "day1": s.day1.isoformat() if s.day1 else None,
        "updated_at": iso_utc(s.updated_at),
    }


def subject_page(page: SubjectPage) -> dict[str, Any]:
    """GET /studies/{id}/subjects."""
    return {
        "study": _study(page.study),
        "subjects": [_subject(s) for s in page.subjects],
        "next_cursor": page.next_cursor,
    }


def _timeline_entry(entry: TimelineEntry, anchor: dt.date | None, seal: Seal) -> dict[str, Any]:
    body = {**entry.event.to_json(), "study_day": entry.study_day}
    if body["kind"] == "demographics":
        body = _ages_not_birth_dates(body, anchor)
    return dict(minimised(body, seal))


def _ages_not_birth_dates(body: dict[str, Any], anchor: dt.date | None) -> dict[str, Any]:
    """The demographics event without the birth date: age in whole years at enrollment instead.

    Enrollment is the interventional study's consent day, and the cohort's ICB initiation.
    """
    born = body.get("date")
    age = None
    if isinstance(born, dict) and anchor is not None:
        first = dt.date.fromisoformat(born["first_day"])
        last = dt.date.fromisoformat(born["last_day"])
        age = whole_years(first, last, anchor)
    values = {k: v for k, v in body["values"].items() if k != "birth_date"}
    values["age_at_enrollment"] = age
    return {**body, "date": None, "end": None, "study_day": None, "values": values}


def timeline(t: Timeline, seal: Seal) -> dict[str, Any]:
    """GET /studies/{id}/subjects/{subject}/timeline: evidence ids, and an age, not a birth date."""
    anchor = t.subject.enrolled_on or t.subject.day1
    return {
        "study": _study(t.study),
        "subject": _subject(t.subject),
        "computed_at": iso_utc(t.computed_at),
        "events": [_timeline_entry(e, anchor, seal) for e in t.events],
    }


def subject_endpoints(o: SubjectEndpoints, seal: Seal) -> dict[str, Any]:
    """GET /studies/{id}/subjects/{subject}/outcomes."""
    return {
        "study": _study(o.study),
        "subject_id": o.subject_id,
        "computed_at": iso_utc(o.computed_at),
        **minimised(dict(o.endpoints), seal),
    }


# stands for `computed_at` in a rendered answer; random, so no value of the data can be it
_NOW_MARK = f"computed-at-{uuid.uuid4().hex}"
_TIMELINE = TypeAdapter(schemas.Timeline)
_ENDPOINTS = TypeAdapter(schemas.SubjectOutcomesOut)
_ELIGIBILITY = TypeAdapter(schemas.EligibilityOut)


def _as_served(adapter: TypeAdapter[Any], body: dict[str, Any]) -> bytes:
    """The bytes FastAPI sends for `body` under this response model (validated, then dumped)."""
    return adapter.dump_json(adapter.validate_python(body), by_alias=True)


@dataclass(frozen=True, slots=True)
class Stamped:
    """A rendered answer whose `computed_at` is the moment of each request that serves it."""

    head: bytes
    tail: bytes

    def __len__(self) -> int:
        return len(self.head) + len(self.tail)

    def at(self, moment: dt.datetime) -> bytes:
        """The answer as computed at `moment` (its data is current: see subject_cache)."""
        return b"".join((self.head, b'"', iso_utc(moment).encode(), b'"', self.tail))

    @classmethod
    def of(cls, adapter: TypeAdapter[Any], body: dict[str, Any]) -> Stamped:
        raw = _as_served(adapter, {**body, "computed_at": _NOW_MARK})
        head, mark, tail = raw.partition(f'"{_NOW_MARK}"'.encode())
        assert mark, "the answer has a computed_at"
        assert _NOW_MARK.encode() not in tail, "and only one"
        return cls(head, tail)


def timeline_answer(t: Timeline, seal: Seal) -> Stamped:
    """The timeline as served (Timeline), to be stamped with each request's time."""
    return Stamped.of(_TIMELINE, timeline(t, seal))


def endpoints_answer(o: SubjectEndpoints, seal: Seal) -> Stamped:
    """The subject's endpoints as served (SubjectOutcomesOut), stamped at each request."""
    return Stamped.of(_ENDPOINTS, subject_endpoints(o, seal))


def eligibility_answer(e: CandidateEligibility, seal: Seal) -> bytes:
    """A stored screening result as served (EligibilityOut); its time is the stored one."""
    return _as_served(_ELIGIBILITY, candidate_eligibility(e, seal))


def screening_page(page: ScreeningPage) -> dict[str, Any]:
    """GET /studies/{id}/eligibility."""
    return {
        "study": _study(page.study),
        "candidates": [
            {
                "subject_id": c.subject_id,
                "overall": c.overall,
                "counts": {"met": c.met, "not_met": c.not_met, "unknown": c.unknown},
                "at_enrollment": c.at_enrollment,
                "as_of": c.as_of.isoformat(),
                "computed_at": iso_utc(c.computed_at),
            }
            for c in page.candidates
        ],
        "next_cursor": page.next_cursor,
    }


def candidate_eligibility(e: CandidateEligibility, seal: Seal) -> dict[str, Any]:
    """GET /studies/{id}/eligibility/{subject}."""
    return {
        "study": _study(e.study),
        "subject_id": e.subject_id,
        "computed_at": iso_utc(e.computed_at),
        **minimised(dict(e.verdicts), seal),
        "at_enrollment": e.at_enrollment,
    }


def listing_page(page: ListingPage) -> bytes:
    """GET /studies/{id}/outcomes/subjects (…/swimmer, …/excluded): a page of one of the
    snapshot's listings, its rows under the listing's name, spliced in as stored (evidence sealed
    when the snapshot was computed)."""
    assert page.rows is not None, "a 304 has no body"
    header = {
        "study": _study(page.study),
        "computed_at": iso_utc(page.computed_at),
        "data_as_of": page.data_as_of,
        "stale": page.stale,
        "next_cursor": page.next_cursor,
    }
    start = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
    return f'{start[:-1]},"{page.name}":[{",".join(page.rows)}]}}'.encode()


def cohort_outcomes(o: CohortOutcomes) -> bytes:
    """GET /studies/{id}/outcomes: the snapshot's header, where to fetch each plot, and the
    stored outcomes JSON spliced in as it is (megabytes are not decoded to be encoded again)."""
    assert o.body is not None, "a 304 has no body"
    header = {
        "study": {**_study(o.study), "kind": o.kind},
        "computed_at": iso_utc(o.computed_at),
        "data_as_of": o.data_as_of,
        "stale": o.stale,
        "plots": {
            name: {
                fmt: f"/api/v1/studies/{o.study.id}/outcomes/plots/{name}.{fmt}"
                for fmt in MEDIA_TYPES
            }
            for name in o.plots
        },
    }
    start = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
    return f'{start[:-1]},"outcomes":{o.body}}}'.encode()


def deviation_page(page: DeviationPage, seal: Seal) -> dict[str, Any]:
    """GET /studies/{id}/deviations."""
    return {
        "study": _study(page.study),
        "deviations": [minimised(dict(d), seal) for d in page.deviations],
        "next_cursor": page.next_cursor,
    }


def deviation_detail(d: DeviationDetail, seal: Seal) -> dict[str, Any]:
    """GET/PATCH /studies/{id}/deviations/{deviation}: the deviation and its history."""
    history = [
        {
            "at": iso_utc(h.at),
            "actor": h.actor,
            "action": h.action,
            "detail": minimised(dict(h.detail), seal),
        }
        for h in d.history
    ]
    return {**minimised(dict(d.deviation), seal), "history": history}


def subscription(s: Subscription) -> dict[str, Any]:
    """A webhook subscription; its secret only in the answer that created it."""
    body: dict[str, Any] = {
        "id": s.id,
        "url": s.url,
        "events": list(s.events),
        "created_at": iso_utc(s.created_at),
    }
    if s.secret is not None:
        body["secret"] = s.secret
    return body
