"""The FHIR R4 REST endpoints under /fhir."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

from anyio import from_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from api.audit import for_write
from api.auth import PrincipalDep, principal, require, require_fhir
from api.bulk_import import kick_off, wants_async
from api.deps import AuditLogDep, BaseDep, SettingsDep, StoreDep
from api.fhir_http import (
    FHIR_JSON,
    JSON_TYPES,
    NDJSON_TYPES,
    check_accept,
    declared_size,
    empty_body,
    fhir_response,
    if_none_match,
    json_body,
    prefer_return,
    read_body,
    read_spooled_body,
    require_media_type,
    resource_headers,
    write_response,
)
from api.large_bodies import mark_streamed
from api.metrics import count_results
from api.request_log import route_of
from fhir_mapping.json_codec import dumps, loads
from fhir_mapping.ndjson import ndjson_lines
from service.access.tokens import Principal
from service.errors import FhirError
from service.fhir import responses
from service.fhir.capability import capability_statement
from service.fhir.ingest import EntryResult, WriteContext
from service.fhir.interactions import FhirService
from service.fhir.responses import SpooledBundle

# Every /fhir answer is JSON: a client that accepts none hears 406 before anything else runs.
router = APIRouter(
    prefix="/fhir", tags=["FHIR R4"], dependencies=[Depends(check_accept), Depends(principal)]
)


class _ImportTooLargeError(Exception):
    """A streamed import body grew past TRIALBRIDGE_MAX_IMPORT_BYTES."""


async def _no_nul(request: Request) -> None:
    """An id with U+0000 names no record (PostgreSQL cannot even compare it): 404, not a 500.

    `async`: FastAPI runs a plain `def` dependency in a worker thread (a hand-off per request)."""
    for value in request.path_params.values():
        if "\x00" in str(value):
            raise FhirError.of(404, "not-found", "no record has an id with U+0000")


# The audit trail: read-only, for holders of the `audit` scope (before /fhir/{resource_type}).
audit_router = APIRouter(
    prefix="/fhir",
    tags=["FHIR R4: audit trail"],
    dependencies=[Depends(check_accept), Depends(_no_nul)],
)
# What needs no token: the CapabilityStatement (it tells clients how to get one).
open_router = APIRouter(prefix="/fhir", tags=["FHIR R4"], dependencies=[Depends(check_accept)])


def _version() -> str:
    try:
        return version("trialbridge")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def _source(request: Request) -> str:
    """Stored with each version: the route (never the path: its ids and values) and the peer."""
    client = request.client.host if request.client else "?"
    return f"rest {request.method} {route_of(request.scope)} from {client}"


def _context(
    request: Request,
    store: FhirService,
    who: Principal,
    base: str | None = None,
    *,
    keep_content: bool = True,
) -> WriteContext:
    """A write for this request: its scopes, its client, and its audit note (same transaction)."""
    return store.context(
        _source(request),
        base_url=base,
        permits=who.scopes.fhir,
        client=who.client,
        audit=for_write(request, who.client),
        keep_content=keep_content,
    )


async def _require_audit(request: Request, who: Principal) -> None:
    """The `audit` scope; then this process's journal is stored, so what it answered is found."""
    require(who, who.scopes.audit, "audit")
    await run_in_threadpool(request.app.state.audit.flush)


@audit_router.get("/AuditEvent", summary="Search the audit trail (scope: audit)")
async def search_audit_events(
    request: Request, log: AuditLogDep, base: BaseDep, who: PrincipalDep
) -> Response:
    """AuditEvents, newest first: by `agent` (client id), `entity` (Type/id or system|value), `date`."""
    await _require_audit(request, who)
    params = list(request.query_params.multi_items())
    return fhir_response(await run_in_threadpool(log.search, "AuditEvent", params, base=base))


@audit_router.get("/AuditEvent/{record_id}", summary="Read an AuditEvent (scope: audit)")
async def read_audit_event(
    request: Request, record_id: str, log: AuditLogDep, who: PrincipalDep
) -> Response:
    """One AuditEvent."""
    await _require_audit(request, who)
    return fhir_response(await run_in_threadpool(log.read, "AuditEvent", record_id))


@audit_router.get("/Provenance", summary="Search write provenance (scope: audit)")
async def search_provenance(
    request: Request, log: AuditLogDep, base: BaseDep, who: PrincipalDep
) -> Response:
    """Provenance of every write, newest first: by `agent` (client id), `target`, `recorded`."""
    await _require_audit(request, who)
    params = list(request.query_params.multi_items())
    return fhir_response(await run_in_threadpool(log.search, "Provenance", params, base=base))


