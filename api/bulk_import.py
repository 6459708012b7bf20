"""Asynchronous `$import` (FHIR asynchronous request pattern): kick-off, status, cancel, errors.

`POST /fhir/$import` with `Prefer: respond-async` answers 202 with `Content-Location` naming a
status URL; the body (NDJSON, spooled to disk as it arrives) or the `file:` URLs of a Parameters
body become a bulk job on the job queue. A status URL belongs to the client that started the job
(an admin sees all; others hear 404): its id is random, and never listed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from api.auth import PrincipalDep, principal
from api.deps import BaseDep
from api.fhir_http import (
    JSON_TYPES,
    NDJSON_TYPES,
    check_accept,
    declared_size,
    empty_body,
    fhir_response,
    media_type,
    read_body,
    too_large,
)
from api.large_bodies import mark_streamed
from fhir_mapping.json_codec import dumps, loads
from service.access.tokens import Principal
from service.errors import FhirError
from service.infra.clock import fhir_instant
from service.infra.settings import Settings
from service.jobs.bulk import BulkJobs, JobInput, JobView
from service.jobs.queue import JobQueue

log = logging.getLogger(__name__)
STATUS_PATH = "/$import-status"
# An `$import` body spooled in the database is stored in pieces of about this size.
SPOOL_PIECE_BYTES = 1024 * 1024
router = APIRouter(
    prefix="/fhir",
    tags=["FHIR R4: bulk import"],
    dependencies=[Depends(check_accept), Depends(principal)],
)


def wants_async(request: Request) -> bool:
    """`Prefer: respond-async` (FHIR asynchronous request pattern)."""
    return any(
        part.strip() == "respond-async" for part in request.headers.get("prefer", "").split(",")
    )


async def _bulk(request: Request) -> BulkJobs:
    found = request.app.state.bulk_jobs
    assert isinstance(found, BulkJobs)
    return found


BulkDep = Annotated[BulkJobs, Depends(_bulk)]


def _refuse(text: str, status: int = 400, code: str = "invalid") -> FhirError:
    return FhirError.of(status, code, text)


def file_input(url: object, folder: Path | None) -> JobInput:
    """A `file:` URL naming a file under the import folder; anything else refused (400)."""
    if not isinstance(url, str) or not url:
        raise _refuse("each input needs a url")
    shown = url[:200]
    if folder is None:
        raise _refuse(f"input {shown!r}: file URLs are not accepted (no import folder is set)")
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or parts.query:
        raise _refuse(f"input {shown!r}: only file: URLs under the import folder are accepted")
    raw = unquote(parts.path)
    if "\x00" in raw:
        raise _refuse(f"input {shown!r}: not a file name")
    root = folder.resolve()
    path = Path(raw).resolve()
    if not path.is_relative_to(root):
        raise _refuse(f"input {shown!r}: outside the import folder", 403, "forbidden")
    if not path.is_file():
        raise _refuse(f"input {shown!r}: no such file in the import folder", 404, "not-found")
    return JobInput(url=url, path=str(path))


def parameters_inputs(body: Any, folder: Path | None) -> list[JobInput]:
    """The `input` parameters of a Parameters body (each with a `url` part)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise _refuse("the body of an asynchronous $import is NDJSON or a Parameters resource")
    inputs: list[JobInput] = []
    for parameter in body.get("parameter") or []:
        if not isinstance(parameter, dict) or parameter.get("name") != "input":
            continue
        url: object = None
        for part in parameter.get("part") or []:
            if isinstance(part, dict) and part.get("name") == "url":
                url = part.get("valueUrl") or part.get("valueUri")
        inputs.append(file_input(url, folder))
    if not inputs:
        raise _refuse("the Parameters name no input (parameter `input` with a `url` part)")
    return inputs


async def spool_body(request: Request, settings: Settings, jobs: BulkJobs) -> JobInput:
    """The NDJSON body stored as it arrives (memory stays flat): in the database when jobs run
    on the PostgreSQL queue (any worker reads it), else in the spool folder."""
    limit = settings.max_import_bytes
    declared_size(request, limit)
    if settings.spools_in_database():
        return await _spool_in_database(request, limit, jobs)
    folder = settings.bulk_spool_dir()
    await run_in_threadpool(folder.mkdir, parents=True, exist_ok=True)
    fd, name = await run_in_threadpool(
        lambda: tempfile.mkstemp(prefix="import-", suffix=".ndjson", dir=folder)
    )
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                out.write(chunk)
        if size == 0:
            raise empty_body()
    except BaseException:
        os.unlink(name)
        raise
    return JobInput(url="body", path=name, spooled=True)


async def _spool_in_database(request: Request, limit: int, jobs: BulkJobs) -> JobInput:
    """The body in pieces of SPOOL_PIECE_BYTES, each stored as it fills; all of them deleted
    again if the body is refused or cut off (the job is only created for a whole body)."""
    spool_id = str(uuid.uuid4())
    pending = bytearray()
    size = seq = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            pending += chunk
            if len(pending) >= SPOOL_PIECE_BYTES:
                await run_in_threadpool(jobs.spool_piece, spool_id, seq, bytes(pending))
                pending.clear()
                seq += 1
        if size == 0:
            raise empty_body()
        if pending:
            await run_in_threadpool(jobs.spool_piece, spool_id, seq, bytes(pending))
    except BaseException:
        if seq or pending:
            try:
                await run_in_threadpool(jobs.drop_spool, spool_id)
            except Exception:  # the database is away: the orphan sweep deletes it later
                log.warning("a refused $import body stays spooled until the orphan sweep")
        raise
    return JobInput(url="body", path="", spooled=True, spool_id=spool_id)


