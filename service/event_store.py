"""All SQL for trial events, their dependencies and study subjects. Nothing here commits."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import delete, func, insert, select, update
from sqlmodel import Session

from fhir_mapping.events.model import EventKind, TrialEvent
from service import store
from service.models import (
    EligibilityRow,
    EventDependency,
    ResourceHead,
    ResourceIdentifier,
    ServiceSecret,
    StudySubject,
    TrialEventRow,
)
from service.store import Key

_EVENT = TrialEventRow.__table__  # type: ignore[attr-defined]
_DEP = EventDependency.__table__  # type: ignore[attr-defined]
_SUBJECT = StudySubject.__table__  # type: ignore[attr-defined]
_SECRET = ServiceSecret.__table__  # type: ignore[attr-defined]
_ELIGIBILITY = EligibilityRow.__table__  # type: ignore[attr-defined]
_IDENT = ResourceIdentifier.__table__  # type: ignore[attr-defined]
_HEAD = ResourceHead.__table__  # type: ignore[attr-defined]
_CHUNK = 400
# session.info key: {payload: event} of the events this session stored (see `events_of`).
_STORED_EVENTS = "trialbridge_stored_events"


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def identifier_target(value: str) -> str:
    """The dependency target of an identifier lookup (by value: over-approximate, never miss)."""
    return f"identifier:{value}"[:512]


def identifier_matches(
    session: Session, resource_types: Sequence[str], system: str | None, value: str
) -> list[Key]:
    """Up to two current resources of these types carrying the identifier (system optional)."""
    c = _IDENT.c
    query = select(c.resource_type, c.resource_id).where(
        c.resource_type.in_(list(resource_types)), c.value == value
    )
    if system is not None:
        query = query.where(c.system == system)
    rows = session.execute(query.distinct().limit(2))
    return [(r.resource_type, r.resource_id) for r in rows]


def dependents(session: Session, targets: Iterable[str]) -> set[Key]:
    """Sources whose events were computed from any of these targets."""
    wanted = sorted(targets)
    conn = session.connection()
    if conn.dialect.name == "postgresql":  # one array parameter: one statement text, prepared once
        rows: Iterable[Any] = conn.exec_driver_sql(
            "SELECT source_type, source_id FROM trial_event_dependency WHERE target = ANY(%s)",
            (wanted,),
        )
        return {(r[0], r[1]) for r in rows}
    out: set[Key] = set()
    c = _DEP.c
    for chunk in _chunks(wanted):
        rows = session.execute(select(c.source_type, c.source_id).where(c.target.in_(list(chunk))))
        out.update((r.source_type, r.source_id) for r in rows)
    return out


def patients_of(session: Session, keys: Sequence[Key]) -> set[str]:
    """Patients that currently have events from these sources."""
    out: set[str] = set()
    c = _EVENT.c
    for rtype, ids in store.by_type(keys):
        rows = session.execute(
            select(c.patient_id)
            .where(c.source_type == rtype, c.source_id.in_(list(ids)), c.patient_id.is_not(None))
            .distinct()
        )
        out.update(r.patient_id for r in rows)
    return out


def delete_events(session: Session, keys: Sequence[Key]) -> None:
    """Forget the events and dependencies of these sources."""
    for rtype, ids in store.by_type(keys):
        session.execute(
            delete(_EVENT).where(_EVENT.c.source_type == rtype, _EVENT.c.source_id.in_(list(ids)))
        )
        session.execute(
            delete(_DEP).where(_DEP.c.source_type == rtype, _DEP.c.source_id.in_(list(ids)))
        )


_EVENT_COLUMNS = (
    "source_type",
    "source_id",
    "source_version",
    "seq",
    "patient_id",
    "kind",
    "first_day",
    "payload",
)


def insert_events(
    session: Session, events: Sequence[TrialEvent], deps: Iterable[tuple[str, str, str]]
) -> None:
    """Store events (payload = their wire shape) and what they were computed from."""
    stored: dict[str, TrialEvent] = session.info.setdefault(_STORED_EVENTS, {})
    rows = []
    for seq, e in enumerate(events):
        payload = orjson.dumps(e.to_json()).decode()
        stored[payload] = e
        rows.append(
            (
                e.source.resource_type,
                e.source.resource_id,
                e.source.version_id,
                seq,
                e.patient_id,
                e.kind.value,
                e.date.first.isoformat() if e.date else None,  # the Date column's stored form
                payload,
            )
        )
    store.bulk_insert(session, _EVENT, _EVENT_COLUMNS, rows)
    store.bulk_insert(session, _DEP, ("source_type", "source_id", "target"), sorted(set(deps)))


def events_of(
    session: Session, patient_ids: Sequence[str], kinds: Sequence[EventKind] | None = None
) -> dict[str, list[TrialEvent]]:
    """Events per patient, optionally only some kinds.

    Events this session stored itself are not decoded again: the same payload is the same event.
    """
    out: dict[str, list[TrialEvent]] = {p: [] for p in patient_ids}
    stored: dict[str, TrialEvent] = session.info.get(_STORED_EVENTS, {})
    c = _EVENT.c
    for chunk in _chunks(list(patient_ids)):
        query = select(c.patient_id, c.payload).where(c.patient_id.in_(list(chunk)))
        if kinds is not None:
            query = query.where(c.kind.in_([k.value for k in kinds]))
        for patient_id, payload in session.execute(query.order_by(c.pk)):
            event = stored.get(payload)
            if event is None or event.patient_id != patient_id:
                event = TrialEvent.from_json(orjson.loads(payload), patient_id)
            out[patient_id].append(event)
    return out


def totals(session: Session) -> dict[str, int]:
    """How many events and subjects are stored (operators and tests)."""
    return {
        "events": int(session.execute(select(func.count()).select_from(_EVENT)).scalar_one()),
        "subjects": int(session.execute(select(func.count()).select_from(_SUBJECT)).scalar_one()),
    }


# -- subjects --------------------------------------------------------------------------------------


def subjects_of(session: Session, patient_ids: Sequence[str]) -> dict[tuple[str, str], Any]:
    """Current subject rows for these patients, keyed by (study, patient)."""
    out: dict[tuple[str, str], Any] = {}
    c = _SUBJECT.c
    for chunk in _chunks(list(patient_ids)):
        for row in session.execute(select(_SUBJECT).where(c.patient_id.in_(list(chunk)))):
            out[(row.study_id, row.patient_id)] = row
    return out


def _save_per_patient(session: Session, table: Any, values: dict[str, Any], exists: bool) -> None:
    """Insert or update one row of a (study_id, patient_id)-keyed table."""
    if exists:
        c = table.c
        session.execute(
            update(table)
            .where(c.study_id == values["study_id"], c.patient_id == values["patient_id"])
            .values(values)
        )
    else:
        session.execute(insert(table), [values])


def _delete_per_patient(session: Session, table: Any, study_id: str, patient_id: str) -> None:
    """Delete one row of a (study_id, patient_id)-keyed table."""
    c = table.c
    session.execute(delete(table).where(c.study_id == study_id, c.patient_id == patient_id))


def upsert_subject(session: Session, values: dict[str, Any], exists: bool) -> None:
    """Insert or update one subject row."""
    _save_per_patient(session, _SUBJECT, values, exists)


def delete_subject(session: Session, study_id: str, patient_id: str) -> None:
    """A patient who no longer qualifies is no longer listed."""
    _delete_per_patient(session, _SUBJECT, study_id, patient_id)


def list_subjects(
    session: Session,
    study_id: str,
    *,
    after: str | None,
    limit: int,
    status: str | None = None,
    subject_number: str | None = None,
) -> list[Any]:
    """A page of subjects in subject_id order (cursor = the last subject_id seen)."""
    c = _SUBJECT.c
    query = select(_SUBJECT).where(c.study_id == study_id)
    if after is not None:
        query = query.where(c.subject_id > after)
    if status is not None:
        query = query.where(c.status == status)
    if subject_number is not None:
        query = query.where(c.subject_number == subject_number)
    return list(session.execute(query.order_by(c.subject_id).limit(limit)))


def find_subject(session: Session, study_id: str, subject_id: str) -> Any | None:
    """One subject by its pseudonymous id."""
    c = _SUBJECT.c
    return session.execute(
        select(_SUBJECT).where(c.study_id == study_id, c.subject_id == subject_id)
    ).first()


# -- secrets and terminology generation ----------------------------------------------------------


def get_or_create_secret(session: Session, name: str, make: Any) -> str:
    """A service secret, created once; a concurrent creator makes this unit of work retry."""
    row = session.execute(select(_SECRET.c.value).where(_SECRET.c.name == name)).first()
    if row is not None:
        return str(row.value)
    value = str(make())
    session.execute(insert(_SECRET), [{"name": name, "value": value}])
    return value


def valueset_generation(session: Session) -> tuple[int, dt.datetime | None]:
    """(count, newest lastUpdated) of ValueSet heads: changes whenever a ValueSet is written."""
    c = _HEAD.c
    row = session.execute(
        select(func.count(), func.max(c.last_updated)).where(c.resource_type == "ValueSet")
    ).one()
    newest = row[1]
    if isinstance(newest, dt.datetime) and newest.tzinfo is None:
        newest = newest.replace(tzinfo=dt.UTC)
    return int(row[0]), newest


def all_keys(session: Session, resource_types: Sequence[str]) -> list[Key]:
    """Every current, non-deleted resource of these types (a full remap)."""
    c = _HEAD.c
    rows = session.execute(
        select(c.resource_type, c.resource_id).where(
            c.resource_type.in_(list(resource_types)), c.deleted.is_(False)
        )
    )
    return [(r.resource_type, r.resource_id) for r in rows]


# -- eligibility -----------------------------------------------------------------------------------


def eligibility_of(session: Session, study_id: str, patient_ids: Sequence[str]) -> dict[str, Any]:
    """Stored eligibility rows of these patients, by patient id."""
    c = _ELIGIBILITY.c
    out: dict[str, Any] = {}
    for chunk in _chunks(list(patient_ids)):
        rows = session.execute(
            select(_ELIGIBILITY).where(c.study_id == study_id, c.patient_id.in_(list(chunk)))
        )
        out.update((r.patient_id, r) for r in rows)
    return out


def save_eligibility(session: Session, values: dict[str, Any], exists: bool) -> None:
    """Insert or replace one candidate's result."""
    _save_per_patient(session, _ELIGIBILITY, values, exists)