@audit_router.get("/Provenance/{record_id}", summary="Read a Provenance (scope: audit)")
async def read_provenance(
    request: Request,
    record_id: str,
    log: AuditLogDep,
    store: StoreDep,
    base: BaseDep,
    who: PrincipalDep,
) -> Response:
    """One Provenance: recorded by this server, else as a client sent it."""
    await _require_audit(request, who)
    try:
        return fhir_response(await run_in_threadpool(log.read, "Provenance", record_id))
    except FhirError as exc:
        if exc.status != 404:
            raise
    require_fhir(who, "Provenance", "r")  # one a client sent: a FHIR read like any other
    result = await run_in_threadpool(store.read, "Provenance", record_id)
    return _read_response(request, result, base)


async def _json(request: Request, settings: SettingsDep) -> object:
    require_media_type(request, JSON_TYPES)
    body = await read_body(request, settings.max_body_bytes)
    return await run_in_threadpool(loads, body)  # CPU work stays off the event loop


@open_router.get("/metadata", summary="CapabilityStatement")
async def metadata(request: Request, base: BaseDep) -> Response:
    """What this server supports, truthfully."""
    return fhir_response(dumps(capability_statement(base_url=base, version=_version())))


@router.post("/$import", summary="Import NDJSON (one resource per line)")
async def import_ndjson(
    request: Request, store: StoreDep, settings: SettingsDep, base: BaseDep, who: PrincipalDep
) -> Response:
    """Upsert every line on its own; a batch-response with one entry per line.

    The body is read as it arrives, a line at a time, and written in chunks (each committed on
    its own); the answer is written to a temporary file as the lines are done. Memory does not
    grow with the body, and the import takes no large-body slot. With `Prefer: respond-async`
    the import is a job instead (api/bulk_import.py): 202 and a status URL.
    """
    if wants_async(request):
        return await kick_off(request, who, base)
    require_media_type(request, NDJSON_TYPES)
    limit = settings.max_import_bytes
    declared_size(request, limit)
    mark_streamed(request)
    ctx = _context(request, store, who, keep_content=False)
    stream = request.stream()
    received = 0

    async def next_chunk() -> bytes | None:
        try:
            return await anext(stream)
        except StopAsyncIteration:
            return None

    def chunks() -> Iterator[bytes]:
        """The body's chunks, fetched from the event loop as the import needs them."""
        nonlocal received
        while (chunk := from_thread.run(next_chunk)) is not None:
            received += len(chunk)
            if received > limit:  # sent without a Content-Length, and found too long late
                raise _ImportTooLargeError
            yield chunk

    def work() -> SpooledBundle:
        answer = SpooledBundle("batch-response")
        try:
            for outcome in store.import_lines(
                ndjson_lines(chunks(), settings.max_import_line_bytes), ctx=ctx
            ):
                count_results((outcome.result,))
                answer.add(outcome.result)
            if received == 0:
                raise empty_body()
        except _ImportTooLargeError:
            answer.close()
            raise FhirError.of(
                413,
                "too-long",
                f"the body exceeds the limit of {limit} bytes; its first {answer.entries} "
                "line(s) with content were handled (each chunk commits on its own), the rest "
                "was not read: send the rest as another import",
            ) from None
        except BaseException:
            answer.close()
            raise
        return answer

    answer = await run_in_threadpool(work)
    size = answer.finish()
    return StreamingResponse(
        iterate_in_threadpool(answer.chunks()),
        media_type=FHIR_JSON,
        headers={"Content-Length": str(size)},
    )


@router.post("", summary="Transaction, batch, collection or message Bundle")
@router.post("/", include_in_schema=False)
async def post_bundle(
    request: Request, store: StoreDep, settings: SettingsDep, base: BaseDep, who: PrincipalDep
) -> Response:
    """Process a Bundle: transaction (atomic), batch (per entry), collection/message (atomic upsert)."""
    require_media_type(request, JSON_TYPES)
    representation = prefer_return(request, "minimal") == "representation"
    ctx = _context(request, store, who, base, keep_content=representation)
    # a large body waits on disk, not in memory, while it is written (service/fhir/spooled.py)
    with await read_spooled_body(
        request, settings.max_body_bytes, settings.large_body_bytes
    ) as body:
        kind, results = await run_in_threadpool(store.bundle_json, body, ctx=ctx)
    count_results(results)
    return fhir_response(responses.response_bundle(kind, results, representation=representation))


@router.get("/{resource_type}", summary="Search")
async def search(
    request: Request, resource_type: str, store: StoreDep, base: BaseDep, who: PrincipalDep
) -> Response:
    """Search current resources of one type; a searchset Bundle with cursor paging."""
    store.check_type(resource_type)
    require_fhir(who, resource_type, "s")
    params = list(request.query_params.multi_items())
    return fhir_response(await run_in_threadpool(store.search, resource_type, params, base=base))


