"""`$import` reads its body as a stream: line by line, in chunks that commit on their own.

Over real HTTP on SQLite and PostgreSQL, against a server with small import limits. Bodies are
sent in pieces that cut lines (and UTF-8 characters) at odd places, without a Content-Length.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from fhir_mapping.issues import Issue
from fhir_mapping.ndjson import RefusedLine, ndjson_lines
from service.fhir.interactions import IMPORT_CHUNK
from service.infra.settings import Settings
from tests.conftest import clear_store, counts
from tests.kit.live import Served, served
from tests.kit.store import store_counts

NDJSON = {"content-type": "application/fhir+ndjson", "accept": "application/fhir+json"}
LINE_LIMIT = 4096
IMPORT_LIMIT = 1024 * 1024


@pytest.fixture
def server(database_url: str, engine: Engine) -> Iterator[Served]:
    """The app with a 4 KiB line limit and a 1 MiB import limit, on an empty store."""
    clear_store(engine)
    settings = Settings(
        database_url=database_url,
        max_import_line_bytes=LINE_LIMIT,
        max_import_bytes=IMPORT_LIMIT,
    )
    with served(settings) as running:
        yield running


def patient_line(n: int) -> bytes:
    """A Patient of its own (its identifier differs), so every line is a new resource."""
    resource = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:mrn", "value": f"stream-{n}"}],
        "name": [{"text": f"Zoë Stream {n}"}],  # a two-byte character for the cuts to split
    }
    return json.dumps(resource, ensure_ascii=False).encode()


def pieces(body: bytes, size: int) -> Iterator[bytes]:
    """The body in `size`-byte pieces: sent chunked, lines and characters cut anywhere."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def provenances(engine: Engine, request_id: str) -> int:
    """Provenance records of one request: one per committed chunk."""
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT count(*) FROM audit_record WHERE kind = 'Provenance' AND request_id = :r"),
            {"r": request_id},
        ).scalar_one()
    return int(found)


def post_import(server: Served, content: Any, **headers: str) -> httpx.Response:
    with httpx.Client(base_url=f"{server.url}/fhir", timeout=120) as client:
        return client.post("/$import", content=content, headers={**NDJSON, **headers})


def test_a_malformed_line_in_a_multi_chunk_import_fails_alone(
    server: Served, engine: Engine
) -> None:
    lines = 2 * IMPORT_CHUNK + 203  # three chunks
    bad = IMPORT_CHUNK + 100  # in the second
    body = b"\n".join(
        b'{"resourceType":"Patient","name":[{"text":"cut' if n == bad else patient_line(n)
        for n in range(1, lines + 1)
    )
    response = post_import(server, pieces(body, 997))
    assert response.status_code == 200, response.text
    assert "content-length" not in response.request.headers  # streamed to the server too
    bundle = response.json()
    assert bundle["type"] == "batch-response"
    entries = [e["response"] for e in bundle["entry"]]
    assert len(entries) == lines
    assert [n for n, e in enumerate(entries, 1) if e["status"] != "201 Created"] == [bad]
    issue = entries[bad - 1]["outcome"]["issue"][0]
    assert issue["code"] == "structure"
    assert issue["diagnostics"].startswith(f"line {bad}: malformed JSON"), issue
    assert counts(engine) == store_counts(
        fhir_resource=lines - 1,
        fhir_resource_version=lines - 1,
        fhir_identifier=lines - 1,
        trial_event=lines - 1,  # each Patient's demographics
    )
    # the names came through the cuts intact, in line order
    first = httpx.get(f"{server.url}/fhir/{entries[0]['location']}").json()
    assert first["name"] == [{"text": "Zoë Stream 1"}]
    last = httpx.get(f"{server.url}/fhir/{entries[-1]['location']}").json()
    assert last["identifier"][0]["value"] == f"stream-{lines}"
    request_id = response.headers["x-request-id"]
    assert provenances(engine, request_id) == 3
    # its AuditEvent names the three chunks' Provenances (each naming its versions), not each line
    server.app.state.audit.flush()
    with engine.connect() as conn:
        records = conn.execute(
            text("SELECT kind, id, content FROM audit_record WHERE request_id = :r"),
            {"r": request_id},
        ).all()
    named = {
        e["what"]["reference"]
        for kind, _, content in records
        if kind == "AuditEvent"
        for e in json.loads(content)["entity"]
        if "reference" in e.get("what", {})
    }
    assert named == {f"Provenance/{rid}" for kind, rid, _ in records if kind == "Provenance"}
    assert sum(1 for kind, _, _ in records if kind == "AuditEvent") == 1