def delete_eligibility(session: Session, study_id: str, patient_id: str) -> None:
    """A patient who is no longer a candidate leaves the screening list."""
    _delete_per_patient(session, _ELIGIBILITY, study_id, patient_id)


def list_eligibility(
    session: Session, study_id: str, *, after: str | None, limit: int, overall: str | None
) -> list[Any]:
    """A page of the screening list in subject_id order."""
    c = _ELIGIBILITY.c
    query = select(_ELIGIBILITY).where(c.study_id == study_id)
    if after is not None:
        query = query.where(c.subject_id > after)
    if overall is not None:
        query = query.where(c.overall == overall)
    return list(session.execute(query.order_by(c.subject_id).limit(limit)))


def find_eligibility(session: Session, study_id: str, subject_id: str) -> Any | None:
    """One candidate's stored result by subject id."""
    c = _ELIGIBILITY.c
    return session.execute(
        select(_ELIGIBILITY).where(c.study_id == study_id, c.subject_id == subject_id)
    ).first()


def candidate_patients(session: Session, study_id: str) -> list[str]:
    """Every patient on the screening list or listed as a subject (for a full re-evaluation)."""
    e, s = _ELIGIBILITY.c, _SUBJECT.c
    ids = {
        r.patient_id for r in session.execute(select(e.patient_id).where(e.study_id == study_id))
    }
    ids |= {
        r.patient_id for r in session.execute(select(s.patient_id).where(s.study_id == study_id))
    }
    return sorted(ids)


