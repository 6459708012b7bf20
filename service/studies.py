"""Read use cases of the study API: studies, their subjects, and a subject's timeline."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from fhir_mapping.events.model import TrialEvent
from fhir_mapping.partial_dates import parse_partial_date, study_day
from fhir_mapping.required_codes import REQUIRED_CODES
from service import event_store
from service.eligibility import evaluate
from service.errors import ApiError
from service.fhir_time import iso_utc, utcnow
from service.membership import trial_membership
from service.outcomes import subject_outcomes
from service.protocol import CohortProtocol, TrialProtocol

Protocol = TrialProtocol | CohortProtocol
T = TypeVar("T")
_HEADER_KEYS = ("kind", "id", "version", "title", "sources")


def study_summary(protocol: Protocol) -> dict[str, Any]:
    """What a list of studies shows."""
    return {
        "id": protocol.id,
        "version": protocol.version,
        "title": protocol.title,
        "kind": protocol.kind,
    }


def study_detail(protocol: Protocol) -> dict[str, Any]:
    """The study with every protocol setting (windows, doses, criteria, choices)."""
    dumped = protocol.model_dump(mode="json")
    settings = {k: v for k, v in dumped.items() if k not in _HEADER_KEYS}
    return {**study_summary(protocol), "sources": list(protocol.sources), "settings": settings}


def find_protocol(protocols: dict[str, Protocol], study_id: str) -> Protocol:
    """The protocol of a study this deployment serves, else 404 naming the known ones."""
    found = protocols.get(study_id)
    if found is None:
        raise ApiError(
            404,
            "study_not_found",
            f"no study {study_id!r}; known: {', '.join(sorted(protocols))}",
        )
    return found


def trial_protocol(protocols: dict[str, Protocol], study_id: str, lacks: str) -> TrialProtocol:
    """An interventional study's protocol; a cohort study has no `lacks` (404 not_applicable)."""
    protocol = find_protocol(protocols, study_id)
    if not isinstance(protocol, TrialProtocol):
        raise ApiError(
            404,
            "not_applicable",
            f"study {study_id} is a retrospective cohort: it has no {lacks}",
        )
    return protocol


def read(engine: Engine, work: Callable[[Session], T]) -> T:
    """Run a read; an unreachable database is a 503 in the JSON error shape."""
    try:
        with Session(engine) as session:
            return work(session)
    except OperationalError as exc:
        raise ApiError(503, "database_unavailable", "the database is unavailable") from exc


