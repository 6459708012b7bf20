"""FHIR response documents built around stored resource bytes (never re-serialised)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from fhir_mapping.issues import operation_outcome
from service.fhir.ingest import EntryResult
from service.infra.clock import fhir_instant, utcnow

_STATUS_TEXT = {
    200: "200 OK",
    201: "201 Created",
    204: "204 No Content",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    404: "404 Not Found",
    409: "409 Conflict",
    410: "410 Gone",
    412: "412 Precondition Failed",
    422: "422 Unprocessable Entity",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}


def status_text(status: int) -> str:
    """HTTP status line text as Bundle.entry.response.status wants it."""
    return _STATUS_TEXT.get(status, str(status))


def resource_fragment(content: str) -> orjson.Fragment:
    """Embed stored JSON verbatim in a larger document."""
    return orjson.Fragment(content.encode())


def response_bundle(kind: str, results: list[EntryResult], *, representation: bool) -> bytes:
    """transaction-response / batch-response: one entry per request entry, same order."""
    entries: list[dict[str, Any]] = []
    for r in results:
        response: dict[str, Any] = {"status": status_text(r.status)}
        if r.location:
            response["location"] = r.location
            response["etag"] = f'W/"{r.version_id}"'
        if r.last_updated is not None and r.version_id:
            response["lastModified"] = fhir_instant(r.last_updated)
        if r.issues:
            response["outcome"] = operation_outcome(r.issues)
        entry: dict[str, Any] = {}
        if r.resource_type and r.resource_id:
            entry["fullUrl"] = f"{r.resource_type}/{r.resource_id}"
        if r.content is not None and (representation or r.change == "read"):
            entry["resource"] = resource_fragment(r.content)
        entry["response"] = response
        entries.append(entry)
    doc = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": kind,
        "timestamp": fhir_instant(utcnow()),
        "entry": entries,
    }
    return orjson.dumps(doc)
