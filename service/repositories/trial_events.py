"""All SQL for trial events and what they were derived from. Nothing here commits."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Collection, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlmodel import Session

from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.partial_dates import PartialDate, in_zone, parse_partial_date
from fhir_mapping.terminology import ConceptMatch
from service.infra import driver
from service.infra.tables import (
    EventDependency,
    ResourceIdentifier,
    StudySubject,
    TrialEventRow,
)
from service.repositories import fhir_versions
from service.repositories.fhir_versions import Key
from service.repositories.sql import chunks

_EVENT = TrialEventRow.__table__  # type: ignore[attr-defined]
_DEP = EventDependency.__table__  # type: ignore[attr-defined]
_SUBJECT = StudySubject.__table__  # type: ignore[attr-defined]
_IDENT = ResourceIdentifier.__table__  # type: ignore[attr-defined]


def _payloads(
    session: Session, patient_ids: Sequence[str], kinds: Sequence[str] | None
) -> Iterator[tuple[str, str]]:
    """(patient, payload) of these patients' events (of these kinds), in stored order per chunk."""
    fetched = _payload_chunks(session, patient_ids, kinds)
    with contextlib.closing(fetched):
        for _, rows in fetched:
            yield from rows


def _payload_chunks(
    session: Session, patient_ids: Sequence[str], kinds: Sequence[str] | None
) -> Generator[tuple[Sequence[str], Sequence[tuple[str, str]]], None, None]:
    """Each chunk of patients with the (patient, payload) rows of its events, in stored order,
    through the driver's own cursor: a cohort reads 10^5-10^6 rows, and a SQLAlchemy row each
    cost more than the driver's tuple (the statement is the one the Core query compiled to).

    With more than one chunk, the chunks are fetched on one helper thread, each next one while
    the caller works on the current one: the database (PostgreSQL's own process, SQLite's page
    reads with the GIL released) works on the other core instead of waiting for the decoding, and
    the decoding does not wait for the database. Two chunks' rows are held at once. The
    connection is still used by one thread at a time: the caller must not use the session, nor
    let it end (on error too), before it has consumed or closed the iterator; closing waits for
    the fetch in flight."""
    conn = session.connection()
    postgres = conn.dialect.name == "postgresql"
    cursor = conn.connection.cursor()

    def fetch(chunk: Sequence[str]) -> list[tuple[str, str]]:
        return _fetch_payloads(cursor, postgres, chunk, kinds)

    todo = list(chunks(list(patient_ids)))
    try:
        if len(todo) <= 1:  # a write's few patients: no thread
            for chunk in todo:
                yield chunk, fetch(chunk)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-prefetch") as pool:
            pending = pool.submit(fetch, todo[0])
            try:
                for i, chunk in enumerate(todo):
                    rows = pending.result()
                    if i + 1 < len(todo):
                        pending = pool.submit(fetch, todo[i + 1])
                    yield chunk, rows
                    del rows
            finally:  # closed early or failed: a fetch not started never starts; leaving the
                pending.cancel()  # executor waits for one running, before the cursor closes
    finally:
        cursor.close()


def _fetch_payloads(
    cursor: Any, postgres: bool, chunk: Sequence[str], kinds: Sequence[str] | None
) -> list[tuple[str, str]]:
    """One chunk's (patient, payload) rows, in stored order."""
    if postgres:  # one array parameter each: one statement text, prepared once
        where = "patient_id = ANY(%s)" + (" AND kind = ANY(%s)" if kinds is not None else "")
        params: tuple[Any, ...] = (list(chunk), *([list(kinds)] if kinds is not None else []))
    else:
        where = f"patient_id IN ({', '.join('?' * len(chunk))})"
        if kinds is not None:
            where += f" AND kind IN ({', '.join('?' * len(kinds))})"
        params = (*chunk, *(kinds or ()))
    cursor.execute(f"SELECT patient_id, payload FROM trial_event WHERE {where} ORDER BY pk", params)
    rows: list[tuple[str, str]] = cursor.fetchall()  # the driver's list, not copied
    return rows


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
    conn = session.connection()
    sql = "SELECT source_type, source_id FROM trial_event_dependency WHERE " + driver.one_of(
        conn, "target"
    )
    out: set[Key] = set()
    for chunk in chunks(sorted(targets)):
        out.update(
            (r[0], r[1]) for r in driver.fetch_all(conn, sql, (driver.list_param(conn, chunk),))
        )
    return out


