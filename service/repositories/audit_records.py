"""The audit trail's table: records are inserted, searched and exported; never changed or deleted."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, Subquery, and_, func, literal, or_, select
from sqlmodel import Session

from service.infra.tables import AuditEntity, AuditRecord, ResourceHead, ResourceVersion
from service.repositories import fhir_versions
from service.repositories.sql import insert_on_conflict

# The search key that says "this request wrote what that Provenance names", beside the plain
# `Provenance/id` key a read of the Provenance gets too: `AuditEvent?entity=` finds a write through
# its Provenance by this key, so a later request that only read the Provenance (even one that reused
# the write's X-Request-ID) is never taken for the write (migration 0023 added it to older writes).
WROTE = "wrote:"

_RECORD = AuditRecord.__table__  # type: ignore[attr-defined]
_ENTITY = AuditEntity.__table__  # type: ignore[attr-defined]
_VERSION = ResourceVersion.__table__  # type: ignore[attr-defined]
_HEAD = ResourceHead.__table__  # type: ignore[attr-defined]
EXPORT_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Recorded:
    """An audit record ready to store: the resource, and what it is searched by."""

    id: str
    kind: Literal["AuditEvent", "Provenance"]
    recorded: dt.datetime
    agent: str
    request_id: str
    content: str  # the resource's JSON, as served
    entities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A search of one kind of record: every condition given must hold."""

    kind: str
    agents: tuple[str, ...] = ()  # any of these clients
    entities: tuple[str, ...] = ()  # naming any of these (`Type/id` or `system|value`)
    # bounds on `recorded`: (">=", t) at or after t, ("<", t) strictly before t
    recorded: tuple[tuple[Literal[">=", "<"], dt.datetime], ...] = ()
    count: int = 50
    after_seq: int | None = None  # the page after this record (newest first)


def insert_records(
    session: Session, records: Sequence[Recorded], *, idempotent: bool = False
) -> None:
    """Store records and their search keys, in the caller's transaction.

    Straight to the driver (COPY on PostgreSQL); `idempotent`: a record already stored (the same
    id) is left as it is instead of failing the transaction, at the cost of a slower statement.
    """
    if not records:
        return
    keys = [(r.id, key) for r in records for key in r.entities]
    if idempotent:
        session.execute(
            insert_on_conflict(session, _RECORD).on_conflict_do_nothing(),
            [dict(zip(_RECORD_COLUMNS, _row(r), strict=True)) for r in records],
        )
        if keys:
            session.execute(
                insert_on_conflict(session, _ENTITY).on_conflict_do_nothing(),
                [{"record_id": i, "entity": k} for i, k in keys],
            )
        return
    instant = fhir_versions.instant_binder(session)
    rows = [(*_row(r)[:2], instant(r.recorded), *_row(r)[3:]) for r in records]
    fhir_versions.bulk_insert(session, _RECORD, _RECORD_COLUMNS, rows)
    fhir_versions.bulk_insert(session, _ENTITY, ("record_id", "entity"), keys)


_RECORD_COLUMNS = ("id", "kind", "recorded", "agent", "request_id", "content")


def _row(r: Recorded) -> tuple[Any, ...]:
    return (r.id, r.kind, r.recorded, r.agent[:64], r.request_id[:64], r.content)


def _conditions(query: AuditQuery) -> list[ColumnElement[bool]]:
    c = _RECORD.c
    where: list[ColumnElement[bool]] = [c.kind == query.kind]
    if query.agents:
        where.append(c.agent.in_(query.agents))
    if query.entities:
        named = c.id.in_(select(_ENTITY.c.record_id).where(_ENTITY.c.entity.in_(query.entities)))
        versions = _versions_of(query.entities)
        if query.kind == "AuditEvent":
            through = [_through_provenance(query.entities)]
            if versions is not None:
                through.append(_through_version_provenance(versions))
            where.append(or_(named, *through))
        elif versions is not None:
            where.append(or_(named, c.id.in_(select(versions.c.provenance_id))))
        else:
            where.append(named)
    for op, instant in query.recorded:
        where.append(c.recorded >= instant if op == ">=" else c.recorded < instant)
    return where


