"""`GET /metrics`: scraped over HTTP and read with prometheus-client's own parser.

The session's server runs in this process, so every counter here is read as a difference between
two scrapes around the requests a test sends: other tests of the worker may have counted before.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import respx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from service.infra.clock import utcnow
from service.infra.settings import Settings
from service.notifications.webhooks import DeliveryPolicy, deliver_due
from service.repositories import webhook_outbox
from service.repositories.unit_of_work import unit_of_work
from tests.conftest import LiveServer, free_port
from tests.kit import fhir as kit
from tests.kit.live import served

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
READ_ROUTE = "/fhir/{resource_type}/{resource_id}"
RECEIVER = "https://93.184.216.34/hooks"  # a public address literal: no DNS


def scrape(base: str, **headers: str) -> Samples:
    """Every sample of one scrape, keyed by name and sorted labels."""
    answer = httpx.get(f"{base}/metrics", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a labelled series not yet created."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much a counter grew between two scrapes."""
    return value(after, name, **labels) - value(before, name, **labels)


def test_written_and_refused_resources_are_counted_by_type(
    server: LiveServer, fhir: httpx.Client
) -> None:
    before = scrape(server.url)
    for n in range(3):
        assert fhir.post("/Patient", json=kit.patient(mrn=f"M-{n}")).status_code == 201
    created = fhir.post("/Observation", json={"resourceType": "Observation"})
    assert created.status_code == 400  # status and code are required
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
                "resource": kit.patient(mrn="T-1"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {"resourceType": "Patient", "id": "p-put", "gender": "female"},
                "request": {"method": "PUT", "url": "Patient/p-put"},
            },
        ],
    }
    assert fhir.post("", json=transaction).status_code == 200
    update = {"resourceType": "Patient", "id": "p-put", "gender": "male"}
    assert fhir.put("/Patient/p-put", json=update).status_code == 200
    assert fhir.delete("/Patient/p-put").status_code in (200, 204)
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": {"resourceType": "Condition", "subject": {"reference": "Patient/x"}},
                "request": {"method": "PUT", "url": "Condition/c-1"},
            },
            {
                "resource": {"resourceType": "Encounter", "id": "e-1"},  # status, class missing
                "request": {"method": "PUT", "url": "Encounter/e-1"},
            },
        ],
    }
    answered = fhir.post("", json=batch)
    assert [e["response"]["status"][:3] for e in answered.json()["entry"]] == ["400", "400"]
    after = scrape(server.url)

    written = "trialbridge_fhir_resources_written_total"
    assert grew(before, after, written, resource_type="Patient", change="created") == 5
    assert grew(before, after, written, resource_type="Patient", change="updated") == 1
    assert grew(before, after, written, resource_type="Patient", change="deleted") == 1
    refused = "trialbridge_fhir_resources_refused_total"
    assert grew(before, after, refused, resource_type="Observation") == 1
    assert grew(before, after, refused, resource_type="Condition") == 1
    assert grew(before, after, refused, resource_type="Encounter") == 1
    assert grew(before, after, written, resource_type="Observation", change="created") == 0


def test_requests_are_counted_by_route_template_and_carry_no_ids(
    server: LiveServer, fhir: httpx.Client
) -> None:
    created = fhir.post("/Patient", json=kit.patient(mrn="MRN-SECRET-77"))
    patient_id = created.json()["id"]
    before = scrape(server.url)
    for _ in range(4):
        assert fhir.get(f"/Patient/{patient_id}").status_code == 200
    assert fhir.get("/Patient/nobody-here").status_code == 404
    assert fhir.get("/Patient", params={"identifier": "MRN-SECRET-77"}).status_code == 200
    after_text = httpx.get(f"{server.url}/metrics", timeout=30).text
    after = scrape(server.url)

    requests = "trialbridge_http_requests_total"
    assert grew(before, after, requests, method="GET", route=READ_ROUTE, status="200") == 4
    assert grew(before, after, requests, method="GET", route=READ_ROUTE, status="404") == 1
    durations = "trialbridge_http_request_duration_seconds_count"
    assert grew(before, after, durations, method="GET", route=READ_ROUTE) == 5
    search = "/fhir/{resource_type}"
    assert grew(before, after, requests, method="GET", route=search, status="200") == 1
    for secret in (patient_id, "MRN-SECRET-77", "nobody-here"):
        assert secret not in after_text


