"""FHIR response documents built around stored resource bytes (never re-serialised)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
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
    413: "413 Content Too Large",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}


def status_text(status: int) -> str:
    """HTTP status line text as Bundle.entry.response.status wants it."""
    return _STATUS_TEXT.get(status, str(status))


def resource_fragment(content: str) -> orjson.Fragment:
    """Embed stored JSON verbatim in a larger document."""
    return orjson.Fragment(content.encode())


def response_entry(r: EntryResult, *, representation: bool) -> dict[str, Any]:
    """One entry of a transaction-response / batch-response."""
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
    return entry


def _envelope(kind: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": kind,
        "timestamp": fhir_instant(utcnow()),
    }


def response_bundle(kind: str, results: list[EntryResult], *, representation: bool) -> bytes:
    """transaction-response / batch-response: one entry per request entry, same order."""
    doc = _envelope(kind)
    doc["entry"] = [response_entry(r, representation=representation) for r in results]
    return orjson.dumps(doc)


class SpooledBundle:
    """A response Bundle written entry by entry to a temporary file (in memory while small), so an
    answer with one entry per line of a large import is never held whole."""

    def __init__(self, kind: str, *, in_memory_up_to: int = 1024 * 1024) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=in_memory_up_to)  # noqa: SIM115
        head = orjson.dumps({**_envelope(kind), "entry": []})
        self.file.write(head[: -len(b"[]}")] + b"[")  # `"entry":[` … `]}` around the entries
        self.entries = 0

    def add(self, result: EntryResult) -> None:
        """Append one entry (no representation: an import answers with outcomes only)."""
        if self.entries:
            self.file.write(b",")
        self.file.write(orjson.dumps(response_entry(result, representation=False)))
        self.entries += 1

    def finish(self) -> int:
        """Close the document; its size in bytes, ready to be read from the start."""
        self.file.write(b"]}")
        size = self.file.tell()
        self.file.seek(0)
        return size

    def chunks(self, size: int = 64 * 1024) -> Iterator[bytes]:
        """The document in blocks; the file is closed (deleted) after the last, or if abandoned."""
        try:
            while block := self.file.read(size):
                yield block
        finally:
            self.file.close()

    def close(self) -> None:
        """Drop the document unread."""
        self.file.close()
