"""Pulling from a hospital FHIR server: respx plays the hospital (SMART Backend Services token
endpoint, Bulk Data `$export`, NDJSON files); what the pull ingests is read back through /fhir."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy import Engine, select

from api import cli
from service.errors import ApiError
from service.fhir.interactions import FhirService
from service.fhir.pull.client import (
    HospitalClient,
    PullError,
    RefusedUrlError,
    RetryPolicy,
)
from service.fhir.pull.jobs import SourcePulls
from service.fhir.pull.schedule import PullScheduler
from service.fhir.pull.sources import SourceConfigError, load_sources
from service.infra.clock import utcnow
from service.infra.db import reading, writing
from service.infra.settings import Settings
from service.infra.tables import PullJob
from service.repositories import source_pulls
from tests.conftest import LiveServer, clear_store
from tests.kit.hospital import (
    BASE,
    CLIENT,
    CONDITIONS,
    EVIL,
    FILES,
    OBSERVATIONS,
    PATIENTS,
    T1,
    T2,
    TOKEN_URL,
    Hospital,
    hospital_for_everyone,
    manifest,
)
from tests.kit.live import served
from tests.test_import_jobs import _env

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def rsa() -> RSAKey:
    return RSAKey.import_key({**RSAKey.generate_key(2048).as_dict(private=True)})


@pytest.fixture
def sources_file(tmp_path: Path, rsa: RSAKey) -> Path:
    (tmp_path / "hospital.pem").write_bytes(rsa.as_pem(private=True))
    path = tmp_path / "sources.toml"
    path.write_text(
        f"""