def patients_of(session: Session, keys: Sequence[Key]) -> set[str]:
    """Patients that currently have events from these sources."""
    if not keys:
        return set()
    conn = session.connection()  # every write that changes a resource runs this
    sql = (
        "SELECT DISTINCT patient_id FROM trial_event WHERE source_type = "
        f"{driver.mark(conn)} AND {driver.one_of(conn, 'source_id')} AND patient_id IS NOT NULL"
    )
    out: set[str] = set()
    for rtype, ids in fhir_versions.by_type(keys):
        out.update(r[0] for r in driver.fetch_all(conn, sql, (rtype, driver.list_param(conn, ids))))
    return out


def delete_events(session: Session, keys: Sequence[Key]) -> None:
    """Forget the events and dependencies of these sources."""
    if not keys:
        return
    conn = session.connection()  # every write that changes a resource runs this
    where = f"source_type = {driver.mark(conn)} AND {driver.one_of(conn, 'source_id')}"
    for rtype, ids in fhir_versions.by_type(keys):
        for table in ("trial_event", "trial_event_dependency"):
            driver.execute(
                conn, f"DELETE FROM {table} WHERE {where}", (rtype, driver.list_param(conn, ids))
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
    session: Session,
    events: Sequence[TrialEvent],
    deps: Iterable[tuple[str, str, str]],
    stored: dict[bytes, TrialEvent],
) -> None:
    """Store events (payload = their wire shape) and what they were computed from.

    Each event is also put in `stored` under its payload's digest, so reading it back in the same
    unit of work needs no decoding (see `events_of`).
    """
    rows = []
    for seq, e in enumerate(events):
        payload = orjson.dumps(e.to_json()).decode()
        stored[payload_key(payload)] = e
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
    fhir_versions.bulk_insert(session, _EVENT, _EVENT_COLUMNS, rows)
    fhir_versions.bulk_insert(
        session, _DEP, ("source_type", "source_id", "target"), sorted(set(deps))
    )


def payload_key(payload: str) -> bytes:
    """What `stored` events are found by: a digest, since the payloads themselves, kept for a whole
    large write, cost about as much as the events (issue 17's memory target)."""
    return hashlib.blake2b(payload.encode(), digest_size=16).digest()


def events_of(
    session: Session,
    patient_ids: Sequence[str],
    kinds: Sequence[EventKind] | None = None,
    stored: dict[bytes, TrialEvent] | None = None,
    *,
    zone: dt.tzinfo,
) -> dict[str, list[TrialEvent]]:
    """Events per patient, optionally only some kinds, dated in the site's calendar (`zone`).

    Events in `stored` (those this unit of work inserted) are not decoded again: the same payload
    is the same event.
    """
    out: dict[str, list[TrialEvent]] = {p: [] for p in patient_ids}
    stored = stored or {}
    decode = _Decoder(zone)
    wanted = None if kinds is None else [k.value for k in kinds]
    for patient_id, payload in _payloads(session, patient_ids, wanted):
        event = stored.get(payload_key(payload)) if stored else None
        if event is None or event.patient_id != patient_id:
            out[patient_id].append(decode(payload, patient_id))
        else:
            out[patient_id].append(event.in_zone(zone))
    return out


