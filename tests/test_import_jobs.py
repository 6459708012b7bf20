"""Asynchronous `$import` as bulk jobs: kick-off, status, result, errors, cancel, file URLs, and
crash-resume, over real HTTP on a real SQLite file (jobs in the server) and a real PostgreSQL (jobs
on procrastinate, run by real `trialbridge worker` processes)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, bindparam, text
from sqlalchemy.exc import OperationalError

from service.access.clients import add_client
from service.fhir.interactions import FhirService
from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from service.infra.tables import UTCDateTime
from service.jobs import bulk
from service.jobs.bulk import BulkJobs, JobInput
from service.jobs.queue import ensure_schema
from service.repositories import planner_statistics
from tests.conftest import free_port
from tests.kit.auth import access_token, bearer, ec_key, jwks
from tests.kit.cli import TRIALBRIDGE
from tests.kit.live import served

ASYNC_NDJSON = {
    "content-type": "application/fhir+ndjson",
    "accept": "application/fhir+json",
    "prefer": "respond-async",
}
ASYNC_JSON = {
    "content-type": "application/fhir+json",
    "accept": "application/fhir+json",
    "prefer": "respond-async",
}
CHUNK = 7  # lines per committed chunk in these tests


def patient(prefix: str, n: int) -> bytes:
    """A Patient with an id of its own, one NDJSON line."""
    resource = {
        "resourceType": "Patient",
        "id": f"{prefix}-{n}",
        "identifier": [{"system": "urn:mrn", "value": f"{prefix}-{n}"}],
        "gender": "female" if n % 2 else "male",
    }
    return json.dumps(resource).encode()


def patients(prefix: str, count: int) -> bytes:
    """`count` Patients as NDJSON."""
    return b"\n".join(patient(prefix, n) for n in range(1, count + 1)) + b"\n"


def stored(engine: Engine, prefix: str) -> tuple[int, int]:
    """Current resources and versions of the Patients named `prefix-*`."""
    with engine.connect() as conn:
        current = conn.execute(
            text("SELECT count(*) FROM fhir_resource WHERE resource_id LIKE :p"),
            {"p": f"{prefix}-%"},
        ).scalar_one()
        versions = conn.execute(
            text("SELECT count(*) FROM fhir_resource_version WHERE resource_id LIKE :p"),
            {"p": f"{prefix}-%"},
        ).scalar_one()
    return int(current), int(versions)


def job_row(engine: Engine, job_id: str) -> dict[str, Any]:
    """The job as stored: status, attempts, checkpoint."""
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, attempts, checkpoint FROM bulk_job WHERE id = :i"), {"i": job_id}
        ).one()
    return {"status": row.status, "attempts": row.attempts, **json.loads(row.checkpoint)}


def finished(client: httpx.Client, status_url: str, seconds: float = 180) -> httpx.Response:
    """Poll the status URL until it answers 200; every answer before is 202 with X-Progress."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = client.get(status_url)
        if answer.status_code == 200:
            return answer
        assert answer.status_code == 202, answer.text
        assert "line(s) committed" in answer.headers["x-progress"]
        time.sleep(0.1)
    raise AssertionError(f"the job did not finish within {seconds} s")