def patients_with_events(session: Session, kinds: Sequence[EventKind]) -> list[str]:
    """Patients having any event of these kinds."""
    c = _EVENT.c
    rows = session.execute(
        select(c.patient_id)
        .where(c.kind.in_([k.value for k in kinds]), c.patient_id.is_not(None))
        .distinct()
    )
    return sorted(r.patient_id for r in rows)


def study_subjects(session: Session, study_id: str) -> list[Any]:
    """Every subject row of a study, in subject_id order (cohort-level outcomes read them all)."""
    c = _SUBJECT.c
    return list(
        session.execute(select(_SUBJECT).where(c.study_id == study_id).order_by(c.subject_id))
    )


def fingerprint(session: Session, study_id: str) -> tuple[Any, ...]:
    """Moves whenever the study's subjects or any of their events change (a cache key).

    Event ids are never reused (migration 0005), so a replaced event raises the id sum even when
    the count stays; a removed one lowers the count. Subjects: count and latest change.
    """
    e, s = _EVENT.c, _SUBJECT.c
    members = select(s.patient_id).where(s.study_id == study_id)
    events = session.execute(
        select(func.count(), func.coalesce(func.sum(e.pk), 0)).where(e.patient_id.in_(members))
    ).one()
    subjects = session.execute(
        select(func.count(), func.max(s.updated_at)).where(s.study_id == study_id)
    ).one()
    return (*events, *subjects)
