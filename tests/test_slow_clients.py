"""Slow and surplus clients against a real `trialbridge serve` process, over raw sockets.

The deadlines are shortened to 1 s through the environment, as an operator would set them. Each
test also shows the connection still open before its deadline, so a server that dropped slow
connections at once would fail as surely as one that never drops them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port

BIN = Path(sys.executable).parent
DEADLINE = 1.0  # seconds, for the head, the body and idle kept-alive connections
SLACK = 4.0  # a loaded test machine may be late by this much, never early
EARLY = 0.9  # a deadline measured from the client's side may look this much shorter
CUT_OFF_REASONS = ("head_timeout", "body_timeout", "body_trickle")


@dataclass(frozen=True)
class Server:
    """A running `trialbridge serve` and the file its output goes to."""

    port: int
    log: Path

    @property
    def url(self) -> str:
        """Base URL for httpx."""
        return f"http://127.0.0.1:{self.port}"

    def connect(self) -> socket.socket:
        """A new raw connection."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def log_size(self) -> int:
        """Where the log ends now, to read what a test adds."""
        return self.log.stat().st_size

    def records(self, since: int) -> list[dict[str, Any]]:
        """The JSON log records written after `since` (uvicorn's own lines are plain text)."""
        with self.log.open("rb") as fh:
            fh.seek(since)
            lines = fh.read().decode().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def guard_records(self, since: int) -> list[dict[str, Any]]:
        """The lines the slow-client guards wrote after `since`."""
        return [r for r in self.records(since) if r["logger"] == "api.client_limits"]

    def guard_counts(self) -> dict[str, float]:
        """The guards' counters, scraped from /metrics and parsed with prometheus-client's parser:
        `refused` (the connection cap) and one entry per cut-off reason."""
        answer = httpx.get(f"{self.url}/metrics", timeout=30)
        assert answer.status_code == 200, answer.text
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(answer.text):
            for sample in family.samples:
                if sample.name == "trialbridge_connections_refused_total":
                    counts["refused"] = sample.value
                elif sample.name == "trialbridge_slow_clients_cut_off_total":
                    counts[sample.labels["reason"]] = sample.value
        assert set(counts) == {"refused", *CUT_OFF_REASONS}, counts  # every series from the start
        return counts

    def guard_growth(self, before: dict[str, float]) -> dict[str, float]:
        """Which guard counters grew since `before`, and by how much."""
        after = self.guard_counts()
        return {name: after[name] - before[name] for name in after if after[name] != before[name]}


def _serve(folder: Path, **env: str) -> Iterator[Server]:
    """`trialbridge serve` on a fresh SQLite database with these settings; no traceback logged."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "serve.log"
    variables = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{folder}/var/trialbridge.db",
        "TRIALBRIDGE_AUTH_DISABLED": "true",
        "TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS": "0",
        "TRIALBRIDGE_MODEL_CHECK_PROCESSES": "0",
        **env,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "trialbridge"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=folder,
            env=variables,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(port, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "Traceback" not in log.read_text()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose head, body and keep-alive deadlines are 1 s."""
    yield from _serve(
        tmp_path_factory.mktemp("guarded"),
        TRIALBRIDGE_HEADER_TIMEOUT_SECONDS=str(DEADLINE),
        TRIALBRIDGE_BODY_TIMEOUT_SECONDS=str(DEADLINE),
        TRIALBRIDGE_KEEP_ALIVE_SECONDS=str(int(DEADLINE)),
    )


CAP = 3


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that serves at most three connections at once (default deadlines)."""
    yield from _serve(tmp_path_factory.mktemp("capped"), TRIALBRIDGE_MAX_CONNECTIONS=str(CAP))


@dataclass(frozen=True)
class Answer:
    """One HTTP response read off a raw socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def read_answer(sock: socket.socket) -> Answer:
    """Read one response (Content-Length framed, as every answer of the service is)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside an answer"
        body += chunk
    assert len(body) == length, "more bytes than the answer"
    return Answer(int(status_line.split(" ")[1]), headers, body)


def wait_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server still sends, and the seconds until it closes the connection."""
    started = time.monotonic()
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - started