def test_methods_outside_http_are_one_series(server: LiveServer) -> None:
    before = scrape(server.url)
    for verb in ("PROPFIND", "TRACE"):
        httpx.request(verb, f"{server.url}/fhir/Patient", timeout=30)
    after = scrape(server.url)
    name = "trialbridge_http_requests_total"
    assert (
        grew(before, after, name, method="other", route="/fhir/{resource_type}", status="405") == 2
    )
    assert not any(dict(labels).get("method") in ("PROPFIND", "TRACE") for _, labels in after)


def _queue(engine: Engine, count: int, created_at: dt.datetime) -> None:
    """`count` notifications to one receiver, queued at `created_at`."""
    with unit_of_work(engine) as uow:
        webhook_outbox.create_subscription(
            uow.session,
            {
                "id": "SUB-metrics",
                "url": RECEIVER,
                "events": '["deviation.opened"]',
                "secret": "s" * 32,
                "created_at": created_at,
            },
        )
        for n in range(count):
            webhook_outbox.enqueue(
                uow.session, "deviation.opened", f"DEV-{n}", {"n": n}, created_at
            )


def test_outbox_backlog_and_delivery_outcomes(
    server: LiveServer, fhir: httpx.Client, engine: Engine
) -> None:
    queued_at = utcnow() - dt.timedelta(hours=2)
    _queue(engine, 3, queued_at)
    waiting = scrape(server.url)
    assert value(waiting, "trialbridge_webhook_outbox_pending") == 3
    age = value(waiting, "trialbridge_webhook_outbox_oldest_age_seconds")
    assert 7200 <= age < 7200 + 300  # two hours, plus however long the test has taken so far
    assert value(waiting, "trialbridge_database_up") == 1

    answers = iter([httpx.Response(s) for s in (200, 500, 500, 503, 503)])
    policy = DeliveryPolicy(max_attempts=2)
    with respx.mock(assert_all_called=True) as receiver:
        receiver.post(RECEIVER).mock(side_effect=lambda _: next(answers))
        deliver_due(engine, policy)  # 200, then 500 twice (retry later)…
        with unit_of_work(engine) as uow:  # …and the retries are due now: 503, their last
            for row in webhook_outbox.outbox_state(uow.session):
                if row.delivered_at is None:
                    webhook_outbox.lease(uow.session, row.pk, utcnow() - dt.timedelta(seconds=1))
        deliver_due(engine, policy)
    after = scrape(server.url)
    deliveries = "trialbridge_webhook_deliveries_total"
    assert grew(waiting, after, deliveries, outcome="delivered") == 1
    assert grew(waiting, after, deliveries, outcome="retry") == 2
    assert grew(waiting, after, deliveries, outcome="failed") == 2
    assert value(after, "trialbridge_webhook_outbox_pending") == 0
    assert value(after, "trialbridge_webhook_outbox_failed") == 2


def test_model_check_state_matches_readiness(server: LiveServer) -> None:
    samples = scrape(server.url)
    states = {
        dict(labels)["state"]: v
        for (name, labels), v in samples.items()
        if name == "trialbridge_model_check_workers_state"
    }
    assert sorted(states) == ["failed", "idle", "off", "ready", "starting"]
    assert list(states.values()).count(1.0) == 1
    ready = httpx.get(f"{server.url}/readyz", timeout=30).json()
    assert states[ready["model_checks"]] == 1.0


