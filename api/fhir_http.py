"""Request bodies and FHIR responses: size limits before parsing, media types, ETags."""

from __future__ import annotations

import os
from typing import Any, BinaryIO

from fastapi import Request
from fastapi.responses import Response

from fhir_mapping.issues import Issue, operation_outcome
from fhir_mapping.json_codec import dumps
from fhir_mapping.tokens import ENTITY_TAG, ascii_int
from service.errors import FhirError
from service.fhir.ingest import EntryResult
from service.fhir.spooled import RequestBytes
from service.infra.clock import http_date

FHIR_JSON = "application/fhir+json; charset=utf-8"
JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
NDJSON_TYPES = ("application/fhir+ndjson", "application/x-ndjson", "application/ndjson")
_R4_VERSIONS = ("4.0", "4.0.0", "4.0.1")


def media_type(request: Request) -> tuple[str, dict[str, str]]:
    """Content-Type without parameters, and its parameters."""
    raw = request.headers.get("content-type", "")
    main, *params = [p.strip() for p in raw.split(";")]
    parsed = {}
    for p in params:
        if "=" in p:
            k, v = p.split("=", 1)
            parsed[k.strip().lower()] = v.strip().strip('"')
    return main.lower(), parsed


def require_media_type(request: Request, accepted: tuple[str, ...]) -> None:
    """415 unless the body is one of the accepted media types, as FHIR R4."""
    main, params = media_type(request)
    if main not in accepted:
        shown = main or "no Content-Type"
        raise FhirError.of(
            415, "not-supported", f"{shown} is not accepted here; send {accepted[0]}"
        )
    charset = params.get("charset")
    if charset is not None and charset.strip('"').lower() not in ("utf-8", "utf8"):
        raise FhirError.of(
            415, "not-supported", f"charset={charset} is not accepted; FHIR JSON is UTF-8"
        )
    version = params.get("fhirversion")
    if version is not None and version not in _R4_VERSIONS:
        raise FhirError.of(
            415,
            "not-supported",
            f"fhirVersion={version} is not served here; this server speaks FHIR R4 (4.0)",
        )


async def check_accept(request: Request) -> None:
    """406 when the client accepts no JSON (we do not serve XML or Turtle)."""
    fmt = request.query_params.get("_format")
    if fmt is not None and fmt not in ("json", *JSON_TYPES):
        raise FhirError.of(
            406, "not-supported", f"_format={fmt} is not served; this server speaks JSON only"
        )
    accept = request.headers.get("accept")
    if not accept:
        return
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if not any(k in (*JSON_TYPES, "*/*", "application/*") for k in kinds):
        raise FhirError.of(
            406,
            "not-supported",
            f"Accept: {accept} cannot be served; this server speaks application/fhir+json",
        )


def too_large(limit: int) -> FhirError:
    return FhirError.of(
        413,
        "too-long",
        f"request body exceeds the limit of {limit} bytes; split it into smaller bundles",
    )


def declared_size(request: Request, limit: int) -> int | None:
    """The Content-Length, refused with 413 when over the limit (before reading), 400 when bad."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    size = ascii_int(declared)
    if size is None:
        raise FhirError.of(
            400,
            "invalid",
            f"Content-Length {declared!r} is not a number of bytes",
            "Content-Length",
        )
    if size > limit:
        raise too_large(limit)
    return size


def empty_body() -> FhirError:
    return FhirError.of(400, "structure", "the request body is empty")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed the limit (before parsing)."""
    declared_size(request, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise empty_body()
    return body


async def read_spooled_body(request: Request, limit: int, spool_over: int) -> RequestBytes:
    """`read_body`, except that a body larger than `spool_over` goes to a temporary file as it
    arrives (never whole in memory); the caller closes it, which deletes the file."""
    declared = declared_size(request, limit)
    chunks: list[bytes] = []
    size = 0
    spooled: RequestBytes | None = None
    out: BinaryIO | None = None
    try:
        if declared is not None and declared > spool_over:
            spooled, fd = RequestBytes.spool()
            out = os.fdopen(fd, "wb")
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            if out is None and size > spool_over:
                spooled, fd = RequestBytes.spool()
                out = os.fdopen(fd, "wb")
                out.writelines(chunks)
                chunks = []
            if out is not None:
                out.write(chunk)  # to the page cache: no wait worth leaving the event loop for
            else:
                chunks.append(chunk)
        if out is not None:
            out.close()
    except BaseException:
        if out is not None:
            out.close()
        if spooled is not None:
            spooled.close()
        raise
    if size == 0:
        raise empty_body()
    return spooled if spooled is not None else RequestBytes(b"".join(chunks))


def fhir_response(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A response with the FHIR JSON media type."""
    return Response(content=body, status_code=status, media_type=FHIR_JSON, headers=headers)


def outcome_response(
    status: int, issues: list[Issue], headers: dict[str, str] | None = None
) -> Response:
    """An OperationOutcome response."""
    return fhir_response(dumps(operation_outcome(issues)), status, headers)


def resource_headers(result: EntryResult, base: str) -> dict[str, str]:
    """ETag, Last-Modified and Location for a single-resource response."""
    headers: dict[str, str] = {}
    if result.version_id:
        headers["ETag"] = f'W/"{result.version_id}"'
    if result.last_updated is not None:
        headers["Last-Modified"] = http_date(result.last_updated)
    if result.location and result.status in (200, 201):
        headers["Location"] = f"{base}/{result.location}"
    return headers


def if_none_match(header: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag`: `*`, or any entity tag in its list equal to
    it by weak comparison (RFC 9110 13.1.2: `"1"`, `W/"1"` both match `W/"1"`)."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    ours = ENTITY_TAG.fullmatch(etag)
    return ours is not None and ours[1] in ENTITY_TAG.findall(header)


def prefer_return(request: Request, default: str) -> str:
    """The `Prefer: return=` the client asked for (minimal, representation, OperationOutcome)."""
    for part in request.headers.get("prefer", "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip() == "return" and value.strip() in (
            "minimal",
            "representation",
            "OperationOutcome",
        ):
            return value.strip()
    return default


def write_response(request: Request, result: EntryResult, base: str) -> Response:
    """Response for POST/PUT of one resource, honouring Prefer."""
    headers = resource_headers(result, base)
    wanted = prefer_return(request, "representation")
    if wanted == "minimal" or result.content is None:
        return Response(status_code=result.status, headers=headers)
    if wanted == "OperationOutcome":
        what = "created" if result.status == 201 else "unchanged or updated"
        info = Issue("informational", f"{result.location} {what}", severity="information")
        return outcome_response(result.status, [info], headers)
    return fhir_response(result.content.encode(), result.status, headers)


def json_body(parsed: Any) -> dict[str, Any]:
    """A parsed body must be a JSON object to be a FHIR resource."""
    if not isinstance(parsed, dict):
        raise FhirError.of(400, "structure", "the body must be a JSON object (a FHIR resource)")
    return parsed