def test_a_line_too_long_or_not_utf8_fails_alone(server: Served, engine: Engine) -> None:
    long_line = b'{"resourceType":"Patient","name":[{"text":"' + b"x" * LINE_LIMIT + b'"}]}'
    body = b"\n".join(
        [
            b"\xef\xbb\xbf" + patient_line(1),  # a byte-order mark first is dropped
            long_line,
            patient_line(3),
            b'{"resourceType":"Patient","name":[{"text":"\xff"}]}',
            patient_line(5),
        ]
    )
    response = post_import(server, pieces(body, 1000))
    assert response.status_code == 200, response.text
    entries = [e["response"] for e in response.json()["entry"]]
    assert [e["status"] for e in entries] == [
        "201 Created",
        "413 Content Too Large",
        "201 Created",
        "400 Bad Request",
        "201 Created",
    ]
    assert entries[1]["outcome"]["issue"][0] == {
        "severity": "error",
        "code": "too-long",
        "diagnostics": f"line 2: the line is longer than the limit of {LINE_LIMIT} bytes",
    }
    assert entries[3]["outcome"]["issue"][0] == {
        "severity": "error",
        "code": "structure",
        "diagnostics": "line 4: the line is not valid UTF-8 (byte 43)",
    }
    assert counts(engine)["fhir_resource"] == 3


def test_an_import_over_the_limit_is_refused_before_it_is_read(
    server: Served, engine: Engine
) -> None:
    line = patient_line(0) + b"\n"
    body = line * (IMPORT_LIMIT // len(line) + 1)
    assert len(body) > IMPORT_LIMIT
    response = post_import(server, body)
    assert response.status_code == 413, response.text
    assert response.json()["issue"][0]["code"] == "too-long"
    assert counts(engine) == store_counts()


def test_a_chunked_import_over_the_limit_stops_there(server: Served, engine: Engine) -> None:
    """Sent without a Content-Length, the limit is found while reading: the chunks committed
    before it stay, the answer says how many lines were handled, nothing after is read."""
    lines = [patient_line(n) for n in range(1, IMPORT_LIMIT // 100)]
    body = b"\n".join(lines)
    assert len(body) > IMPORT_LIMIT
    response = post_import(server, pieces(body, 4096))
    assert response.status_code == 413, response.text
    issue = response.json()["issue"][0]
    assert issue["code"] == "too-long"
    handled = int(issue["diagnostics"].split("its first ")[1].split(" ")[0])
    assert handled % IMPORT_CHUNK == 0  # whole chunks only
    assert handled > 0
    assert counts(engine)["fhir_resource"] == handled


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_lines_are_cut_from_any_chunking(size: int) -> None:
    body = "\ufeffa\n\nbé\r\n\u2028c\nlast".encode()
    got = list(ndjson_lines(pieces(body, size), 8))
    assert got == ["a", "", "bé\r", "\u2028c", "last"]


def test_a_long_line_is_skipped_to_its_end() -> None:
    body = b"12345678\n123456789\nok\n\xe9\n"
    got = list(ndjson_lines(pieces(body, 4), 8))
    assert got == [  # the final newline ends the last line: no empty line after it
        "12345678",
        RefusedLine(413, Issue("too-long", "the line is longer than the limit of 8 bytes")),
        "ok",
        RefusedLine(400, Issue("structure", "the line is not valid UTF-8 (byte 0)")),
    ]