def test_pool_gauges_follow_the_connections(database_url: str) -> None:
    # no cohort refresher polling in the background: only the scrape uses the pool
    settings = Settings(database_url=database_url, cohort_refresh_interval_seconds=0)
    with served(settings) as live:
        samples = scrape(live.url)
    in_use = value(samples, "trialbridge_db_pool_connections_in_use")
    opened = value(samples, "trialbridge_db_pool_connections_open")
    # the scrape's own outbox query had returned its connection before the values were read
    assert in_use == 0
    assert opened >= 1  # how many stay pooled depends on what ran before in this process
    assert opened <= Settings().db_pool_size * 2  # pool plus its overflow, per engine


def test_a_metrics_token_is_required_when_set(database_url: str) -> None:
    token = "m" * 24
    settings = Settings(database_url=database_url, metrics_token=token)
    with served(settings) as live:
        refused = httpx.get(f"{live.url}/metrics", timeout=30)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert refused.json()["error"]["code"] == "invalid_token"
        wrong = httpx.get(f"{live.url}/metrics", headers={"authorization": "Bearer x"}, timeout=30)
        assert wrong.status_code == 401
        samples = scrape(live.url, authorization=f"Bearer {token}")
        assert value(samples, "trialbridge_database_up") == 1


def test_a_scrape_during_a_database_outage_says_so(tmp_path: Path) -> None:
    database = tmp_path / "gone.db"
    settings = Settings(database_url=f"sqlite:///{database}")
    with served(settings) as live:
        live.engine.dispose()
        database.unlink()
        database.mkdir()  # no file can be opened there any more
        live.app.state.engine.dispose()
        samples = scrape(live.url)
        assert value(samples, "trialbridge_database_up") == 0
        assert ("trialbridge_webhook_outbox_pending", ()) not in samples


@pytest.fixture
def two_workers(database_url: str, tmp_path: Path) -> Iterator[str]:
    """`trialbridge serve --workers 2`: one port, two processes answering it."""
    port = free_port()
    env = {
        **os.environ,
        "TRIALBRIDGE_DATABASE_URL": database_url,
        "TRIALBRIDGE_AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
        "TRIALBRIDGE_AUTH_DISABLED": "true",
        "TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS": "0",
        "TRIALBRIDGE_MODEL_CHECK_PROCESSES": "0",
        "TRIALBRIDGE_METRICS_DIR": str(tmp_path / "metrics"),
    }
    command = [str(Path(sys.executable).parent / "trialbridge"), "serve", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # two workers start on a shared, busy machine
        while True:
            assert process.poll() is None, f"serve exited with {process.returncode}"
            assert time.monotonic() < deadline, "serve --workers 2 did not become ready"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


@pytest.mark.slow
def test_any_worker_answers_for_all_of_them(two_workers: str, tmp_path: Path) -> None:
    files = tmp_path / "metrics"
    sent = 0
    with ThreadPoolExecutor(8) as pool:  # until both workers have answered some (bounded)
        while len(_pids(files)) < 2 and sent < 4000:
            codes = list(pool.map(lambda _: _healthz(two_workers), range(40)))
            assert codes == [200] * 40
            sent += 40
    assert len(_pids(files)) == 2, "the kernel gave every connection to one worker"
    for _ in range(6):  # each scrape is answered by one worker or the other
        samples = scrape(two_workers)
        healthz = value(
            samples, "trialbridge_http_requests_total", method="GET", route="/healthz", status="200"
        )
        assert healthz == sent  # the same total whichever worker answered the scrape


def _healthz(base: str) -> int:
    """One request on a new connection (the kernel spreads new connections over the workers)."""
    with httpx.Client() as client:
        return client.get(f"{base}/healthz").status_code


def _pids(folder: Path) -> set[str]:
    """The processes that have counted something in the shared metric files."""
    return {f.stem.rsplit("_", 1)[1] for f in folder.glob("counter_*.db")}
