"""What the Dockerfile relies on: the wheel carries code, migrations and the console script,
and the image's command serves a migrated database with working health endpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx

from tests.conftest import FHIR_JSON, free_port
from tests.helpers import bundle, entry, observation, patient

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_wheel_contains_what_the_image_needs(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("trialbridge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    for required in (
        "api/app.py",
        "api/cli.py",
        "service/fhir_store.py",
        "fhir_mapping/validation.py",
        "migrations/env.py",
        "migrations/script.py.mako",
        "migrations/versions/0001_fhir_store.py",
    ):
        assert required in names
    assert "trialbridge = api.cli:main" in scripts


def _transaction(*observations: dict[str, object]) -> bytes:
    return bundle(
        "transaction",
        entry({**patient("pkg"), "id": "pkg"}, "PUT", "Patient/pkg"),
        *(entry(o, "POST", "Observation") for o in observations),
    )


def test_image_command_serves_a_fresh_sqlite_database(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/var/trialbridge.db",
        "TRIALBRIDGE_MODEL_CHECK_PROCESSES": "1",
        "TRIALBRIDGE_MODEL_CHECK_MIN_ENTRIES": "2",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "trialbridge"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert ready.json() == {
            "status": "ready",
            "schema_revision": "0006",
            "model_checks": "idle",
        }
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert (tmp_path / "var" / "trialbridge.db").is_file()

        # The first large Bundle starts the model-check worker (spawned from the console script)
        # and is checked in place meanwhile; once the worker is ready, Bundles go to it.
        first = httpx.post(
            f"{base}/fhir",
            content=_transaction(observation("Patient/pkg")),
            headers=FHIR_JSON,
            timeout=60,
        )
        assert first.status_code == 200, first.text
        while httpx.get(f"{base}/readyz").json()["model_checks"] != "ready":
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline + 60
            time.sleep(0.2)
        bad = observation("Patient/pkg", effectiveDateTime="2020-01-01T10:00:00")
        refused = httpx.post(
            f"{base}/fhir",
            content=_transaction(observation("Patient/pkg"), bad),
            headers=FHIR_JSON,
            timeout=60,
        )
        assert refused.status_code == 400
        assert refused.json()["issue"][0]["expression"] == [
            "Bundle.entry[2].resource.effectiveDateTime"
        ]
        found = httpx.get(f"{base}/fhir/Observation", params={"subject": "Patient/pkg"})
        assert found.json()["total"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log.read_text()