[[source]]
id = "general"
base_url = "{BASE}/"
client_id = "{CLIENT}"
private_key_file = "hospital.pem"
key_id = "hospital-key-1"
group_id = "trial-g1"
types = ["Patient", "Condition", "Observation"]
file_host = "{FILES}"
"""
    )
    return path


@pytest.fixture
def pulls(engine: Engine, database_url: str, sources_file: Path) -> SourcePulls:
    clear_store(engine)
    settings = Settings(database_url=database_url, sources_file=sources_file, pull_max_retries=3)
    store = FhirService(engine, settings)
    return SourcePulls(engine, store, settings, sleep=lambda s: None)


def _totals(fhir: httpx.Client) -> dict[str, int]:
    return {t: fhir.get(f"/{t}").json()["total"] for t in ("Patient", "Condition", "Observation")}


def test_pull_exports_polls_downloads_and_pulls_since_last_time(
    fhir: httpx.Client, server: LiveServer, pulls: SourcePulls, rsa: RSAKey
) -> None:
    hospital = Hospital(RSAKey.import_key(rsa.as_dict(private=False)))
    hospital.manifest = manifest(
        T1,
        [
            ("Patient", f"{FILES}/out/Patient.ndjson"),
            ("Condition", f"{BASE}/files/Condition.ndjson"),
            ("Observation", f"{EVIL}/steal/Observation.ndjson"),
            ("Observation", f"{FILES}/out/Observation.ndjson"),
        ],
    )
    waits: list[float] = []
    pulls.transport = httpx.MockTransport(hospital.router.handler)
    pulls.sleep = waits.append
    said: list[str] = []

    report = pulls.pull("general", say=lambda message, _report: said.append(message))

    assert _totals(fhir) == {"Patient": 2, "Condition": 2, "Observation": 2}
    assert report.by_type == Counter({"Patient": 2, "Condition": 2, "Observation": 2})
    assert report.changes == Counter({"created": 6})
    assert [(e.file, e.line, e.status) for e in report.line_errors] == [
        ("file 2 (Condition) Condition.ndjson", 2, 400)
    ]
    assert report.refused == [
        "file 3 (Observation): refused, https://evil.example is outside the source"
    ]
    assert (report.files_total, report.files_done) == (4, 4)
    assert report.transaction_time == T1
    assert report.since is None
    # two polls waited as Retry-After asked (2 s, 1 s), the 429 on the Condition file 1 s
    assert waits == [2.0, 1.0, 1.0]
    # the token expired at the hospital: the Observation file's 401 cost one new token
    assert hospital.issued == ["tok-1", "tok-2"]
    assert (hospital.condition_attempts, hospital.observation_attempts) == (2, 2)
    assert hospital.evil.call_count == 0
    hosts = {call.request.url.host for call in hospital.router.calls}
    assert hosts == {"fhir.hospital.test", "files.hospital.test"}
    assert hospital.kickoffs == [{"_type": ["Patient,Condition,Observation"]}]
    assert said[-1] == (
        "done: 6 created, 1 refused file(s), 1 rejected; next pull asks _since=" + T1
    )

    # the second pull asks only what changed since the first manifest's transactionTime
    hospital.manifest = manifest(T2, [("Patient", f"{FILES}/out/Patient.ndjson")])
    waits.clear()
    second = pulls.pull("general")
    assert hospital.kickoffs[1] == {"_type": ["Patient,Condition,Observation"], "_since": [T1]}
    assert (second.since, second.transaction_time) == (T1, T2)
    assert second.changes == Counter({"unchanged": 2})
    assert _totals(fhir) == {"Patient": 2, "Condition": 2, "Observation": 2}
    third_since = pulls.pull("general").since
    assert third_since == T2
    assert {call.request.url.host for call in hospital.router.calls} == {
        "fhir.hospital.test",
        "files.hospital.test",
    }


def _stored_since(engine: Engine) -> str | None:
    with reading(engine) as session:
        return source_pulls.transaction_time(session, "general")


def test_a_token_is_renewed_shortly_before_it_expires(sources_file: Path, rsa: RSAKey) -> None:
    hospital = Hospital(RSAKey.import_key(rsa.as_dict(private=False)))
    source = load_sources(sources_file)["general"]
    now = [time.time()]
    hospital.clock = lambda: now[0]  # one clock for both sides
    client = HospitalClient(
        source,
        RetryPolicy(sleep=lambda s: None),
        transport=httpx.MockTransport(hospital.router.handler),
        clock=lambda: now[0],
    )
    assert client.token() == "tok-1"
    now[0] += 269  # 31 s left of 300: still good
    assert client.token() == "tok-1"
    now[0] += 1  # 30 s left: renewed before anything is refused
    assert client.token() == "tok-2"
    assert len(hospital.jtis) == 2


def test_gives_up_after_the_configured_retries_and_keeps_the_last_transaction_time(
    engine: Engine, pulls: SourcePulls, rsa: RSAKey
) -> None:
    hospital = Hospital(RSAKey.import_key(rsa.as_dict(private=False)))
    busy = hospital.router.get(f"{BASE}/$export-status/job").respond(
        503, headers={"Retry-After": "7"}
    )
    waits: list[float] = []
    pulls.transport = httpx.MockTransport(hospital.router.handler)
    pulls.sleep = waits.append
    with pytest.raises(PullError) as refused:
        pulls.pull("general")
    assert str(refused.value) == (
        "gave up on the $export status after 4 attempt(s): last answer HTTP 503"
    )
    assert busy.call_count == 4
    assert waits == [7.0, 7.0, 7.0]
    assert _stored_since(engine) is None


def test_a_status_url_on_another_host_is_refused_and_never_requested(
    pulls: SourcePulls, rsa: RSAKey
) -> None:
    hospital = Hospital(RSAKey.import_key(rsa.as_dict(private=False)))
    hospital.router.get(f"{BASE}/Group/trial-g1/$export").respond(
        202, headers={"Content-Location": f"{EVIL}/status"}
    )
    pulls.transport = httpx.MockTransport(hospital.router.handler)
    with pytest.raises(RefusedUrlError) as refused:
        pulls.pull("general")
    assert str(refused.value) == (
        "refused the $export status URL at https://evil.example: outside the source's base URL "
        "and declared file host"
    )
    assert hospital.evil.call_count == 0


def test_without_export_it_searches_each_type_following_next_links_of_the_source_only(
    fhir: httpx.Client, engine: Engine, pulls: SourcePulls, rsa: RSAKey
) -> None:
    hospital = Hospital(RSAKey.import_key(rsa.as_dict(private=False)))
    r = hospital.router
    r.get(f"{BASE}/Group/trial-g1/$export").respond(404)
    r.get(f"{BASE}/Group/trial-g1").respond(
        200,
        json={
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [
                {"entity": {"reference": "Patient/hp1"}},
                {"entity": {"reference": "Patient/hp2"}},
            ],
        },
    )

    def bundle(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
        links = [{"relation": "next", "url": next_url}] if next_url else []
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": links,
            "entry": [{"resource": x, "search": {"mode": "match"}} for x in resources],
        }

    seen: list[tuple[str, str]] = []

    def search(request: httpx.Request) -> httpx.Response:
        assert hospital.valid(request)
        path, query = request.url.path, request.url.query.decode()
        seen.append((path.removeprefix("/r4/"), query))
        if path.endswith("/Patient"):
            return httpx.Response(200, json=bundle(PATIENTS))
        if path.endswith("/Condition") and "hp1" in query:
            return httpx.Response(200, json=bundle(CONDITIONS[:1], f"{BASE}/Condition?page=2"))
        if path.endswith("/Condition") and "page=2" in query:
            return httpx.Response(200, json=bundle(CONDITIONS[1:], f"{EVIL}/Condition?page=3"))
        if path.endswith("/Observation") and "hp2" in query:
            return httpx.Response(200, json=bundle(OBSERVATIONS))
        return httpx.Response(200, json=bundle([]))

    for rtype in ("Patient", "Condition", "Observation"):
        r.get(f"{BASE}/{rtype}").mock(side_effect=search)
    pulls.transport = httpx.MockTransport(r.handler)

    report = pulls.pull("general")

    assert report.mode == "search"
    assert _totals(fhir) == {"Patient": 2, "Condition": 2, "Observation": 2}
    assert report.refused == ["Condition search: refused a next link to https://evil.example"]
    assert hospital.evil.call_count == 0
    assert seen == [
        ("Patient", "_id=hp1%2Chp2"),
        ("Condition", "patient=Patient%2Fhp1"),
        ("Condition", "page=2"),
        ("Condition", "patient=Patient%2Fhp2"),
        ("Observation", "patient=Patient%2Fhp1"),
        ("Observation", "patient=Patient%2Fhp2"),
    ]
    since = _stored_since(engine)
    assert since == report.transaction_time
    seen.clear()
    pulls.pull("general")
    assert seen[0] == ("Patient", f"_id=hp1%2Chp2&_lastUpdated=ge{since}".replace(":", "%3A"))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("source = 3", "expected a list `source` of sources"),
        (
            "[[source]]\nid = 'a b'",
            "source[0].id: Value error, id must be 1-64 of A-Z a-z 0-9 . _ -",
        ),
        (
            f"[[source]]\nid = 'a'\nbase_url = '{BASE}'\nclient_id = 'c'\n"
            "private_key_jwk = {kty = 'oct', k = 'AAAA'}\ngroup_id = 'g'",
            "source[0]: Value error, the private key is neither an RSA nor a P-384 EC key (PEM or JWK)",
        ),
        (
            "[[source]]\nid = 'a'\nbase_url = 'ftp://x'\nclient_id = 'c'\ngroup_id = 'g'",
            "source[0].base_url: Value error, base_url must be an absolute http(s) URL",
        ),
    ],
)
def test_a_wrong_sources_file_is_refused_naming_the_source_and_key(
    tmp_path: Path, body: str, message: str
) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(body)
    with pytest.raises(SourceConfigError) as refused:
        load_sources(path)
    assert str(refused.value) == f"{path}: {message}"


def _assert_everyone_pulled(done: dict[str, Any]) -> None:
    """A sync job's answer after `hospital_for_everyone`'s export: two Patients, two Conditions
    and the malformed Condition line rejected."""
    assert done["status"] == "succeeded"
    assert done["error"] is None
    assert done["progress"]["by_type"] == {"Patient": 2, "Condition": 2}
    assert done["progress"]["line_errors"] == [
        {
            "file": "file 2 (Condition) Condition.ndjson",
            "line": 2,
            "status": 400,
            "code": "structure",
        }
    ]


def test_sync_endpoint_runs_the_pull_as_a_job_with_progress(
    database_url: str, engine: Engine, sources_file: Path, rsa: RSAKey
) -> None:
    clear_store(engine)
    hospital = hospital_for_everyone(rsa)
    settings = Settings(
        database_url=database_url,
        sources_file=sources_file,
        pull_max_wait_seconds=0,
        webhook_interval_seconds=0,
        job_backend="in-process",  # the pull runs on this process's job queue, under respx
    )
    with (
        served(settings) as app,
        respx.mock(assert_all_called=False) as mock,
        httpx.Client(base_url=f"{app.url}/api/v1", timeout=60) as api,
    ):
        mock.route(host="127.0.0.1").pass_through()
        mock.route().mock(side_effect=hospital.router.handler)
        assert api.post("/sources/nowhere/sync").json()["error"]["code"] == "source_not_found"
        started = api.post("/sources/general/sync")
        assert started.status_code == 202
        job = started.json()
        assert started.headers["location"] == f"/api/v1/sources/general/sync/{job['job_id']}"
        assert job["status"] == "running"
        app.app.state.pulls.wait("general", timeout=60)
        done = api.get(f"/sources/general/sync/{job['job_id']}").json()
        assert (
            api.get("/sources/general/sync/no-such-job").json()["error"]["code"] == "job_not_found"
        )
    _assert_everyone_pulled(done)
    assert done["progress"]["transaction_time"] == T1
    assert done["message"] == "done: 4 created, 1 rejected; next pull asks _since=" + T1
    assert _stored_since(engine) == T1


def test_pull_command_prints_progress_and_rejected_lines(
    database_url: str,
    engine: Engine,
    sources_file: Path,
    rsa: RSAKey,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clear_store(engine)
    hospital = hospital_for_everyone(rsa)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("TRIALBRIDGE_SOURCES_FILE", str(sources_file))
    monkeypatch.setenv("TRIALBRIDGE_PULL_MAX_WAIT_SECONDS", "0")
    with respx.mock(assert_all_called=False) as mock:
        mock.route().mock(side_effect=hospital.router.handler)
        code = cli.main(["pull", "general"])
        assert cli.main(["pull", "elsewhere"]) == 2
    out, err = capsys.readouterr()
    assert code == 1
    assert out.splitlines() == [
        "general: export accepted; waiting for the source to prepare the files",
        "general: source busy: 10%",
        f"general: export ready: 2 file(s) as of {T1}",
        "general: file 1 (Patient) Patient.ndjson: ingested (2 created)",
        "general: file 2 (Condition) Condition.ndjson: ingested (4 created, 1 rejected)",
        f"general: done: 4 created, 1 rejected; next pull asks _since={T1}",
    ]
    assert err.splitlines()[0].startswith(
        "file 2 (Condition) Condition.ndjson:2: 400 line 2: malformed JSON"
    )
    assert err.splitlines()[1] == "trialbridge pull: no source 'elsewhere' (known: general)"


def test_a_p384_key_signs_es384_assertions(tmp_path: Path) -> None:
    key = ECKey.generate_key("P-384")
    path = tmp_path / "sources.json"
    path.write_text(
        json.dumps(
            {
                "source": [
                    {
                        "id": "ec",
                        "base_url": BASE,
                        "client_id": CLIENT,
                        "private_key_jwk": {**key.as_dict(private=True), "kid": "ec-1"},
                        "token_url": TOKEN_URL,
                        "patients": ["hp1"],
                    }
                ]
            }
        )
    )
    source = load_sources(path)["ec"]
    assert source.algorithm == "ES384"
    client = HospitalClient(source, RetryPolicy())
    token = jwt.decode(client.assertion(TOKEN_URL), key, algorithms=["ES384"])
    assert (token.header["alg"], token.header["kid"]) == ("ES384", "ec-1")
    assert (token.claims["iss"], token.claims["sub"], token.claims["aud"]) == (
        CLIENT,
        CLIENT,
        TOKEN_URL,
    )


# -- the schedule and the lease --------------------------------------------------------------------


def _jobs(engine: Engine) -> list[source_pulls.JobRow]:
    with reading(engine) as session:
        rows = session.execute(
            select(PullJob.__table__).order_by(PullJob.__table__.c.started_at)  # type: ignore[attr-defined]
        ).all()
    return [source_pulls.JobRow(**row._mapping) for row in rows]


def test_the_schedule_pulls_when_due_and_the_second_pull_asks_since(
    engine: Engine, database_url: str, sources_file: Path, rsa: RSAKey
) -> None:
    clear_store(engine)
    hospital = hospital_for_everyone(rsa)
    settings = Settings(
        database_url=database_url, sources_file=sources_file, pull_interval_seconds=1
    )
    pulls = SourcePulls(
        engine,
        FhirService(engine, settings),
        settings,
        transport=httpx.MockTransport(hospital.router.handler),
        sleep=lambda s: None,
    )
    scheduler = PullScheduler(pulls)
    assert scheduler.intervals == {"general": 1.0}
    scheduler.start()
    try:
        deadline = time.monotonic() + 30
        while len(hospital.kickoffs) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        scheduler.stop()
    pulls.wait("general", timeout=30)
    assert hospital.kickoffs == [
        {"_type": ["Patient,Condition,Observation"]},
        {"_type": ["Patient,Condition,Observation"], "_since": [T1]},
    ]
    jobs = _jobs(engine)
    assert [(j.status, j.error) for j in jobs] == [("succeeded", None), ("succeeded", None)]
    gap = (jobs[1].started_at - jobs[0].started_at).total_seconds()
    assert 1.0 <= gap < 10.0
    assert _stored_since(engine) == T1


def test_a_source_schedule_is_its_own_setting_or_the_global_one(
    tmp_path: Path, sources_file: Path, engine: Engine, database_url: str
) -> None:
    text = sources_file.read_text()
    entries = {
        "six-hourly": 'schedule = "PT6H"',
        "daily-and-a-half": 'schedule = "P1DT12H"',
        "every-90": "every_seconds = 90",
        "never": "every_seconds = 0",
        "default": "",
    }
    body = "".join(
        text.replace('id = "general"', f'id = "{name}"\n{line}') for name, line in entries.items()
    )
    path = tmp_path / "scheduled.toml"
    path.write_text(body)
    settings = Settings(database_url=database_url, sources_file=path, pull_interval_seconds=600)
    scheduler = PullScheduler(SourcePulls(engine, FhirService(engine, settings), settings))
    assert scheduler.intervals == {
        "daily-and-a-half": 129600.0,
        "default": 600.0,
        "every-90": 90.0,
        "six-hourly": 21600.0,
    }
    off = Settings(database_url=database_url, sources_file=sources_file)
    assert PullScheduler(SourcePulls(engine, FhirService(engine, off), off)).intervals == {}
    for line, message in [
        (
            'schedule = "PT"',
            "source[0].schedule: Value error, schedule must be an ISO 8601 duration",
        ),
        (
            'schedule = "6h"',
            "source[0].schedule: Value error, schedule must be an ISO 8601 duration",
        ),
        ('schedule = "PT0S"', "source[0].schedule: Value error, schedule must be between 1 second"),
        (
            'schedule = "PT1H"\nevery_seconds = 60',
            "source[0]: Value error, give at most one of every_seconds and schedule",
        ),
    ]:
        wrong = tmp_path / "wrong.toml"
        wrong.write_text(text.replace('id = "general"', f'id = "general"\n{line}'))
        with pytest.raises(SourceConfigError) as refused:
            load_sources(wrong)
        assert str(refused.value).startswith(f"{wrong}: {message}")


def test_one_pull_per_source_across_processes_api_and_command(
    engine: Engine,
    database_url: str,
    sources_file: Path,
    rsa: RSAKey,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clear_store(engine)
    hospital = hospital_for_everyone(rsa)
    gate = threading.Event()

    def held(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/$export"):
            assert gate.wait(60)
        return hospital.router.handler(request)

    settings = Settings(database_url=database_url, sources_file=sources_file)

    def process() -> SourcePulls:  # what each server process holds
        return SourcePulls(
            engine,
            FhirService(engine, settings),
            settings,
            transport=httpx.MockTransport(held),
            sleep=lambda s: None,
            lease_seconds=0.3,
        )

    first, second = process(), process()
    barrier = threading.Barrier(2)
    outcomes: dict[int, object] = {}

    def race(i: int, pulls: SourcePulls) -> None:
        barrier.wait()
        try:
            outcomes[i] = pulls.start("general").status
        except ApiError as exc:
            outcomes[i] = (exc.status, exc.code)

    racers = [threading.Thread(target=race, args=(i, p)) for i, p in enumerate((first, second))]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(30)
    assert sorted(map(str, outcomes.values())) == ["(409, 'sync_running')", "running"]
    winner = first if outcomes[0] == "running" else second
    # the holder renews its 0.3 s lease: well past it, the source is still held
    time.sleep(0.8)
    with pytest.raises(ApiError) as busy:
        process().start("general")
    assert (busy.value.status, busy.value.code) == (409, "sync_running")
    served_settings = Settings(
        database_url=database_url, sources_file=sources_file, webhook_interval_seconds=0
    )
    with (
        served(served_settings) as app,
        httpx.Client(base_url=f"{app.url}/api/v1", timeout=60) as api,
    ):
        answer = api.post("/sources/general/sync")
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "sync_running"
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("TRIALBRIDGE_SOURCES_FILE", str(sources_file))
    assert cli.main(["pull", "general"]) == 3
    assert capsys.readouterr().err == (
        "trialbridge pull general: another pull of this source is running (the server's "
        "schedule, an API sync or another command); try again later\n"
    )
    gate.set()
    winner.wait("general", timeout=60)
    assert [(j.status, j.error) for j in _jobs(engine)] == [("succeeded", None)]
    assert len(hospital.kickoffs) == 1


def test_the_expired_lease_of_a_dead_pull_is_taken_over(
    engine: Engine, pulls: SourcePulls, rsa: RSAKey
) -> None:
    hospital = hospital_for_everyone(rsa)
    pulls.transport = httpx.MockTransport(hospital.router.handler)
    now = utcnow()
    with writing(engine) as session:  # a process that died mid-pull, its lease out since 1 s
        source_pulls.add_job(
            session,
            "dead",
            "general",
            now - dt.timedelta(minutes=5),
            "{}",
            now - dt.timedelta(seconds=1),
        )
    report = pulls.pull("general")
    assert report.transaction_time == T1
    jobs = _jobs(engine)
    assert [(j.id == "dead", j.status, j.error) for j in jobs] == [
        (True, "failed", "abandoned: its process stopped renewing the lease; taken over"),
        (False, "succeeded", None),
    ]
    assert jobs[0].finished_at is not None
    assert jobs[0].finished_at >= now
    assert jobs[1].lease_until is None
    # a live lease is not taken over
    with writing(engine) as session:
        source_pulls.add_job(
            session, "alive", "general", utcnow(), "{}", utcnow() + dt.timedelta(seconds=60)
        )
    with pytest.raises(ApiError) as busy:
        pulls.pull("general")
    assert (busy.value.status, busy.value.code) == (409, "sync_running")
    assert len(hospital.kickoffs) == 1


def test_a_server_with_a_pull_interval_pulls_by_itself(
    database_url: str, engine: Engine, sources_file: Path, rsa: RSAKey
) -> None:
    clear_store(engine)
    hospital = hospital_for_everyone(rsa)
    settings = Settings(
        database_url=database_url,
        sources_file=sources_file,
        pull_max_wait_seconds=0,
        pull_interval_seconds=3600,
        webhook_interval_seconds=0,
        job_backend="in-process",  # the scheduled pull runs on this process's job queue
    )
    # the hospital answers before the server starts: its scheduler pulls at once
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        mock.route().mock(side_effect=hospital.router.handler)
        with served(settings) as app:
            deadline = time.monotonic() + 30
            while not hospital.kickoffs and time.monotonic() < deadline:
                time.sleep(0.02)
            app.app.state.pulls.wait("general", timeout=60)
    assert hospital.kickoffs == [{"_type": ["Patient,Condition,Observation"]}]
    assert [(j.status, j.error) for j in _jobs(engine)] == [("succeeded", None)]
    assert _stored_since(engine) == T1


@pytest.mark.slow
@pytest.mark.postgres
def test_on_postgresql_a_sync_is_pulled_by_a_trialbridge_worker_process(
    new_database: Any, tmp_path: Path, sources_file: Path, rsa: RSAKey
) -> None:
    """On PostgreSQL the server only puts a sync on the procrastinate queue; a separate
    `trialbridge worker` process (the hospital mocked with respx inside it, tests/kit/
    hospital_worker.py) pulls it, with the same outcome as the in-process job above."""
    url = str(new_database("postgres"))
    settings = Settings(
        database_url=url,
        sources_file=sources_file,
        pull_max_wait_seconds=0,
        webhook_interval_seconds=0,
    )
    assert not settings.jobs_in_process()
    key_file, record_file = tmp_path / "hospital-key.json", tmp_path / "hospital-saw.json"
    key_file.write_text(json.dumps(rsa.as_dict(private=False)))
    env = _env(url, sources_file=str(sources_file), pull_max_wait_seconds="0")
    with (
        served(settings) as app,
        httpx.Client(base_url=f"{app.url}/api/v1", timeout=60) as api,
    ):
        started = api.post("/sources/general/sync")
        assert started.status_code == 202
        job_id = started.json()["job_id"]
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.kit.hospital_worker", str(key_file), str(record_file)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 120
            while (done := api.get(f"/sources/general/sync/{job_id}").json())["status"] == (
                "running"
            ):
                assert worker.poll() is None, "the worker stopped"
                assert time.monotonic() < deadline, "the pull did not finish"
                time.sleep(0.2)
            fhir_totals = {
                t: httpx.get(f"{app.url}/fhir/{t}").json()["total"]
                for t in ("Patient", "Condition", "Observation")
            }
        finally:
            worker.send_signal(signal.SIGTERM)
            _, errors = worker.communicate(timeout=60)
        assert worker.returncode == 0, errors.decode()[-2000:]
        since = _stored_since(app.engine)
    _assert_everyone_pulled(done)
    assert done["message"] == "done: 4 created, 1 rejected; next pull asks _since=" + T1
    assert fhir_totals == {"Patient": 2, "Condition": 2, "Observation": 0}
    assert since == T1
    saw = json.loads(record_file.read_text())  # the requests came from the worker's process
    assert saw["kickoffs"] == [{"_type": ["Patient,Condition,Observation"]}]
    assert saw["issued"] == ["tok-1"]  # one token: it expires only once the last file is out
    assert saw["hosts"] == ["fhir.hospital.test", "files.hospital.test"]
