"""All SQL for hospital pulls: each source's last `transactionTime`, and pull jobs. Nothing commits."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import insert, or_, select, update
from sqlmodel import Session

from service.infra.tables import PullJob, SourceState

_STATE = SourceState.__table__  # type: ignore[attr-defined]
_JOB = PullJob.__table__  # type: ignore[attr-defined]


def transaction_time(session: Session, source_id: str) -> str | None:
    """The `transactionTime` of the source's last complete pull, as the hospital wrote it."""
    row = session.execute(
        select(_STATE.c.transaction_time).where(_STATE.c.source_id == source_id)
    ).first()
    return None if row is None else str(row.transaction_time)


def set_transaction_time(session: Session, source_id: str, value: str, now: dt.datetime) -> None:
    """Remember where the next incremental pull starts (`_since`)."""
    done = session.execute(
        update(_STATE)
        .where(_STATE.c.source_id == source_id)
        .values(transaction_time=value, updated_at=now)
    )
    if not done.rowcount:  # type: ignore[attr-defined]
        session.execute(
            insert(_STATE),
            [{"source_id": source_id, "transaction_time": value, "updated_at": now}],
        )


def forget_transaction_time(session: Session, source_id: str) -> None:
    """The next pull of this source is a full one."""
    session.execute(_STATE.delete().where(_STATE.c.source_id == source_id))


@dataclass(frozen=True, slots=True)
class JobRow:
    """A pull job as stored."""

    id: str
    source_id: str
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    progress: str
    error: str | None
    lease_until: dt.datetime | None = None


def abandon_expired(session: Session, source_id: str, now: dt.datetime) -> int:
    """Record the source's running job whose lease expired (its process died) as failed."""
    done = session.execute(
        update(_JOB)
        .where(
            _JOB.c.source_id == source_id,
            _JOB.c.status == "running",
            or_(_JOB.c.lease_until.is_(None), _JOB.c.lease_until < now),
        )
        .values(
            status="failed",
            finished_at=now,
            error="abandoned: its process stopped renewing the lease; taken over",
        )
    )
    return int(done.rowcount)  # type: ignore[attr-defined]


def add_job(
    session: Session,
    job_id: str,
    source_id: str,
    now: dt.datetime,
    progress: str,
    lease_until: dt.datetime,
) -> None:
    """A new running job holding the source's lease (IntegrityError: another one runs)."""
    session.execute(
        insert(_JOB),
        [
            {
                "id": job_id,
                "source_id": source_id,
                "status": "running",
                "started_at": now,
                "progress": progress,
                "lease_until": lease_until,
            }
        ],
    )


def renew_lease(session: Session, job_id: str, lease_until: dt.datetime) -> bool:
    """Extend a running job's lease; False when the job no longer runs (it was taken over)."""
    done = session.execute(
        update(_JOB)
        .where(_JOB.c.id == job_id, _JOB.c.status == "running")
        .values(lease_until=lease_until)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def update_job(
    session: Session,
    job_id: str,
    *,
    progress: str,
    status: str | None = None,
    finished_at: dt.datetime | None = None,
    error: str | None = None,
) -> None:
    """Record a job's progress, and its end when it ended (unless it was taken over)."""
    values: dict[str, object] = {"progress": progress}
    if status is not None:
        values.update(status=status, finished_at=finished_at, error=error, lease_until=None)
    session.execute(
        update(_JOB).where(_JOB.c.id == job_id, _JOB.c.status == "running").values(**values)
    )


def job(session: Session, source_id: str, job_id: str) -> JobRow | None:
    """One job of a source, or None."""
    row = session.execute(
        select(_JOB).where(_JOB.c.id == job_id, _JOB.c.source_id == source_id)
    ).first()
    return None if row is None else JobRow(**row._mapping)


def running_job(session: Session, source_id: str) -> str | None:
    """The id of the source's running job, if one runs."""
    row = session.execute(
        select(_JOB.c.id).where(_JOB.c.source_id == source_id, _JOB.c.status == "running")
    ).first()
    return None if row is None else str(row.id)


@dataclass(frozen=True, slots=True)
class Latest:
    """The newest job of a source: when it started, and until when it holds the lease if it runs."""

    started_at: dt.datetime
    running: bool
    lease_until: dt.datetime | None


def latest_job(session: Session, source_id: str) -> Latest | None:
    """The source's newest job (any process, any way it was started), or None."""
    row = session.execute(
        select(_JOB.c.started_at, _JOB.c.status, _JOB.c.lease_until)
        .where(_JOB.c.source_id == source_id)
        .order_by(_JOB.c.started_at.desc())
        .limit(1)
    ).first()
    return None if row is None else Latest(row.started_at, row.status == "running", row.lease_until)
