"""Many processes, one PostgreSQL: two `trialbridge serve` processes and one `trialbridge worker`
ingest overlapping data at once (asynchronous `$import` jobs and direct transactions), and the
store ends exactly as a single-process `trialbridge load` of the same data leaves it: no duplicate
resource or version, no lost or extra trial event, the same cohort results."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from service.infra.db import make_engine
from service.infra.settings import Settings
from tests.conftest import free_port
from tests.kit.cli import TRIALBRIDGE, run_trialbridge
from tests.kit.cohort import fresh_outcomes
from tests.test_import_jobs import ASYNC_NDJSON, _env, finished, worker

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[1]
PATIENTS, SEED, PER_FILE = 50, 5, 10  # seed 5: subjects, candidates and every cirAE group
STUDIES = ("NCT06088771", "cirae-dupilumab")
# One subject-id key for every process of both databases: each database would otherwise generate
# its own, and the same subjects would have other ids (and another order) in the two results.
PSEUDONYM_KEY = "many-processes-test-key"


def generate(out: Path, fmt: str) -> list[Path]:
    """The seeded cohort as NDJSON files or transaction Bundles (PUT by id)."""
    command = [
        sys.executable,
        str(REPO / "bench" / "generate.py"),
        *("--out", str(out), "--patients", str(PATIENTS), "--seed", str(SEED)),
        *("--format", fmt, "--per-file", str(PER_FILE)),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return sorted(out.glob("part-*"))


@contextmanager
def server(database_url: str, workdir: Path) -> Iterator[str]:
    """A real `trialbridge serve` process (jobs to the procrastinate queue); its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [TRIALBRIDGE, "serve", "--port", str(port)],
        env=_env(database_url, cohort_refresh_interval_seconds="0", pseudonym_key=PSEUDONYM_KEY),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "the server stopped"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def snapshot(engine: Engine) -> dict[str, Any]:
    """What the store holds: resources, versions, and every trial event, in a fixed order."""
    with engine.connect() as conn:
        resources = conn.execute(
            text("SELECT resource_type, count(*) FROM fhir_resource GROUP BY 1 ORDER BY 1")
        ).all()
        versions = conn.execute(text("SELECT count(*) FROM fhir_resource_version")).scalar_one()
        events = conn.execute(
            text(
                "SELECT source_type, source_id, source_version, seq, patient_id, kind, "
                "first_day, payload FROM trial_event ORDER BY 1, 2, 4"
            )
        ).all()
        subjects = conn.execute(text("SELECT count(*) FROM study_subject")).scalar_one()
    return {
        "resources": [tuple(r) for r in resources],
        "versions": versions,
        "events": [tuple(e) for e in events],
        "subjects": subjects,
    }


def outcomes(base: str) -> dict[str, Any]:
    """Each study's cohort results, without when they were computed."""
    with httpx.Client(base_url=base, timeout=300) as client:
        return {study: fresh_outcomes(client, study)["outcomes"] for study in STUDIES}


@dataclass(frozen=True)
class Compared:
    """The store after concurrent ingest, and after a single-process load of the same data."""

    got: dict[str, Any]
    expected: dict[str, Any]
    concurrent_results: dict[str, Any]
    reference_results: dict[str, Any]


@pytest.fixture(scope="module")
def compared(new_database: Any, tmp_path_factory: pytest.TempPathFactory) -> Compared:
    """Two servers and a worker ingest the cohort concurrently; one process loads it alone."""
    tmp_path = tmp_path_factory.mktemp("many")
    ndjson = generate(tmp_path / "ndjson", "ndjson")
    bundles = generate(tmp_path / "bundles", "bundles")
    assert len(ndjson) == len(bundles) > PATIENTS // PER_FILE - 1

    reference_url = str(new_database("postgres"))
    loaded = run_trialbridge(
        reference_url,
        "load",
        *map(str, ndjson),
        cwd=tmp_path,
        env={"TRIALBRIDGE_PSEUDONYM_KEY": PSEUDONYM_KEY},
    )
    assert loaded.returncode == 0, loaded.stderr

    url = str(new_database("postgres"))
    assert run_trialbridge(url, "migrate", cwd=tmp_path).returncode == 0
    failures: list[str] = []
    with (
        server(url, tmp_path) as first,
        server(url, tmp_path) as second,
        worker(url, import_job_chunk_lines="50", pseudonym_key=PSEUDONYM_KEY),
    ):

        def imports(base: str, files: list[Path]) -> None:
            with httpx.Client(base_url=base, timeout=300) as client:
                started = [
                    client.post("/fhir/$import", content=f.read_bytes(), headers=ASYNC_NDJSON)
                    for f in files
                ]
                for answer in started:
                    if answer.status_code != 202:
                        failures.append(answer.text)
                        continue
                    done = finished(client, answer.headers["content-location"], 600).json()
                    if done["status"] != "succeeded" or done["error"]:
                        failures.append(str(done))

        def transactions(base: str, files: list[Path]) -> None:
            with httpx.Client(base_url=base, timeout=300) as client:
                for f in files:
                    answer = client.post(
                        "/fhir",
                        content=f.read_bytes(),
                        headers={"content-type": "application/fhir+json"},
                    )
                    if answer.status_code != 200:
                        failures.append(answer.text[:500])

        writers = [
            threading.Thread(target=imports, args=(first, ndjson)),
            threading.Thread(target=imports, args=(second, ndjson[::-1])),
            threading.Thread(target=transactions, args=(second, bundles[::2])),
            threading.Thread(target=transactions, args=(first, bundles[1::2][::-1])),
        ]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join(900)
        assert failures == []
        concurrent_results = outcomes(first)
        assert outcomes(second) == concurrent_results

    with server(reference_url, tmp_path) as single:
        reference_results = outcomes(single)

    engine = make_engine(Settings(database_url=url))
    reference = make_engine(Settings(database_url=reference_url))
    try:
        got, expected = snapshot(engine), snapshot(reference)
    finally:
        engine.dispose()
        reference.dispose()
    return Compared(got, expected, concurrent_results, reference_results)


def test_concurrent_ingest_stores_each_resource_and_version_once(compared: Compared) -> None:
    """Async `$import` jobs and direct transactions of the same data: no duplicate, nothing lost."""
    assert compared.got["resources"] == compared.expected["resources"]
    assert (
        compared.got["versions"] == compared.expected["versions"]
    )  # identical content: no version


def test_concurrent_ingest_derives_what_one_process_derives(compared: Compared) -> None:
    """Subjects, trial events and cohort results equal a single-process load's."""
    assert compared.expected["subjects"] > 0  # the data holds both studies' cohorts
    assert compared.expected["events"]
    assert {
        "subjects": compared.got["subjects"],
        "events": len(compared.got["events"]),
        "results equal": compared.concurrent_results == compared.reference_results,
    } == {
        "subjects": compared.expected["subjects"],
        "events": len(compared.expected["events"]),
        "results equal": True,
    }
    assert compared.got["events"] == compared.expected["events"]
