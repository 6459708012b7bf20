"""All SQL for cohort snapshots: the change log writes append to, snapshots, figures, leases.

Nothing here commits. Writers only insert into `study_change` (no row that every writer of a study
must lock); the refresher that computed a snapshot deletes exactly the change rows it saw, in the
transaction that stores the snapshot, so a change committed meanwhile stays and keeps it stale.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, exists, func, insert, select, update
from sqlmodel import Session

from service.infra import driver
from service.infra.tables import (
    CohortFigure,
    CohortLease,
    CohortListing,
    CohortSnapshot,
    StudyChange,
)
from service.repositories.sql import chunks, insert_on_conflict

_CHANGE = StudyChange.__table__  # type: ignore[attr-defined]
_SNAPSHOT = CohortSnapshot.__table__  # type: ignore[attr-defined]
_FIGURE = CohortFigure.__table__  # type: ignore[attr-defined]
_LEASE = CohortLease.__table__  # type: ignore[attr-defined]
_LISTING = CohortListing.__table__  # type: ignore[attr-defined]


# -- the change log -------------------------------------------------------------------------------


def record_changes(session: Session, study_ids: Iterable[str]) -> None:
    """One change row per study, in the writer's transaction: O(1), no scan, no shared row."""
    conn = session.connection()  # every write that touches a subject runs this
    rows = [(s,) for s in sorted(set(study_ids))]
    driver.execute_many(
        conn, f"INSERT INTO study_change (study_id) VALUES ({driver.mark(conn)})", rows
    )


@dataclass(frozen=True, slots=True)
class Pending:
    """A study's changes no snapshot reflects yet: how many, and the newest change number."""

    count: int
    newest: int


def pending(session: Session) -> dict[str, Pending]:
    """Every study with unreflected changes (the log holds only those: consumed rows go)."""
    c = _CHANGE.c
    found = session.execute(
        select(c.study_id, func.count(), func.max(c.id)).group_by(c.study_id)
    ).all()
    return {study: Pending(int(n), int(newest)) for study, n, newest in found}


def pending_ids(session: Session, study_id: str) -> list[int]:
    """The change numbers of a study visible now: what a computation starting now reflects."""
    c = _CHANGE.c
    return list(session.execute(select(c.id).where(c.study_id == study_id)).scalars())


def has_pending(session: Session, study_id: str, up_to: int | None = None) -> bool:
    """Whether a change of the study (numbered `up_to` or lower, if given) is still unreflected."""
    c = _CHANGE.c
    where = [c.study_id == study_id] + ([c.id <= up_to] if up_to is not None else [])
    return bool(session.execute(select(exists().where(*where))).scalar())


def newest_change(session: Session, study_id: str) -> int | None:
    """The highest unreflected change number of a study, if any (an index look-up)."""
    c = _CHANGE.c
    found = session.execute(select(func.max(c.id)).where(c.study_id == study_id)).scalar()
    return int(found) if found is not None else None


def consume(session: Session, study_id: str, ids: Sequence[int]) -> int:
    """Drop the change rows a snapshot now reflects; how many were still there."""
    c = _CHANGE.c
    dropped = 0
    for part in chunks(sorted(ids)):
        result = session.execute(delete(_CHANGE).where(c.study_id == study_id, c.id.in_(part)))
        dropped += int(result.rowcount)  # type: ignore[attr-defined]
    return dropped


# -- snapshots ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotHead:
    """Everything about a snapshot but its body (what a conditional read or a metric needs)."""

    study_id: str
    protocol_version: str
    basis: str
    data_as_of: int
    computed_at: dt.datetime
    compute_seconds: float
    digest: str
    plots: str


_HEAD_COLUMNS = (
    _SNAPSHOT.c.study_id,
    _SNAPSHOT.c.protocol_version,
    _SNAPSHOT.c.basis,
    _SNAPSHOT.c.data_as_of,
    _SNAPSHOT.c.computed_at,
    _SNAPSHOT.c.compute_seconds,
    _SNAPSHOT.c.digest,
    _SNAPSHOT.c.plots,
)


def snapshot_head(session: Session, study_id: str) -> SnapshotHead | None:
    """A study's snapshot without its body."""
    row = session.execute(
        select(*_HEAD_COLUMNS).where(_SNAPSHOT.c.study_id == study_id)
    ).one_or_none()
    return SnapshotHead(*row) if row is not None else None


def snapshot_heads(session: Session) -> list[SnapshotHead]:
    """Every study's snapshot without its body."""
    rows = session.execute(select(*_HEAD_COLUMNS).order_by(_SNAPSHOT.c.study_id)).all()
    return [SnapshotHead(*row) for row in rows]


def snapshot_body(session: Session, study_id: str, digest: str) -> str | None:
    """The outcomes JSON of the snapshot with this digest (None once another replaced it)."""
    c = _SNAPSHOT.c
    found = session.execute(
        select(c.body).where(c.study_id == study_id, c.digest == digest)
    ).scalar()
    return str(found) if found is not None else None


def snapshot_document(session: Session, study_id: str, digest: str) -> tuple[bool, str | None]:
    """(found, document JSON) of the snapshot with this digest; found is False once another
    replaced it, the document None when the study kind has no report document."""
    c = _SNAPSHOT.c
    row = session.execute(
        select(c.document).where(c.study_id == study_id, c.digest == digest)
    ).one_or_none()
    if row is None:
        return False, None
    return True, (str(row.document) if row.document is not None else None)


