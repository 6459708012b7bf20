"""Pulls from hospital sources under /api/v1/sources (admin): start one, follow its progress."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.auth import PrincipalDep, require
from api.deps import reject_nul
from api.schemas import ERRORS
from service.fhir.pull.jobs import JobStatus, SourcePulls
from service.infra.clock import iso_utc

router = APIRouter(prefix="/api/v1", responses=ERRORS, dependencies=[Depends(reject_nul)])


async def _pulls(request: Request) -> SourcePulls:
    found = request.app.state.pulls
    assert isinstance(found, SourcePulls)
    return found


PullsDep = Annotated[SourcePulls, Depends(_pulls)]


def job_body(job: JobStatus) -> dict[str, Any]:
    """A pull job as JSON: counts and locations of rejected lines, no resource content."""
    return {
        "job_id": job.id,
        "source_id": job.source_id,
        "status": job.status,
        "started_at": iso_utc(job.started_at),
        "finished_at": iso_utc(job.finished_at) if job.finished_at else None,
        "message": job.message,
        "error": job.error,
        "progress": job.progress,
    }


@router.post(
    "/sources/{source_id}/sync",
    status_code=202,
    tags=["sources"],
    summary="Pull a hospital source now (in the background)",
)
async def sync(
    source_id: str,
    pulls: PullsDep,
    who: PrincipalDep,
    full: Annotated[bool, Query(description="ignore the last transactionTime")] = False,
) -> JSONResponse:
    """202 with the job; 404 `source_not_found`; 409 `sync_running` while a pull runs."""
    require(who, who.scopes.admin, "admin")
    job = await run_in_threadpool(lambda: pulls.start(source_id, full=full))
    location = f"/api/v1/sources/{source_id}/sync/{job.id}"
    return JSONResponse(job_body(job), status_code=202, headers={"Location": location})


@router.get(
    "/sources/{source_id}/sync/{job_id}",
    tags=["sources"],
    summary="A pull's status and progress",
)
async def sync_status(
    source_id: str, job_id: str, pulls: PullsDep, who: PrincipalDep
) -> dict[str, Any]:
    """`running`, `succeeded` or `failed` (with `error`), and the counts so far."""
    require(who, who.scopes.admin, "admin")
    job = await run_in_threadpool(lambda: pulls.status(source_id, job_id))
    return job_body(job)