def assert_quiet(sock: socket.socket, seconds: float) -> None:
    """Nothing arrives and the connection stays open for `seconds`."""
    sock.settimeout(seconds)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.settimeout(10)


def head(method: str, path: str, *extra: str) -> bytes:
    """A request head with a Host the service answers."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def patient_body(mrn: str) -> bytes:
    """A minimal valid Patient."""
    resource = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]}
    return json.dumps(resource).encode()


# --- the request head ----------------------------------------------------------------------------


def test_a_head_that_stalls_half_way_is_answered_408_and_closed(guarded: Server) -> None:
    counted = guarded.guard_counts()
    since = guarded.log_size()
    with guarded.connect() as sock:
        sock.sendall(b"GET /api/v1/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line
        sent = time.monotonic()
        assert_quiet(sock, DEADLINE / 2)
        data, _ = wait_closed(sock)
        waited = time.monotonic() - sent
    assert EARLY * DEADLINE <= waited < DEADLINE + SLACK
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"\r\nconnection: close\r\n" in data.lower()
    assert data.endswith(b"content-length: 0\r\nconnection: close\r\n\r\n")
    assert [r["message"] for r in guarded.guard_records(since)] == [
        "request head not received within 1 s: answered 408, connection closed"
    ]
    assert guarded.guard_growth(counted) == {"head_timeout": 1}


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(guarded: Server) -> None:
    counted = guarded.guard_counts()
    since = guarded.log_size()
    with guarded.connect() as sock:
        opened = time.monotonic()
        assert_quiet(sock, DEADLINE / 2)
        data, _ = wait_closed(sock)
        waited = time.monotonic() - opened
    assert data == b""
    assert EARLY * DEADLINE <= waited < DEADLINE + SLACK
    assert guarded.guard_records(since) == []  # an idle connection is no event
    assert guarded.guard_growth(counted) == {}  # nor is it counted


def test_the_next_head_on_a_kept_alive_connection_has_its_own_deadline(guarded: Server) -> None:
    """Its first byte cancels uvicorn's keep-alive timer; the head deadline still holds."""
    with guarded.connect() as sock:
        sock.sendall(head("GET", "/healthz"))
        assert read_answer(sock).status == 200
        time.sleep(DEADLINE / 2)  # within the keep-alive time
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        sent = time.monotonic()
        assert_quiet(sock, DEADLINE / 2)
        data, _ = wait_closed(sock)
        waited = time.monotonic() - sent
    assert data.startswith(b"HTTP/1.1 408 ")
    assert EARLY * DEADLINE <= waited < DEADLINE + SLACK


# --- the body ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_type", "partial"),
    [
        ("/fhir/Patient", "application/fhir+json", b'{"resourceType": "Pat'),
        ("/api/v1/subscriptions", "application/json", b'{"url": "https://rec'),
    ],
)
def test_a_body_that_stalls_is_answered_408_in_the_routes_error_shape(
    guarded: Server, path: str, content_type: str, partial: bytes
) -> None:
    counted = guarded.guard_counts()
    since = guarded.log_size()
    with guarded.connect() as sock:
        sock.sendall(
            head("POST", path, f"Content-Type: {content_type}", "Content-Length: 200") + partial
        )
        sent = time.monotonic()
        assert_quiet(sock, DEADLINE / 2)
        answer = read_answer(sock)
        waited = time.monotonic() - sent
        rest, _ = wait_closed(sock)
    assert EARLY * DEADLINE <= waited < DEADLINE + SLACK
    assert answer.status == 408
    assert answer.headers["connection"] == "close"
    assert rest == b""  # and the connection is closed
    if path.startswith("/fhir"):
        assert answer.json() == {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "timeout",
                    "diagnostics": f"POST {path}: the request body did not arrive within 1 s",
                }
            ],
        }
    else:
        assert answer.json() == {
            "error": {
                "status": 408,
                "code": "request_timeout",
                "message": "the request body did not arrive within 1 s",
                "details": [],
            }
        }
    route = "/fhir/{resource_type}" if path.startswith("/fhir") else path
    guards = guarded.guard_records(since)
    assert [(r["level"], r["message"]) for r in guards] == [
        ("INFO", f"request body not received within 1 s: answered 408 ({route})")
    ]
    assert guards[0]["request_id"] == answer.headers["x-request-id"]
    assert "exception" not in guards[0]
    # (the test's own /metrics scrape before the request may be logged after `since` on a busy host)
    access = [
        r
        for r in guarded.records(since)
        if r["logger"] == "trialbridge.access" and r["route"] != "/metrics"
    ]
    assert [(r["route"], r["status"]) for r in access] == [(route, 408)]
    assert not [r for r in guarded.records(since) if r["level"] in ("WARNING", "ERROR")]
    assert "Traceback" not in guarded.log.read_text()
    assert guarded.guard_growth(counted) == {"body_timeout": 1}


