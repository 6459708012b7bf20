"""All SQL for bulk jobs (asynchronous `$import`, CLI loads): state, lease, checkpoint, errors.

Nothing commits: a checkpoint is written in the transaction of the lines it counts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, and_, insert, or_, select, update
from sqlmodel import Session

from service.infra.db import reading
from service.infra.tables import BulkJob, BulkJobError

_JOB = BulkJob.__table__  # type: ignore[attr-defined]
_ERR = BulkJobError.__table__  # type: ignore[attr-defined]
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class JobRow:
    """A bulk job as stored (its JSON columns still text)."""

    id: str
    kind: str
    owner: str
    status: str
    cancel_requested: bool
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    runner: str | None
    lease_until: dt.datetime | None
    attempts: int
    inputs: str
    checkpoint: str
    error: str | None


def add_job(
    session: Session,
    job_id: str,
    kind: str,
    owner: str,
    inputs: str,
    checkpoint: str,
    now: dt.datetime,
) -> None:
    """A new queued job."""
    session.execute(
        insert(_JOB),
        [
            {
                "id": job_id,
                "kind": kind,
                "owner": owner,
                "status": "queued",
                "cancel_requested": False,
                "created_at": now,
                "attempts": 0,
                "inputs": inputs,
                "checkpoint": checkpoint,
            }
        ],
    )


def job(session: Session, job_id: str) -> JobRow | None:
    """One job, or None."""
    row = session.execute(select(_JOB).where(_JOB.c.id == job_id)).first()
    return None if row is None else JobRow(**row._mapping)


def _claimable(now: dt.datetime) -> object:
    expired = or_(_JOB.c.lease_until.is_(None), _JOB.c.lease_until < now)
    return or_(_JOB.c.status == "queued", and_(_JOB.c.status == "running", expired))


def claim(session: Session, job_id: str, runner: str, now: dt.datetime, until: dt.datetime) -> bool:
    """Take the job to run (queued, or running under an expired lease: its runner died)."""
    done = session.execute(
        update(_JOB)
        .where(_JOB.c.id == job_id, _claimable(now))  # type: ignore[arg-type]
        .values(
            status="running",
            runner=runner,
            lease_until=until,
            started_at=now,
            attempts=_JOB.c.attempts + 1,
        )
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def unfinished(session: Session, now: dt.datetime, kind: str | None = None) -> list[str]:
    """Jobs that wait for a runner: queued, or running under an expired lease."""
    query = select(_JOB.c.id).where(_claimable(now)).order_by(_JOB.c.created_at)  # type: ignore[arg-type]
    if kind is not None:
        query = query.where(_JOB.c.kind == kind)
    return [str(r.id) for r in session.execute(query)]


def open_documents(session: Session) -> list[str]:
    """The inputs documents of every job not finished yet (queued or running)."""
    rows = session.execute(select(_JOB.c.inputs).where(_JOB.c.status.in_(["queued", "running"])))
    return [str(r[0]) for r in rows]


def renew(session: Session, job_id: str, runner: str, until: dt.datetime) -> bool:
    """Extend the runner's lease; False when the job is no longer this runner's."""
    done = session.execute(
        update(_JOB)
        .where(_JOB.c.id == job_id, _JOB.c.runner == runner, _JOB.c.status == "running")
        .values(lease_until=until)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def save_checkpoint(
    session: Session,
    job_id: str,
    runner: str,
    checkpoint: str,
    errors: Sequence[tuple[int, int, int, str]] = (),
) -> bool:
    """The checkpoint and the rejected lines it covers; False (write nothing) when the job is
    no longer this runner's: the caller must roll back."""
    done = session.execute(
        update(_JOB)
        .where(_JOB.c.id == job_id, _JOB.c.runner == runner, _JOB.c.status == "running")
        .values(checkpoint=checkpoint)
    )
    if not done.rowcount:  # type: ignore[attr-defined]
        return False
    if errors:
        session.execute(
            insert(_ERR),
            [
                {
                    "job_id": job_id,
                    "input_index": i,
                    "line": line,
                    "status": status,
                    "outcome": outcome,
                }
                for i, line, status, outcome in errors
            ],
        )
    return True


def finish(
    session: Session,
    job_id: str,
    runner: str,
    status: str,
    now: dt.datetime,
    error: str | None = None,
) -> bool:
    """Record how the runner's job ended."""
    done = session.execute(
        update(_JOB)
        .where(_JOB.c.id == job_id, _JOB.c.runner == runner, _JOB.c.status == "running")
        .values(status=status, finished_at=now, error=error, lease_until=None)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def request_cancel(session: Session, job_id: str, now: dt.datetime) -> None:
    """A queued job is cancelled at once; a running one at its next checkpoint."""
    session.execute(
        update(_JOB)
        .where(_JOB.c.id == job_id, _JOB.c.status == "queued")
        .values(status="cancelled", finished_at=now, cancel_requested=True)
    )
    session.execute(
        update(_JOB)
        .where(_JOB.c.id == job_id, _JOB.c.status == "running")
        .values(cancel_requested=True)
    )


def cancel_requested(session: Session, job_id: str) -> bool:
    """Whether a client asked to cancel the job."""
    value = session.execute(select(_JOB.c.cancel_requested).where(_JOB.c.id == job_id)).scalar()
    return bool(value)


def error_outcomes(
    engine: Engine, job_id: str, input_index: int, batch: int = 500
) -> Iterator[tuple[int, int, str]]:
    """An input's rejected lines (line, HTTP status, OperationOutcome JSON), in line order, read
    a batch at a time."""
    after = -1
    while True:
        with reading(engine) as session:
            rows = session.execute(
                select(_ERR.c.line, _ERR.c.status, _ERR.c.outcome)
                .where(
                    _ERR.c.job_id == job_id,
                    _ERR.c.input_index == input_index,
                    _ERR.c.line > after,
                )
                .order_by(_ERR.c.line)
                .limit(batch)
            ).all()
        if not rows:
            return
        for row in rows:
            yield int(row.line), int(row.status), str(row.outcome)
        after = int(rows[-1].line)