def _env(database_url: str, **settings: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TRIALBRIDGE_")}
    environment["DATABASE_URL"] = database_url
    environment["TRIALBRIDGE_AUTH_DISABLED"] = "true"
    environment["TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS"] = "0"
    environment.update({f"TRIALBRIDGE_{k.upper()}": v for k, v in settings.items()})
    return environment


@contextmanager
def worker(database_url: str, **settings: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real `trialbridge worker` process; stopped (SIGTERM, then SIGKILL) after."""
    process = subprocess.Popen(
        [TRIALBRIDGE, "worker"],
        env=_env(database_url, **settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@dataclass
class Deployment:
    """A server (and on PostgreSQL a job worker) on a fresh database."""

    url: str
    engine: Engine
    database_url: str
    folder: Path


@pytest.fixture
def deployment(backend: str, new_database: Any, tmp_path: Path) -> Iterator[Deployment]:
    """SQLite: jobs run in the server; PostgreSQL: on procrastinate, run by a worker process."""
    url = str(new_database(backend))
    folder = tmp_path / "imports"
    folder.mkdir()
    knobs = {"import_job_chunk_lines": str(CHUNK), "import_folder": str(folder)}
    settings = Settings(
        database_url=url,
        webhook_interval_seconds=0,
        import_job_chunk_lines=CHUNK,
        import_folder=folder,
        import_spool_dir=tmp_path / "spool",
    )
    with served(settings) as running:
        if backend == "sqlite":
            yield Deployment(running.url, running.engine, url, folder)
        else:
            with worker(url, **knobs):  # no folder shared with the server
                yield Deployment(running.url, running.engine, url, folder)


def spooled(deployment: Deployment, tmp_path: Path) -> int:
    """`$import` bodies still spooled: files on SQLite (jobs in the server), pieces in the
    database on PostgreSQL (jobs on the queue: the worker shares no folder with the server)."""
    with deployment.engine.connect() as conn:
        pieces = conn.execute(text("SELECT count(*) FROM import_spool")).scalar_one()
    folder = tmp_path / "spool"
    files = len(list(folder.iterdir())) if folder.exists() else 0
    if deployment.database_url.startswith("sqlite"):
        assert pieces == 0
        assert folder.exists()  # the body was spooled there
        return files
    assert not folder.exists()  # nothing was spooled to files
    return int(pieces)


def test_async_import_reports_outcomes_per_line_and_is_idempotent_on_retry(
    deployment: Deployment, tmp_path: Path
) -> None:
    body = (
        patients("a", 20)
        + b'{"resourceType": "Patient", "id": "a-bad", oops\n'  # line 21: not JSON
        + b"\n"  # line 22: blank, skipped
        + b'{"resourceType": "Spaceship", "id": "a-21"}\n'  # line 23: no such type
        + patient("a", 22)
        + b"\n"
    )
    with httpx.Client(base_url=deployment.url, timeout=60) as client:
        kicked = client.post("/fhir/$import", content=body, headers=ASYNC_NDJSON)
        assert kicked.status_code == 202, kicked.text
        status_url = kicked.headers["content-location"]
        assert status_url.startswith(f"{deployment.url}/fhir/$import-status/")
        done = finished(client, status_url).json()
        assert done["status"] == "succeeded"
        assert [o["outcomes"] for o in done["output"]] == [
            {"created": 21, "updated": 0, "unchanged": 0, "failed": 2}
        ]
        assert done["output"][0]["count"] == 21
        assert done["output"][0]["inputUrl"] == "body"
        assert len(done["error"]) == 1
        assert done["error"][0]["count"] == 2
        errors = client.get(done["error"][0]["url"])
        assert errors.status_code == 200
        assert errors.headers["content-type"].startswith("application/fhir+ndjson")
        outcomes = [json.loads(line) for line in errors.text.splitlines()]
        assert [o["resourceType"] for o in outcomes] == ["OperationOutcome"] * 2
        assert outcomes[0]["issue"][0]["diagnostics"].startswith("line 21: ")
        assert outcomes[1]["issue"][0]["diagnostics"].startswith("line 23: ")
        assert stored(deployment.engine, "a") == (21, 21)
        assert spooled(deployment, tmp_path) == 0  # the spooled body is gone

        again = client.post("/fhir/$import", content=body, headers=ASYNC_NDJSON)
        retried = finished(client, again.headers["content-location"]).json()
    assert retried["output"][0]["outcomes"] == {
        "created": 0,
        "updated": 0,
        "unchanged": 21,
        "failed": 2,
    }
    assert stored(deployment.engine, "a") == (21, 21)  # no version written twice


def test_file_urls_under_the_import_folder_are_imported_and_others_refused(
    deployment: Deployment, tmp_path: Path
) -> None:
    (deployment.folder / "one.ndjson").write_bytes(patients("f1", 5))
    (deployment.folder / "sub").mkdir()
    (deployment.folder / "sub" / "two.ndjson").write_bytes(patients("f2", 9))
    (tmp_path / "outside.ndjson").write_bytes(patients("x", 1))

    def params(*urls: str) -> dict[str, Any]:
        return {
            "resourceType": "Parameters",
            "parameter": [{"name": "inputFormat", "valueCode": "application/fhir+ndjson"}]
            + [
                {
                    "name": "input",
                    "part": [
                        {"name": "type", "valueCode": "Patient"},
                        {"name": "url", "valueUrl": u},
                    ],
                }
                for u in urls
            ],
        }

    one = (deployment.folder / "one.ndjson").as_uri()
    two = (deployment.folder / "sub" / "two.ndjson").as_uri()
    with httpx.Client(base_url=deployment.url, timeout=60) as client:
        kicked = client.post("/fhir/$import", json=params(one, two), headers=ASYNC_JSON)
        assert kicked.status_code == 202, kicked.text
        done = finished(client, kicked.headers["content-location"]).json()
        refusals = {
            "http": client.post(
                "/fhir/$import", json=params("https://example.org/a.ndjson"), headers=ASYNC_JSON
            ),
            "outside": client.post(
                "/fhir/$import",
                json=params((tmp_path / "outside.ndjson").as_uri()),
                headers=ASYNC_JSON,
            ),
            "dotdot": client.post(
                "/fhir/$import",
                json=params(f"{deployment.folder.as_uri()}/../outside.ndjson"),
                headers=ASYNC_JSON,
            ),
            "missing": client.post(
                "/fhir/$import",
                json=params((deployment.folder / "nope.ndjson").as_uri()),
                headers=ASYNC_JSON,
            ),
            "remote host": client.post(
                "/fhir/$import",
                json=params("file://otherhost" + str(deployment.folder / "one.ndjson")),
                headers=ASYNC_JSON,
            ),
            "no input": client.post(
                "/fhir/$import", json={"resourceType": "Parameters"}, headers=ASYNC_JSON
            ),
        }
    assert done["status"] == "succeeded"
    assert [(o["inputUrl"], o["outcomes"]["created"]) for o in done["output"]] == [
        (one, 5),
        (two, 9),
    ]
    assert done["error"] == []
    assert {k: r.status_code for k, r in refusals.items()} == {
        "http": 400,
        "outside": 403,
        "dotdot": 403,
        "missing": 404,
        "remote host": 400,
        "no input": 400,
    }
    for answer in refusals.values():
        assert answer.json()["resourceType"] == "OperationOutcome"
    assert stored(deployment.engine, "x") == (0, 0)
    with deployment.engine.connect() as conn:  # a refused kick-off made no job
        assert conn.execute(text("SELECT count(*) FROM bulk_job")).scalar_one() == 1


def test_without_respond_async_import_stays_synchronous(deployment: Deployment) -> None:
    with httpx.Client(base_url=deployment.url, timeout=60) as client:
        answer = client.post(
            "/fhir/$import",
            content=patients("s", 3),
            headers={"content-type": "application/fhir+ndjson"},
        )
    assert answer.status_code == 200
    assert answer.json()["type"] == "batch-response"
    assert len(answer.json()["entry"]) == 3
    with deployment.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM bulk_job")).scalar_one() == 0


def test_a_status_url_unknown_to_the_server_is_404(deployment: Deployment) -> None:
    with httpx.Client(base_url=deployment.url, timeout=60) as client:
        for method in ("GET", "DELETE"):
            answer = client.request(method, "/fhir/$import-status/not-a-job")
            assert answer.status_code == 404
            assert answer.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_running_job_cancelled_stops_at_its_next_checkpoint(
    kind: str, new_database: Any, tmp_path: Path
) -> None:
    url = str(new_database(kind))
    settings = Settings(database_url=url, import_job_chunk_lines=CHUNK)
    engine = make_engine(settings)
    migrate.upgrade(engine)
    feed = tmp_path / "feed.ndjson"
    feed.write_bytes(patients("c", 50))
    jobs = BulkJobs(engine, FhirService(engine, settings))
    job_id = jobs.create([JobInput(url="feed", path=str(feed))], owner="test")
    seen: list[int] = []

    def progress(lines: int) -> None:
        seen.append(lines)
        if len(seen) == 2:  # after the second chunk: the third is never written
            jobs.cancel(job_id)

    try:
        assert jobs.run(job_id, progress) == "cancelled"
        view = jobs.view(job_id)
        assert view is not None
        assert view.status == "cancelled"
        assert view.checkpoint.lines == [2 * CHUNK]
        assert view.checkpoint.outcomes[0]["created"] == 2 * CHUNK
        assert stored(engine, "c") == (2 * CHUNK, 2 * CHUNK)
        assert jobs.run(job_id) is None  # an ended job is never run again
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_queued_job_is_cancelled_through_its_status_url(new_database: Any) -> None:
    """PostgreSQL without a worker: the job waits on the queue, and DELETE cancels it there."""
    url = str(new_database("postgres"))
    settings = Settings(database_url=url, webhook_interval_seconds=0)
    with served(settings) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        kicked = client.post("/fhir/$import", content=patients("q", 3), headers=ASYNC_NDJSON)
        status_url = kicked.headers["content-location"]
        waiting = client.get(status_url)
        assert waiting.status_code == 202
        assert waiting.headers["x-progress"] == "queued: 0 line(s) committed of 1 input(s)"
        assert client.delete(status_url).status_code == 202
        ended = client.get(status_url)
        assert ended.status_code == 200
        assert ended.json()["status"] == "cancelled"
        assert client.delete(status_url).status_code == 409  # already ended
        with worker(url):  # a worker now finds the job cancelled and writes nothing
            time.sleep(3)
        assert stored(running.engine, "q") == (0, 0)


def test_a_running_job_is_cancelled_through_its_status_url(
    new_database: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite, the in-process runner: a job held just before its second chunk (so it is surely
    running, its first chunk committed) is cancelled by DELETE on its status URL; it stops at that
    checkpoint, keeps the first chunk, and says `cancelled`."""
    settings = Settings(
        database_url=str(new_database("sqlite")),
        import_job_chunk_lines=CHUNK,
        webhook_interval_seconds=0,
    )
    at_second, go_on = threading.Event(), threading.Event()
    flush = bulk._Run._flush
    flushes: list[int] = []

    def held(run: Any, index: int, chunk: Any, last: int) -> bool:
        flushes.append(last)
        if len(flushes) == 2:
            at_second.set()
            go_on.wait(60)
        return flush(run, index, chunk, last)

    monkeypatch.setattr(bulk._Run, "_flush", held)
    with served(settings) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        kicked = client.post(
            "/fhir/$import", content=patients("r", 3 * CHUNK), headers=ASYNC_NDJSON
        )
        status_url = kicked.headers["content-location"]
        try:
            assert at_second.wait(60), "the job never reached its second chunk"
            busy = client.get(status_url)
            assert (busy.status_code, busy.headers["x-progress"].split(":")[0]) == (202, "running")
            assert client.delete(status_url).status_code == 202
        finally:
            go_on.set()
        deadline = time.monotonic() + 60
        ended = client.get(status_url)
        while ended.status_code == 202 and time.monotonic() < deadline:
            time.sleep(0.05)
            ended = client.get(status_url)
        assert (ended.status_code, ended.json()["status"]) == (200, "cancelled")
        assert stored(running.engine, "r") == (CHUNK, CHUNK)  # the first chunk, nothing after
        assert len(flushes) == 2  # the cancelled second chunk was the last one looked at


def _wait_for(engine: Engine, job_id: str, what: str, seconds: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT count(*) FROM bulk_job WHERE id = :i"), {"i": job_id}
            ).scalar_one()
        if found:
            row = job_row(engine, job_id)
            if what == "checkpoint" and row["lines"][0] > 0 and row["status"] == "running":
                return row
            if what == "end" and row["status"] in ("succeeded", "failed", "cancelled"):
                return row
        time.sleep(0.02)
    raise AssertionError(f"no {what} within {seconds} s")


@pytest.mark.slow
@pytest.mark.postgres
def test_a_killed_worker_s_job_resumes_from_its_checkpoint_exactly_once(
    new_database: Any, tmp_path: Path
) -> None:
    url = str(new_database("postgres"))
    total = 1500
    settings = Settings(database_url=url, webhook_interval_seconds=0, import_spool_dir=tmp_path)
    knobs = {"import_job_chunk_lines": "10", "job_lease_seconds": "2"}
    with served(settings) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        kicked = client.post("/fhir/$import", content=patients("k", total), headers=ASYNC_NDJSON)
        job_id = kicked.headers["content-location"].rsplit("/", 1)[1]
        with worker(url, **knobs) as first:
            at_kill = _wait_for(running.engine, job_id, "checkpoint")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        killed = job_row(running.engine, job_id)
        assert killed["status"] == "running"  # killed mid-job
        assert 0 < killed["lines"][0] < total
        assert killed["lines"][0] >= at_kill["lines"][0]
        with worker(url, **knobs):
            _wait_for(running.engine, job_id, "end")
        done = finished(client, kicked.headers["content-location"]).json()
        assert job_row(running.engine, job_id)["attempts"] == 2
        assert stored(running.engine, "k") == (total, total)  # every line written exactly once
    assert done["status"] == "succeeded"
    assert done["output"][0]["outcomes"] == {
        "created": total,
        "updated": 0,
        "unchanged": 0,
        "failed": 0,
    }


@pytest.mark.slow
def test_a_killed_server_s_job_resumes_when_it_starts_again(
    new_database: Any, tmp_path: Path
) -> None:
    """SQLite: jobs run in the server; killed, the restarted server resumes the job."""
    url = str(new_database("sqlite"))
    total = 1500
    env = _env(url, import_job_chunk_lines="10", job_lease_seconds="2")
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def serve() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [TRIALBRIDGE, "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    return process
            except httpx.TransportError:
                time.sleep(0.1)
        process.kill()
        raise AssertionError("the server did not start")

    engine = make_engine(Settings(database_url=url))
    server = serve()
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            kicked = client.post(
                "/fhir/$import", content=patients("r", total), headers=ASYNC_NDJSON
            )
        assert kicked.status_code == 202, kicked.text
        job_id = kicked.headers["content-location"].rsplit("/", 1)[1]
        _wait_for(engine, job_id, "checkpoint")
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        killed = job_row(engine, job_id)
        assert killed["status"] == "running"
        assert 0 < killed["lines"][0] < total
        server = serve()
        _wait_for(engine, job_id, "end")
        with httpx.Client(base_url=base, timeout=60) as client:
            done = finished(client, kicked.headers["content-location"]).json()
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    assert done["output"][0]["outcomes"]["created"] == total
    assert done["output"][0]["outcomes"]["failed"] == 0
    assert job_row(engine, job_id)["attempts"] == 2
    assert stored(engine, "r") == (total, total)
    engine.dispose()


@pytest.mark.postgres
def test_the_job_queue_schema_is_applied_once(new_database: Any) -> None:
    engine = make_engine(Settings(database_url=str(new_database("postgres"))))
    migrate.upgrade(engine)
    assert ensure_schema(engine) is True
    assert ensure_schema(engine) is False
    assert migrate.drift(engine) == []  # procrastinate's tables are not ours
    engine.dispose()


def test_a_job_belongs_to_its_client_and_writes_with_its_token_s_scopes(
    new_database: Any,
) -> None:
    keys = {name: ec_key(name) for name in ("feeder", "ehr", "ops")}
    scopes = {"feeder": "system/Patient.cu", "ehr": "system/*.cruds", "ops": "admin"}
    settings = Settings(
        database_url=str(new_database("sqlite")), auth_disabled=False, webhook_interval_seconds=0
    )
    with served(settings) as running:
        for name, key in keys.items():
            add_client(running.engine, name, [scopes[name]], jwks=jwks(key))
        tokens = {
            name: bearer(access_token(running.url, key, name, scopes[name]))
            for name, key in keys.items()
        }
        body = (
            patients("o", 2)
            + b'{"resourceType": "Observation", "id": "o-obs", "status": "final", '
            + b'"code": {"text": "x"}}\n'
        )
        with httpx.Client(base_url=running.url, timeout=60) as client:
            anonymous = client.post("/fhir/$import", content=body, headers=ASYNC_NDJSON)
            kicked = client.post(
                "/fhir/$import", content=body, headers={**ASYNC_NDJSON, **tokens["feeder"]}
            )
            assert kicked.status_code == 202, kicked.text
            status_url = kicked.headers["content-location"]
            done = finished_as(client, status_url, tokens["feeder"])
            others = {
                "ehr GET": client.get(status_url, headers=tokens["ehr"]).status_code,
                "ehr DELETE": client.delete(status_url, headers=tokens["ehr"]).status_code,
                "ehr errors": client.get(
                    f"{status_url}/errors/0", headers=tokens["ehr"]
                ).status_code,
                "no token": client.get(status_url).status_code,
                "ops GET": client.get(status_url, headers=tokens["ops"]).status_code,
            }
            errors = client.get(done["error"][0]["url"], headers=tokens["feeder"])
        assert stored(running.engine, "o") == (2, 2)
    assert anonymous.status_code == 401
    assert done["output"][0]["outcomes"] == {
        "created": 2,
        "updated": 0,
        "unchanged": 0,
        "failed": 1,
    }
    assert others == {
        "ehr GET": 404,
        "ehr DELETE": 404,
        "ehr errors": 404,
        "no token": 401,
        "ops GET": 200,
    }
    [outcome] = [json.loads(line) for line in errors.text.splitlines()]
    assert outcome["issue"][0]["code"] == "forbidden"
    assert outcome["issue"][0]["diagnostics"].startswith("line 3: ")


def finished_as(client: httpx.Client, status_url: str, auth: dict[str, str]) -> dict[str, Any]:
    """`finished`, with a token."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answer = client.get(status_url, headers=auth)
        if answer.status_code == 200:
            return dict(answer.json())
        assert answer.status_code == 202, answer.text
        time.sleep(0.1)
    raise AssertionError("the job did not finish")


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_stopped_with_sigterm_leaves_its_job_at_a_checkpoint_for_another(
    new_database: Any, tmp_path: Path
) -> None:
    url = str(new_database("postgres"))
    total = 1500
    settings = Settings(database_url=url, webhook_interval_seconds=0, import_spool_dir=tmp_path)
    knobs = {"import_job_chunk_lines": "10", "job_lease_seconds": "600"}  # no lease runs out
    with served(settings) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        kicked = client.post("/fhir/$import", content=patients("t", total), headers=ASYNC_NDJSON)
        job_id = kicked.headers["content-location"].rsplit("/", 1)[1]
        with worker(url, **knobs) as first:
            _wait_for(running.engine, job_id, "checkpoint")
            first.send_signal(signal.SIGTERM)
            assert first.wait(60) == 0
        left = job_row(running.engine, job_id)
        assert left["status"] == "running"
        assert 0 < left["lines"][0] < total
        with worker(url, **knobs):  # resumes at once: the lease was released, not left to expire
            _wait_for(running.engine, job_id, "end", seconds=300)
        done = finished(client, kicked.headers["content-location"]).json()
        assert job_row(running.engine, job_id)["attempts"] == 2
        assert stored(running.engine, "t") == (total, total)
    assert done["output"][0]["outcomes"]["created"] == total


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_load_refreshes_the_planners_statistics_each_time_the_store_has_doubled(
    kind: str, new_database: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From an empty store, over two jobs of 5 chunks each (`trialbridge load` runs a job per
    # file): a refresh once 3 chunks are written, then once the store has doubled since (6
    # chunks); 10 chunks stop short of the next doubling (12). PostgreSQL's planner then holds
    # statistics taken of 6 chunks' rows (without them its default estimates chose a sequential
    # scan of every event per chunk, and a 10^5 load slowed as the table grew). SQLite plans
    # with its indexes and no statistics: nothing is refreshed.
    monkeypatch.setattr(planner_statistics, "ANALYZE_EVERY", 3 * CHUNK)
    refreshed_at: list[int] = []
    real_refresh = planner_statistics.refresh

    def counting_refresh(session: Any) -> None:
        count = text("SELECT count(*) FROM fhir_resource")
        refreshed_at.append(int(session.execute(count).scalar_one()))
        real_refresh(session)

    monkeypatch.setattr(planner_statistics, "refresh", counting_refresh)
    settings = Settings(database_url=str(new_database(kind)), import_job_chunk_lines=CHUNK)
    engine = make_engine(settings)
    migrate.upgrade(engine)
    jobs = BulkJobs(engine, FhirService(engine, settings))
    try:
        for part in ("g", "h"):
            feed = tmp_path / f"{part}.ndjson"
            feed.write_bytes(patients(part, 5 * CHUNK))
            job_id = jobs.create([JobInput(url=part, path=str(feed))], owner="test")
            assert jobs.run(job_id) == "succeeded"
        assert refreshed_at == ([3 * CHUNK, 6 * CHUNK] if kind == "postgres" else [])
        if kind == "postgres":
            with engine.connect() as conn:
                estimates: dict[str, float] = dict(
                    conn.execute(
                        text(
                            "SELECT relname, reltuples FROM pg_class WHERE relname IN "
                            "('fhir_resource', 'fhir_identifier', 'trial_event') "
                            "AND relkind = 'r'"
                        )
                    ).all()
                )
            # one Patient, one identifier and one demographics event per line
            assert estimates == {
                "fhir_resource": 6 * CHUNK,
                "fhir_identifier": 6 * CHUNK,
                "trial_event": 6 * CHUNK,
            }
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_refresh_that_fails_leaves_the_load_as_it_was(
    new_database: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    # statistics are an optimisation: an ANALYZE refused (a lock timeout, a missing privilege
    # raised as an error) is logged, and the job goes on and succeeds with every line written
    monkeypatch.setattr(planner_statistics, "ANALYZE_EVERY", 2 * CHUNK)
    attempts: list[int] = []

    def refused(session: Any) -> None:
        attempts.append(1)
        raise OperationalError("ANALYZE", {}, Exception("canceling statement due to lock timeout"))

    monkeypatch.setattr(planner_statistics, "refresh", refused)
    settings = Settings(database_url=str(new_database("postgres")), import_job_chunk_lines=CHUNK)
    engine = make_engine(settings)
    migrate.upgrade(engine)
    feed = tmp_path / "feed.ndjson"
    feed.write_bytes(patients("f", 5 * CHUNK))
    jobs = BulkJobs(engine, FhirService(engine, settings))
    try:
        job_id = jobs.create([JobInput(url="feed", path=str(feed))], owner="test")
        assert jobs.run(job_id) == "succeeded"
        assert stored(engine, "f") == (5 * CHUNK, 5 * CHUNK)
        assert len(attempts) == 2  # after 2 and 4 chunks: a failure waits for as much growth
        assert caplog.text.count("planner statistics not refreshed: Exception") == 2
    finally:
        engine.dispose()


def _pieces(engine: Engine) -> list[tuple[str, int, bytes]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT spool_id, seq, data FROM import_spool ORDER BY 1, 2"))
        return [(str(r[0]), int(r[1]), bytes(r[2])) for r in rows]


def _padded(prefix: str, count: int) -> bytes:
    """`count` Patients of ~2 KB each (a long extension value) as NDJSON."""
    pad = [{"url": "urn:test:pad", "valueString": "x" * 2000}]
    return b"".join(
        json.dumps(
            {"resourceType": "Patient", "id": f"{prefix}-{n}", "extension": pad},
            separators=(",", ":"),
        ).encode()
        + b"\n"
        for n in range(1, count + 1)
    )


def _chunked(body: bytes, size: int = 65536) -> Iterator[bytes]:
    """The body in pieces, so it is sent without a Content-Length (chunked)."""
    for i in range(0, len(body), size):
        yield body[i : i + size]


@pytest.mark.slow
@pytest.mark.postgres
def test_an_async_body_waits_in_the_database_for_a_worker_that_shares_no_folder(
    new_database: Any, tmp_path: Path
) -> None:
    """Jobs on the PostgreSQL queue: the server stores an `$import` body in the database as it
    arrives (in pieces of about a megabyte, exactly the bytes sent) and writes no file; a worker
    with a spool folder of its own runs the job from those pieces; they are deleted when the job
    ends, and when a queued job is cancelled."""
    url = str(new_database("postgres"))
    settings = Settings(
        database_url=url,
        webhook_interval_seconds=0,
        import_job_chunk_lines=200,
        import_spool_dir=tmp_path / "server-spool",
    )
    body = _padded("db", 1200)  # ~2.5 MB: more than one piece
    assert len(body) > 2 * 1024 * 1024
    with served(settings) as running, httpx.Client(base_url=running.url, timeout=120) as client:
        kept = client.post("/fhir/$import", content=_chunked(body), headers=ASYNC_NDJSON)
        assert kept.status_code == 202, kept.text
        stored_pieces = _pieces(running.engine)
        assert len({spool for spool, _, _ in stored_pieces}) == 1
        assert [seq for _, seq, _ in stored_pieces] == list(range(len(stored_pieces)))
        assert len(stored_pieces) >= 2
        assert all(len(data) >= 1024 * 1024 for _, _, data in stored_pieces[:-1])
        assert b"".join(data for _, _, data in stored_pieces) == body
        assert not (tmp_path / "server-spool").exists()

        dropped = client.post("/fhir/$import", content=patients("gone", 5), headers=ASYNC_NDJSON)
        assert len(_pieces(running.engine)) == len(stored_pieces) + 1
        assert client.delete(dropped.headers["content-location"]).status_code == 202
        assert _pieces(running.engine) == stored_pieces  # the cancelled job's body is gone

        with worker(url, import_spool_dir=str(tmp_path / "worker-spool")):
            done = finished(client, kept.headers["content-location"]).json()
        assert done["status"] == "succeeded"
        assert done["output"][0]["outcomes"] == {
            "created": 1200,
            "updated": 0,
            "unchanged": 0,
            "failed": 0,
        }
        assert stored(running.engine, "db") == (1200, 1200)
        assert _pieces(running.engine) == []
        assert not (tmp_path / "worker-spool").exists()


@pytest.mark.postgres
def test_a_body_refused_while_it_arrives_leaves_nothing_spooled(new_database: Any) -> None:
    """Over the size limit part-way (no Content-Length to refuse it by): 413, and the pieces
    already stored are deleted with it; no job."""
    url = str(new_database("postgres"))
    body = _padded("big", 1000)
    settings = Settings(
        database_url=url, webhook_interval_seconds=0, max_import_bytes=len(body) * 3 // 4
    )
    assert len(body) * 3 // 4 > 1024 * 1024  # a piece was stored before the limit was reached
    with served(settings) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        refused = client.post("/fhir/$import", content=_chunked(body), headers=ASYNC_NDJSON)
        assert refused.status_code == 413
        assert refused.json()["issue"][0]["code"] == "too-long"
        assert _pieces(running.engine) == []
        with running.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM bulk_job")).scalar_one() == 0


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_the_sweep_deletes_only_bodies_no_job_names_and_a_day_old(
    kind: str, new_database: Any
) -> None:
    """A body whose server stopped while receiving it has no job: swept once a day old. A body
    a job still waits for, and one still arriving, stay."""
    settings = Settings(database_url=str(new_database(kind)))
    engine = make_engine(settings)
    migrate.upgrade(engine)
    jobs = BulkJobs(engine, FhirService(engine, settings))
    jobs.spool_piece("orphan", 0, b"a")
    jobs.spool_piece("orphan", 1, b"b")
    jobs.spool_piece("waited-for", 0, b"c")
    jobs.create(
        [JobInput(url="body", path="", spooled=True, spool_id="waited-for")], owner="tester"
    )
    jobs.spool_piece("arriving", 0, b"d")
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE import_spool SET created_at = :old WHERE spool_id <> 'arriving'"
            ).bindparams(bindparam("old", type_=UTCDateTime())),
            {"old": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)},
        )
    assert jobs.sweep_spools() == 1
    assert sorted({spool for spool, _, _ in _pieces(engine)}) == ["arriving", "waited-for"]
    assert jobs.sweep_spools() == 0
    engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_job_id_with_nul_names_no_job(kind: str, new_database: Any) -> None:
    """U+0000 in an `$import` job id: 404 not-found on both databases (PostgreSQL cannot even
    compare it; this was a 500 there, found by fuzzing), for the status, its cancel and errors."""
    settings = Settings(database_url=str(new_database(kind)), webhook_interval_seconds=0)
    with served(settings) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        answers = [
            client.get("/fhir/$import-status/%00"),
            client.delete("/fhir/$import-status/a%00b"),
            client.get("/fhir/$import-status/%00/errors/0"),
        ]
    assert [a.status_code for a in answers] == [404, 404, 404]
    assert [a.json()["issue"][0]["code"] for a in answers] == ["not-found"] * 3