async def kick_off(request: Request, who: Principal, base: str) -> Response:
    """202 with the status URL; the job runs on the job queue."""
    settings: Settings = request.app.state.settings
    jobs: BulkJobs = request.app.state.bulk_jobs
    queue: JobQueue = request.app.state.job_queue
    kind, _ = media_type(request)
    if kind in NDJSON_TYPES:
        mark_streamed(request)
        inputs = [await spool_body(request, settings, jobs)]
    elif kind in JSON_TYPES:
        body = await run_in_threadpool(loads, await read_body(request, settings.max_body_bytes))
        inputs = parameters_inputs(body, settings.import_folder)
    else:
        raise FhirError.of(
            415,
            "not-supported",
            "an asynchronous $import takes NDJSON (application/fhir+ndjson) or a Parameters "
            "resource (application/fhir+json) naming file: URLs",
        )
    note = request.scope.get("state", {}).get("audit")
    request_id = getattr(note, "request_id", None)
    job_id = await run_in_threadpool(
        lambda: jobs.create(inputs, owner=who.client, scopes=str(who.scopes), request_id=request_id)
    )
    try:
        await run_in_threadpool(queue.submit_bulk, job_id)
    except Exception:  # the job is stored as queued: a sweeper submits it again
        log.warning("submitting bulk job %s failed; it waits for the next sweep", job_id)
    return Response(status_code=202, headers={"Content-Location": f"{base}{STATUS_PATH}/{job_id}"})


def _visible(jobs: BulkJobs, job_id: str, who: Principal) -> JobView:
    """The job if it is this client's (or the client is an admin); 404 otherwise."""
    # a job id is a UUID: anything longer, or with U+0000 (PostgreSQL cannot compare it), is none
    view = jobs.view(job_id) if len(job_id) <= 36 and "\x00" not in job_id else None
    if view is None or view.kind != "import" or (view.owner != who.client and not who.scopes.admin):
        raise FhirError.of(404, "not-found", "no such import job")
    return view


def result_manifest(view: JobView, base: str) -> dict[str, Any]:
    """The completed job: outcomes per input (counts), and where each input's errors are."""
    status = f"{base}{STATUS_PATH}/{view.id}"
    output, error = [], []
    for index, (item, outcomes) in enumerate(
        zip(view.inputs, view.checkpoint.outcomes, strict=True)
    ):
        counts = {k: int(v) for k, v in outcomes.items()}
        output.append(
            {
                "type": "OperationOutcome",
                "inputUrl": item.url,
                "linesRead": view.checkpoint.lines[index],
                "count": counts.get("created", 0)
                + counts.get("updated", 0)
                + counts.get("unchanged", 0),
                "outcomes": counts,
            }
        )
        if counts.get("failed"):
            error.append(
                {
                    "type": "OperationOutcome",
                    "inputUrl": item.url,
                    "count": counts["failed"],
                    "url": f"{status}/errors/{index}",
                }
            )
    return {
        "transactionTime": fhir_instant(view.finished_at or view.created_at),
        "request": f"{base}/$import",
        "status": view.status,
        "requiresAccessToken": True,
        "output": output,
        "error": error,
        **({"message": view.error} if view.error else {}),
    }


@router.get(STATUS_PATH + "/{job_id}", summary="Status of an asynchronous $import")
async def import_status(job_id: str, jobs: BulkDep, base: BaseDep, who: PrincipalDep) -> Response:
    """202 with `X-Progress` while it runs; 200 with the result when it has ended."""
    view = await run_in_threadpool(_visible, jobs, job_id, who)
    if not view.finished:
        return Response(
            status_code=202, headers={"X-Progress": view.progress(), "Retry-After": "1"}
        )
    return fhir_response(dumps(result_manifest(view, base)))


@router.delete(STATUS_PATH + "/{job_id}", summary="Cancel an asynchronous $import")
async def cancel_import(job_id: str, jobs: BulkDep, who: PrincipalDep) -> Response:
    """202: a queued job is cancelled now, a running one before its next chunk."""
    view = await run_in_threadpool(_visible, jobs, job_id, who)
    if view.finished:
        raise FhirError.of(409, "conflict", f"the import job has already ended ({view.status})")
    await run_in_threadpool(jobs.cancel, job_id)
    return Response(status_code=202)


@router.get(STATUS_PATH + "/{job_id}/errors/{index}", summary="Rejected lines of one input")
async def import_errors(job_id: str, index: int, jobs: BulkDep, who: PrincipalDep) -> Response:
    """NDJSON: one OperationOutcome per rejected line, in line order."""
    view = await run_in_threadpool(_visible, jobs, job_id, who)
    if not 0 <= index < len(view.inputs):
        raise FhirError.of(404, "not-found", "no such input")

    def lines() -> Any:
        for _line, _status, text in jobs.errors(job_id, index):
            yield text.encode() + b"\n"

    return StreamingResponse(iterate_in_threadpool(lines()), media_type="application/fhir+ndjson")