@dataclass(frozen=True, slots=True)
class ListingRow:
    """One stored listing row: its subject id (the page key) and its JSON."""

    subject_id: str
    body: str


def listing_rows(
    session: Session,
    study_id: str,
    digest: str,
    after: str | None,
    limit: int,
    *,
    listing: str = "subjects",
) -> list[ListingRow]:
    """Up to `limit` rows of one of the snapshot's listings after subject id `after`, in
    subject-id order (a range scan of the primary key)."""
    c = _LISTING.c
    where = [c.study_id == study_id, c.listing == listing, c.digest == digest]
    if after is not None:
        where.append(c.subject_id > after)
    rows = session.execute(
        select(c.subject_id, c.body).where(*where).order_by(c.subject_id).limit(limit)
    ).all()
    return [ListingRow(str(r.subject_id), str(r.body)) for r in rows]


# The `format` of a figure row holding the figure's data (what it draws), not a rendering: a
# refresh stores only these, tagged (in `etag`) with the digest of the snapshot they belong to;
# reads draw PNG or SVG from them (service.reads.cohort_reports).
FIGURE_DATA = "data"


@dataclass(frozen=True, slots=True)
class Figure:
    """One stored figure of a snapshot: its data (format `FIGURE_DATA`) or a rendering."""

    name: str
    format: str
    etag: str
    body: bytes


def store_snapshot(
    session: Session,
    head: SnapshotHead,
    body: str,
    figures: Sequence[Figure],
    *,
    document: str | None = None,
    listings: Mapping[str, Sequence[ListingRow]] | None = None,
) -> None:
    """Replace the study's snapshot, its figures, its listings' rows (by listing name) and its
    report document."""
    values = {
        "study_id": head.study_id,
        "protocol_version": head.protocol_version,
        "basis": head.basis,
        "data_as_of": head.data_as_of,
        "computed_at": head.computed_at,
        "compute_seconds": head.compute_seconds,
        "digest": head.digest,
        "plots": head.plots,
        "body": body,
        "document": document,
    }
    session.execute(delete(_SNAPSHOT).where(_SNAPSHOT.c.study_id == head.study_id))
    session.execute(insert(_SNAPSHOT), [values])
    session.execute(delete(_FIGURE).where(_FIGURE.c.study_id == head.study_id))
    if figures:
        session.execute(
            insert(_FIGURE),
            [
                {
                    "study_id": head.study_id,
                    "name": f.name,
                    "format": f.format,
                    "etag": f.etag,
                    "body": f.body,
                }
                for f in figures
            ],
        )
    session.execute(delete(_LISTING).where(_LISTING.c.study_id == head.study_id))
    for name, rows in sorted((listings or {}).items()):
        for part in chunks(list(rows)):
            session.execute(
                insert(_LISTING),
                [
                    {
                        "study_id": head.study_id,
                        "listing": name,
                        "subject_id": r.subject_id,
                        "digest": head.digest,
                        "body": r.body,
                    }
                    for r in part
                ],
            )


def figure(session: Session, study_id: str, name: str, fmt: str) -> Figure | None:
    """One stored figure of the study's snapshot (`fmt` FIGURE_DATA: its data)."""
    c = _FIGURE.c
    row = session.execute(
        select(c.name, c.format, c.etag, c.body).where(
            c.study_id == study_id, c.name == name, c.format == fmt
        )
    ).one_or_none()
    return Figure(row.name, row.format, row.etag, bytes(row.body)) if row is not None else None


def figures(session: Session, study_id: str, names: Sequence[str], fmt: str) -> dict[str, Figure]:
    """Several stored figures of the study's snapshot in one query, by name."""
    c = _FIGURE.c
    if not names:
        return {}
    rows = session.execute(
        select(c.name, c.format, c.etag, c.body).where(
            c.study_id == study_id, c.format == fmt, c.name.in_(sorted(set(names)))
        )
    ).all()
    return {r.name: Figure(r.name, r.format, r.etag, bytes(r.body)) for r in rows}


# -- leases ---------------------------------------------------------------------------------------


def acquire_lease(
    session: Session, study_id: str, owner: str, now: dt.datetime, until: dt.datetime
) -> bool:
    """Take the study's computation lease unless another holder's has not expired."""
    c = _LEASE.c
    taken = session.execute(
        update(_LEASE)
        .where(c.study_id == study_id, (c.until < now) | (c.owner == owner))
        .values(owner=owner, until=until)
    )
    if int(taken.rowcount) == 1:  # type: ignore[attr-defined]
        return True
    made = session.execute(
        insert_on_conflict(session, _LEASE)
        .values(study_id=study_id, owner=owner, until=until)
        .on_conflict_do_nothing()
        .returning(c.study_id)  # psycopg reports no row count for a conflict clause
    )
    return made.first() is not None


def renew_lease(session: Session, study_id: str, owner: str, until: dt.datetime) -> bool:
    """Extend our lease; False when it is no longer ours (expired and taken, or removed)."""
    c = _LEASE.c
    result = session.execute(
        update(_LEASE).where(c.study_id == study_id, c.owner == owner).values(until=until)
    )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


def release_lease(session: Session, study_id: str, owner: str) -> None:
    """Give the lease up (only if it is still ours)."""
    c = _LEASE.c
    session.execute(delete(_LEASE).where(c.study_id == study_id, c.owner == owner))