@router.post("/{resource_type}", summary="Create")
async def create(
    request: Request,
    resource_type: str,
    store: StoreDep,
    settings: SettingsDep,
    base: BaseDep,
    who: PrincipalDep,
) -> Response:
    """Create; If-None-Exist for a conditional create. Identical content returns the original."""
    store.check_type(resource_type)
    require_fhir(who, resource_type, "c")
    body = json_body(await _json(request, settings))
    ctx = _context(request, store, who, base)
    result = await run_in_threadpool(
        store.create,
        resource_type,
        body,
        if_none_exist=request.headers.get("if-none-exist"),
        ctx=ctx,
    )
    return write_response(request, result, base)


@router.put("/{resource_type}", summary="Conditional update")
async def conditional_update(
    request: Request,
    resource_type: str,
    store: StoreDep,
    settings: SettingsDep,
    base: BaseDep,
    who: PrincipalDep,
) -> Response:
    """Update the one resource matching the query (create when none does)."""
    store.check_type(resource_type)
    require_fhir(who, resource_type, "u")
    body = json_body(await _json(request, settings))
    ctx = _context(request, store, who, base)
    params = list(request.query_params.multi_items())
    result = await run_in_threadpool(store.update_conditional, resource_type, params, body, ctx=ctx)
    return write_response(request, result, base)


@router.delete("/{resource_type}", summary="Conditional delete")
async def conditional_delete(
    request: Request, resource_type: str, store: StoreDep, base: BaseDep, who: PrincipalDep
) -> Response:
    """Delete the one resource matching the query; 412 when several match."""
    store.check_type(resource_type)
    require_fhir(who, resource_type, "d")
    ctx = _context(request, store, who, base)
    params = list(request.query_params.multi_items())
    await run_in_threadpool(store.delete_conditional, resource_type, params, ctx=ctx)
    return Response(status_code=204)


@router.get("/{resource_type}/{resource_id}", summary="Read")
async def read(
    request: Request,
    resource_type: str,
    resource_id: str,
    store: StoreDep,
    base: BaseDep,
    who: PrincipalDep,
) -> Response:
    """The current version, served as stored."""
    store.check_type(resource_type)
    require_fhir(who, resource_type, "r")
    result = await run_in_threadpool(store.read, resource_type, resource_id)
    return _read_response(request, result, base)


@router.get("/{resource_type}/{resource_id}/_history/{version_id}", summary="Version read")
async def vread(
    request: Request,
    resource_type: str,
    resource_id: str,
    version_id: str,
    store: StoreDep,
    base: BaseDep,
    who: PrincipalDep,
) -> Response:
    """One version, served as stored."""
    store.check_type(resource_type)
    require_fhir(who, resource_type, "r")
    result = await run_in_threadpool(store.read, resource_type, resource_id, version_id)
    return _read_response(request, result, base)


@router.put("/{resource_type}/{resource_id}", summary="Update or create")
async def update(
    request: Request,
    resource_type: str,
    resource_id: str,
    store: StoreDep,
    settings: SettingsDep,
    base: BaseDep,
    who: PrincipalDep,
) -> Response:
    """Update (or create with this id); If-Match for a versioned update."""
    store.check_type(resource_type)
    require_fhir(who, resource_type, "u")
    body = json_body(await _json(request, settings))
    ctx = _context(request, store, who, base)
    result = await run_in_threadpool(
        store.update,
        resource_type,
        resource_id,
        body,
        if_match=request.headers.get("if-match"),
        ctx=ctx,
    )
    return write_response(request, result, base)


@router.delete("/{resource_type}/{resource_id}", summary="Delete")
async def delete(
    request: Request,
    resource_type: str,
    resource_id: str,
    store: StoreDep,
    base: BaseDep,
    who: PrincipalDep,
) -> Response:
    """Delete (a tombstone version); deleting an absent resource is not an error."""
    store.check_type(resource_type)
    require_fhir(who, resource_type, "d")
    ctx = _context(request, store, who, base)
    result = await run_in_threadpool(
        store.delete, resource_type, resource_id, if_match=request.headers.get("if-match"), ctx=ctx
    )
    headers = {"ETag": f'W/"{result.version_id}"'} if result.version_id else {}
    return Response(status_code=204, headers=headers)


def _read_response(request: Request, result: EntryResult, base: str) -> Response:
    assert result.content is not None
    headers = resource_headers(result, base)
    headers.pop("Location", None)
    etag = headers.get("ETag")
    if etag and if_none_match(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return fhir_response(result.content.encode(), 200, headers)