def encode_cursor(subject_id: str) -> str:
    """An opaque cursor: clients pass it back, never build it."""
    return base64.urlsafe_b64encode(subject_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, prefix: str = "S-") -> str:
    """The id a cursor stands for; a cursor we did not issue is a 400."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "invalid_cursor", "the cursor is not one this service issued") from exc
    if not text.startswith(prefix) or "\x00" in text:  # ours never hold U+0000 (PostgreSQL 500)
        raise ApiError(400, "invalid_cursor", "the cursor is not one this service issued")
    return text


def subject_statuses(protocol: Protocol) -> frozenset[str]:
    """Statuses membership can give (ResearchSubject's or `unknown`; `included`): others match none."""
    if isinstance(protocol, TrialProtocol):
        return REQUIRED_CODES[("ResearchSubject", "status")] | {"unknown"}
    return frozenset({"included"})


def _subject_json(row: Any) -> dict[str, Any]:
    return {
        "subject_id": row.subject_id,
        "subject_number": row.subject_number,
        "status": row.status,
        "enrolled_on": row.enrolled_on.isoformat() if row.enrolled_on else None,
        "day1": row.day1.isoformat() if row.day1 else None,
        "updated_at": iso_utc(row.updated_at),
    }


def _event_json(event: TrialEvent, day1: dt.date | None) -> dict[str, Any]:
    body = event.to_json()
    day = event.date.day if event.date else None
    body["study_day"] = study_day(day, day1) if day is not None and day1 is not None else None
    return body


def _timeline_key(event: TrialEvent) -> tuple[Any, ...]:
    if event.date is None:
        return (1, dt.date.max, dt.datetime.max.replace(tzinfo=dt.UTC), event.kind.value, "")
    first, moment = event.date.sort_key()
    return (0, first, moment, event.kind.value, event.source.resource_id)


@dataclass(frozen=True)
class StudyReader:
    """Reads for the study API, over one engine and the loaded protocols."""

    engine: Engine
    protocols: dict[str, Protocol]

    def protocol(self, study_id: str) -> Protocol:
        """The protocol of a study this deployment serves, else 404."""
        return find_protocol(self.protocols, study_id)

    def _read(self, work: Any) -> Any:
        return read(self.engine, work)

    def subjects(
        self,
        study_id: str,
        *,
        cursor: str | None,
        limit: int,
        status: str | None,
        subject_number: str | None,
    ) -> dict[str, Any]:
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
            lambda s: event_store.list_subjects(
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
        return {
            "study": {"id": protocol.id, "version": protocol.version},
            "subjects": [_subject_json(r) for r in page],
            "next_cursor": encode_cursor(page[-1].subject_id) if more and page else None,
        }

    def timeline(self, study_id: str, subject_id: str) -> dict[str, Any]:
        """A subject's events in study-day order, each with its evidence."""
        protocol = self.protocol(study_id)

        def work(session: Session) -> tuple[Any, list[TrialEvent]]:
            row = event_store.find_subject(session, study_id, subject_id)
            if row is None:
                return None, []
            return row, event_store.events_of(session, [row.patient_id])[row.patient_id]

        row, events = self._read(work)
        if row is None:
            raise ApiError(
                404, "subject_not_found", f"no subject {subject_id!r} in study {study_id}"
            )
        ordered = sorted(events, key=_timeline_key)
        return {
            "study": {"id": protocol.id, "version": protocol.version},
            "subject": _subject_json(row),
            "computed_at": iso_utc(utcnow()),
            "events": [_event_json(e, row.day1) for e in ordered],
        }

    # -- eligibility --------------------------------------------------------------------------------

    def outcomes(self, study_id: str, subject_id: str) -> dict[str, Any]:
        """Per-subject endpoints: time to surgery, MPR, pCR, EFS, OS, safety."""
        return _subject_outcomes(self, study_id, subject_id)

    def trial(self, study_id: str, lacks: str = "eligibility criteria") -> TrialProtocol:
        """The protocol of an interventional study; 404 for a cohort, which has none of `lacks`."""
        return trial_protocol(self.protocols, study_id, lacks)

    def screening(
        self, study_id: str, *, cursor: str | None, limit: int, overall: str | None
    ) -> dict[str, Any]:
        """The screening list: every candidate's overall status and verdict counts."""
        protocol = self.trial(study_id)
        after = decode_cursor(cursor) if cursor else None
        rows = self._read(
            lambda s: event_store.list_eligibility(
                s, study_id, after=after, limit=limit + 1, overall=overall
            )
        )
        page = rows[:limit]
        return {
            "study": {"id": protocol.id, "version": protocol.version},
            "candidates": [
                {
                    "subject_id": r.subject_id,
                    "overall": r.overall,
                    "counts": {"met": r.n_met, "not_met": r.n_not_met, "unknown": r.n_unknown},
                    "at_enrollment": r.at_enrollment,
                    "as_of": r.as_of.isoformat(),
                    "computed_at": iso_utc(r.computed_at),
                }
                for r in page
            ],
            "next_cursor": encode_cursor(page[-1].subject_id)
            if len(rows) > limit and page
            else None,
        }

    def subject_eligibility(
        self, study_id: str, subject_id: str, as_of: str | None
    ) -> dict[str, Any]:
        """A candidate's criteria: the stored result, or computed on demand for a given day."""
        protocol = self.trial(study_id)
        day = parse_as_of(as_of) if as_of is not None else None

        def work(session: Session) -> tuple[Any, list[TrialEvent]]:
            row = event_store.find_eligibility(session, study_id, subject_id)
            if row is None or day is None:
                return row, []
            return row, event_store.events_of(session, [row.patient_id])[row.patient_id]

        row, events = self._read(work)
        if row is None:
            raise ApiError(
                404,
                "subject_not_found",
                f"no screening candidate {subject_id!r} in study {study_id}",
            )
        head = {"study": {"id": protocol.id, "version": protocol.version}, "subject_id": subject_id}
        if day is None:
            stored = json.loads(row.payload)
            return {**head, "computed_at": iso_utc(row.computed_at), **stored}
        facts = trial_membership(protocol, events)
        result = evaluate(
            protocol,
            events,
            as_of=day,
            enrolled_on=facts.enrolled_on if facts else None,
            day1=facts.day1 if facts else None,
        )
        return {
            **head,
            "computed_at": iso_utc(utcnow()),
            **result.to_json(),
            "at_enrollment": row.at_enrollment,
        }


_ZONE = re.compile(r"(?:Z|[+-]\d{2}:\d{2})$")
# Eligibility counts back weeks from the as-of day (and forward from dates near it): keep it far
# from date.min and date.max so no date arithmetic can overflow.
AS_OF_FIRST = dt.date(1900, 1, 1)
AS_OF_LAST = dt.date(9000, 12, 31)


def parse_as_of(text: str) -> dt.date:
    """An as-of day: a full date, or a dateTime with its zone (its local day is used)."""
    parsed = parse_partial_date(text) if text.isascii() else None  # `\d` also matches '٢'
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


def _subject_outcomes(reader: StudyReader, study_id: str, subject_id: str) -> dict[str, Any]:
    """A subject's endpoints computed from its events (one subject: cheap to compute on read)."""
    protocol = reader.trial(study_id, "per-subject trial outcomes")

    def work(session: Session) -> tuple[Any, list[TrialEvent]]:
        row = event_store.find_subject(session, study_id, subject_id)
        if row is None:
            return None, []
        return row, event_store.events_of(session, [row.patient_id])[row.patient_id]

    row, events = reader._read(work)
    if row is None:
        raise ApiError(404, "subject_not_found", f"no subject {subject_id!r} in study {study_id}")
    return {
        "study": {"id": protocol.id, "version": protocol.version},
        "subject_id": subject_id,
        "computed_at": iso_utc(utcnow()),
        **subject_outcomes(protocol, events, row.day1),
    }