def _versions_of(entities: Sequence[str]) -> Subquery | None:
    """The stored versions of the `Type/id` entities (None when none is one), with the Provenance
    that recorded each: how a write since revision 0019 is found by what it wrote."""
    keys = {(t, i) for t, _, i in (e.partition("/") for e in entities if e.count("/") == 1)}
    if not keys:
        return None
    v, h = _VERSION.c, _HEAD.c
    return (
        select(v.provenance_id, v.request_id)
        .select_from(_HEAD)
        .join(_VERSION, v.rid == h.rid)
        .where(or_(*(and_(h.resource_type == t, h.resource_id == i) for t, i in sorted(keys))))
        .where(v.provenance_id.is_not(None))
        .subquery()
    )


def _through_version_provenance(versions: Subquery) -> ColumnElement[bool]:
    """An AuditEvent whose request wrote one of these versions, found by the Provenance it wrote
    them under (its `WROTE` key; the request ids agree, as in `_through_provenance`)."""
    event, request = _ENTITY.alias("event"), _RECORD.alias("request")
    found: ColumnElement[bool] = _RECORD.c.id.in_(
        select(event.c.record_id)
        .join(
            versions,
            event.c.entity == literal(f"{WROTE}Provenance/").concat(versions.c.provenance_id),
        )
        .join(request, request.c.id == event.c.record_id)
        .where(request.c.request_id == versions.c.request_id)
    )
    return found


def _through_provenance(entities: Sequence[str]) -> ColumnElement[bool]:
    """An AuditEvent naming the Provenance of its own request that names one of these.

    A write's AuditEvent names its Provenance (an `$import`'s, one per chunk) rather than each
    version written, keyed `WROTE` + `Provenance/id` as well: a read of a Provenance names it too
    (plain key only), and that read touched no resource it names. The request ids agree as well.
    """
    event, target = _ENTITY.alias("event"), _ENTITY.alias("target")
    written, request = _RECORD.alias("written"), _RECORD.alias("request")
    found: ColumnElement[bool] = _RECORD.c.id.in_(
        select(event.c.record_id)
        .join(written, event.c.entity == literal(f"{WROTE}Provenance/").concat(written.c.id))
        .join(target, target.c.record_id == written.c.id)
        .join(request, request.c.id == event.c.record_id)
        .where(
            target.c.entity.in_(entities),
            written.c.kind == "Provenance",
            request.c.request_id == written.c.request_id,
        )
    )
    return found


def search(session: Session, query: AuditQuery) -> tuple[list[tuple[str, str]], int, int | None]:
    """This page's (id, resource) records, newest first; the total matching; the cursor when
    more follow."""
    c = _RECORD.c
    where = _conditions(query)
    total = int(session.execute(select(func.count()).where(*where)).scalar_one())
    if query.count == 0:
        return [], total, None
    page = [*where, c.seq < query.after_seq] if query.after_seq is not None else where
    rows = session.execute(
        select(c.seq, c.id, c.content).where(*page).order_by(c.seq.desc()).limit(query.count + 1)
    ).all()
    more = len(rows) > query.count
    rows = rows[: query.count]
    return [(r.id, r.content) for r in rows], total, rows[-1].seq if more else None


def read_record(session: Session, kind: str, record_id: str) -> str | None:
    """One record's resource text, or None."""
    c = _RECORD.c
    found = session.execute(
        select(c.content).where(c.kind == kind, c.id == record_id)
    ).scalar_one_or_none()
    return None if found is None else str(found)


def export(
    session: Session, since: dt.datetime | None, after_seq: int | None
) -> Iterator[tuple[int, str]]:
    """(seq, resource) of every record recorded at or after `since` and stored after `after_seq`,
    in the order they were stored, read in batches."""
    c = _RECORD.c
    last = after_seq or 0
    while True:
        where = [c.seq > last]
        if since is not None:
            where.append(c.recorded >= since)
        rows = session.execute(
            select(c.seq, c.content).where(*where).order_by(c.seq).limit(EXPORT_BATCH)
        ).all()
        if not rows:
            return
        for row in rows:
            yield int(row.seq), str(row.content)
        last = rows[-1].seq