def test_a_body_that_arrives_in_parts_within_the_deadline_is_served(guarded: Server) -> None:
    body = patient_body("in-parts")
    with guarded.connect() as sock:
        sock.sendall(
            head(
                "POST",
                "/fhir/Patient",
                "Content-Type: application/fhir+json",
                f"Content-Length: {len(body)}",
            )
            + body[:10]
        )
        time.sleep(DEADLINE / 2)
        sock.sendall(body[10:])
        answer = read_answer(sock)
    assert answer.status == 201, answer.body
    assert answer.json()["identifier"] == [{"system": "urn:mrn", "value": "in-parts"}]


def test_a_streamed_import_may_outlast_the_deadline_while_its_parts_keep_coming(
    guarded: Server,
) -> None:
    """$import: the body deadline is the longest silence between parts, not the whole body."""
    lines = [patient_body(f"import-{i}") for i in range(4)]
    with guarded.connect() as sock:
        sock.sendall(
            head(
                "POST",
                "/fhir/$import",
                "Content-Type: application/fhir+ndjson",
                "Accept: application/fhir+json",
                "Transfer-Encoding: chunked",
            )
        )
        for line in lines:  # 4 parts 0.6 s apart: 2.4 s in all, more than twice the deadline
            part = line + b"\n"
            sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            time.sleep(DEADLINE * 0.6)
        sock.sendall(b"0\r\n\r\n")
        answer = read_answer(sock)
    assert answer.status == 200, answer.body
    found = httpx.get(f"{guarded.url}/fhir/Patient", params={"identifier": "urn:mrn|import-3"})
    assert found.json()["total"] == 1


def test_a_streamed_import_that_falls_silent_is_answered_408(guarded: Server) -> None:
    counted = guarded.guard_counts()
    with guarded.connect() as sock:
        sock.sendall(
            head(
                "POST",
                "/fhir/$import",
                "Content-Type: application/fhir+ndjson",
                "Transfer-Encoding: chunked",
            )
        )
        part = patient_body("import-silent") + b"\n"
        sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        answer = read_answer(sock)  # then nothing more
    assert answer.status == 408, answer.body
    assert answer.json()["issue"][0]["code"] == "timeout"
    assert guarded.guard_growth(counted) == {"body_timeout": 1}


def test_a_body_trickling_after_its_answer_is_cut_off(guarded: Server) -> None:
    """Answered without reading its body (no such route), the rest must still come in time:
    each byte would otherwise cancel the keep-alive timer and hold the connection for ever."""
    counted = guarded.guard_counts()
    since = guarded.log_size()
    with guarded.connect() as sock:
        sock.sendall(head("POST", "/nowhere", "Content-Length: 1000") + b"abc")
        sent = time.monotonic()
        assert read_answer(sock).status == 404
        closed_after = None
        while time.monotonic() - sent < DEADLINE + SLACK:
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - sent
                break
            sock.settimeout(0.1)
            try:
                if sock.recv(1) == b"":
                    closed_after = time.monotonic() - sent
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed_after = time.monotonic() - sent
                break
    assert closed_after is not None, "the trickle kept the connection open"
    assert EARLY * DEADLINE <= closed_after < DEADLINE + SLACK
    assert [r["message"] for r in guarded.guard_records(since)] == [
        "request body still arriving 1 s after its head, after the answer: connection closed"
    ]
    assert guarded.guard_growth(counted) == {"body_trickle": 1}