def events_and_days_by_chunk(
    session: Session,
    patient_ids: Sequence[str],
    *,
    zone: dt.tzinfo,
    days_only: Collection[EventKind],
) -> Generator[tuple[dict[str, list[TrialEvent]], dict[str, dt.date]], None, None]:
    """`events_of` one chunk of patients at a time (every patient of the chunk a key), so a
    caller that reduces each patient's events at once holds one chunk's events, not a cohort's.

    The events of the `days_only` kinds are not built: each patient's latest day among them (day
    precision or finer, site calendar; requests, an `intent` in their values, are not a day seen)
    instead, for a caller that reads those kinds only for that day (a visit or a lab result: most
    of a cohort's events, so building each cost more than its use). Patients with no such day
    have no key in the second mapping."""
    decode = _Decoder(zone)  # shared by the chunks: dates and concepts recur across patients
    days_kinds = frozenset(k.value for k in days_only)
    fetched = _payload_chunks(session, patient_ids, None)
    with contextlib.closing(fetched):  # closed early, the fetch ahead ends before we return
        for chunk, rows in fetched:
            out: dict[str, list[TrialEvent]] = {p: [] for p in chunk}
            days: dict[str, dt.date] = {}
            for patient_id, payload in rows:
                data = orjson.loads(payload)
                if data["kind"] not in days_kinds:
                    out[patient_id].append(decode.event(data, patient_id))
                elif (day := decode.day_seen(data)) is not None:
                    latest = days.get(patient_id)
                    if latest is None or day > latest:
                        days[patient_id] = day
            del rows
            yield out, days


_KINDS: dict[str, EventKind] = {k.value: k for k in EventKind}


class _Decoder:
    """`TrialEvent.from_json(orjson.loads(payload), patient).in_zone(zone)`, the same events,
    built with less work: a cohort decodes 10^5–10^6 events that share few dates and concepts,
    so each distinct date (in the site's calendar) and concept is built once per load."""

    __slots__ = ("concepts", "dates", "zone")

    def __init__(self, zone: dt.tzinfo) -> None:
        self.zone = zone
        self.dates: dict[str, PartialDate | None] = {}
        self.concepts: dict[tuple[Any, ...], ConceptMatch] = {}

    def date(self, data: Any) -> PartialDate | None:
        """A stored date in the site's calendar (the `_date` and `in_zone` of the event model)."""
        if not isinstance(data, Mapping):
            return None
        value = data["value"]
        if not isinstance(value, str):
            return None
        try:
            return self.dates[value]
        except KeyError:
            parsed = parse_partial_date(value)
            found = self.dates[value] = in_zone(parsed, self.zone) if parsed else None
            return found

    def concept(self, c: Mapping[str, Any]) -> ConceptMatch:
        """A stored concept match, one object per distinct match."""
        key = (c["concept"], c["matched_by"], c["system"], c["code"], c["text"])
        found = self.concepts.get(key)
        if found is None:
            found = self.concepts[key] = ConceptMatch(*key)
        return found

    def __call__(self, payload: str, patient_id: str) -> TrialEvent:
        return self.event(orjson.loads(payload), patient_id)

    def day_seen(self, data: Mapping[str, Any]) -> dt.date | None:
        """The day a decoded event would give as a day seen: its date's day (day precision or
        finer), unless it is a request (`intent` a string in its values); else None."""
        values = data.get("values")
        if isinstance(values, Mapping) and isinstance(values.get("intent"), str):
            return None
        date = data.get("date")
        parsed = self.date(date) if date is not None else None
        return parsed.day if parsed is not None else None

    def event(self, data: Mapping[str, Any], patient_id: str) -> TrialEvent:
        """The event of a stored payload already parsed."""
        src = data["source"]
        kind = _KINDS.get(data["kind"]) or EventKind(data["kind"])
        date, end, concepts = data.get("date"), data.get("end"), data.get("concepts")
        return TrialEvent(
            kind,
            patient_id,
            SourceRef(src["resource_type"], src["id"], int(src["version"])),
            self.date(date) if date is not None else None,
            self.date(end) if end is not None else None,
            data.get("values") or {},
            tuple(self.concept(c) for c in concepts) if concepts else (),
        )


def totals(session: Session) -> dict[str, int]:
    """How many events and subjects are stored (operators and tests)."""
    return {
        "events": int(session.execute(select(func.count()).select_from(_EVENT)).scalar_one()),
        "subjects": int(session.execute(select(func.count()).select_from(_SUBJECT)).scalar_one()),
    }


def patients_with_events(session: Session, kinds: Sequence[EventKind]) -> list[str]:
    """Patients having any event of these kinds."""
    c = _EVENT.c
    rows = session.execute(
        select(c.patient_id)
        .where(c.kind.in_([k.value for k in kinds]), c.patient_id.is_not(None))
        .distinct()
    )
    return sorted(r.patient_id for r in rows)