# --- idle connections --------------------------------------------------------------------------


def test_an_idle_kept_alive_connection_closes_after_the_keep_alive_time(guarded: Server) -> None:
    with guarded.connect() as sock:
        sock.sendall(head("GET", "/healthz"))
        assert read_answer(sock).status == 200
        sock.sendall(head("GET", "/healthz"))  # kept alive: the same connection answers again
        second = read_answer(sock)
        answered = time.monotonic()
        assert second.status == 200
        assert second.json() == {"status": "ok"}
        assert_quiet(sock, DEADLINE / 2)
        data, _ = wait_closed(sock)
        idle = time.monotonic() - answered
    assert data == b""
    assert EARLY * DEADLINE <= idle < DEADLINE + SLACK


def test_normal_requests_are_unaffected(guarded: Server) -> None:
    counted = guarded.guard_counts()
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        created = client.post(
            "/fhir/Patient",
            content=patient_body("normal"),
            headers={"Content-Type": "application/fhir+json"},
        )
        assert created.status_code == 201, created.text
        found = client.get("/fhir/Patient", params={"identifier": "urn:mrn|normal"})
        assert found.status_code == 200
        assert found.json()["total"] == 1
        assert client.get("/api/v1/studies").status_code == 200
    assert guarded.guard_growth(counted) == {}


# --- the connection cap --------------------------------------------------------------------------


def test_a_request_beyond_the_connection_cap_gets_503_and_the_others_are_served(
    capped: Server,
) -> None:
    counted = capped.guard_counts()
    since = capped.log_size()
    bodies = [patient_body(f"cap-{n}") for n in range(CAP)]
    held = [capped.connect() for _ in bodies]
    try:
        for sock, body in zip(held, bodies, strict=True):  # in flight: the body half sent
            sock.sendall(
                head(
                    "POST",
                    "/fhir/Patient",
                    "Content-Type: application/fhir+json",
                    f"Content-Length: {len(body)}",
                )
                + body[:10]
            )
        time.sleep(0.3)  # the server has accepted all three

        with capped.connect() as extra:
            extra.sendall(head("GET", "/fhir/Patient"))
            fhir = read_answer(extra)
            assert wait_closed(extra)[0] == b""
        assert fhir.status == 503
        assert fhir.headers["retry-after"] == "1"
        assert fhir.headers["x-content-type-options"] == "nosniff"
        assert fhir.json() == {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "transient",
                    "diagnostics": "too many connections to this server process; retry shortly",
                }
            ],
        }
        time.sleep(0.2)  # the server has seen that connection go
        with capped.connect() as extra:
            extra.sendall(head("GET", "/api/v1/studies"))
            api = read_answer(extra)
        assert api.status == 503
        assert api.json()["error"]["code"] == "too_many_connections"
        time.sleep(0.2)
        with capped.connect() as probe:  # probes are answered however busy the process is
            probe.sendall(head("GET", "/healthz"))
            assert read_answer(probe).status == 200
        # the scrape is answered too, and counts the two refusals (not the probe, nor itself)
        assert capped.guard_growth(counted) == {"refused": 2}

        for sock, body in zip(held, bodies, strict=True):
            sock.sendall(body[10:])
        answers = [read_answer(sock) for sock in held]
    finally:
        for sock in held:
            sock.close()
    assert [a.status for a in answers] == [201] * CAP
    assert sorted(a.json()["identifier"][0]["value"] for a in answers) == [
        f"cap-{n}" for n in range(CAP)
    ]
    warnings = [r for r in capped.guard_records(since) if r["level"] == "WARNING"]
    assert [r["message"] for r in warnings] == [  # one line, not one per refusal
        "over the connection cap (TRIALBRIDGE_MAX_CONNECTIONS=3): 1 request(s) answered 503"
    ]
    # once the held connections are gone, new ones are served again
    deadline = time.monotonic() + 5
    while (status := httpx.get(f"{capped.url}/api/v1/studies").status_code) == 503:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status == 200
