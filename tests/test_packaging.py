"""What the Dockerfile relies on: the wheel carries code, migrations and the console script,
and the image's command serves a migrated database with working health endpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import httpx
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.infra import migrate
from service.infra.settings import Settings
from tests.conftest import FHIR_JSON, free_port
from tests.kit.fhir import entry, patient, transaction, viable_tumour
from tests.kit.live import served
from tests.kit.lock import locked

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PYPROJECT_DEPENDENCIES = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
    "dependencies"
]


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
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [
            Requirement(line.removeprefix("Requires-Dist: "))
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist: ")
        ]
    for required in (
        "api/app.py",
        "api/cli.py",
        "service/fhir/interactions.py",
        "service/studies/registry.py",
        "service/protocol/files/valuesets.toml",
        "service/protocol/files/studies/nct06088771.toml",
        "service/protocol/files/studies/cirae_dupilumab.toml",
        "service/export/sdtm/files/sdtmig_3_4.toml",
        "service/export/sdtm/files/ct.toml",
        "service/export/sdtm/files/fhir_to_cdisc.toml",
        "service/export/sdtm/files/studies/NCT06088771.toml",
        "service/export/sdtm/schemas/dataset.schema.json",
        "service/export/sdtm/schemas/LICENSE-dataset-schema.txt",
        "fhir_mapping/validation.py",
        "api/docs_assets/swagger.html",
        "api/docs_assets/swagger-init.js",
        "api/docs_assets/redoc.html",
        "api/docs_assets/redoc-init.js",
        "api/docs_assets/redoc.css",
        "migrations/env.py",
        "migrations/script.py.mako",
        "migrations/versions/0001_fhir_store.py",
    ):
        assert required in names
    assert "trialbridge = api.cli:main" in scripts
    # The image installs requirements.lock, then this wheel with --no-deps: the lock must pin
    # every requirement the wheel declares (test extras aside), at a version it accepts.
    pins = locked()
    needed = [r for r in requires if r.marker is None or "extra" not in str(r.marker)]
    assert len(needed) == len(PYPROJECT_DEPENDENCIES)
    for requirement in needed:
        pin = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(pin.version, prereleases=True), requirement


def _transaction(*observations: dict[str, object]) -> bytes:
    return transaction(
        entry(method="PUT", url="Patient/pkg", resource={**patient(mrn="pkg"), "id": "pkg"}),
        *(entry(method="POST", url="Observation", resource=o) for o in observations),
    )


def _serve(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`trialbridge serve` (the image's command) on a free port, from `tmp_path`."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "trialbridge"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env={**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/var/trialbridge.db", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, f"http://127.0.0.1:{port}", log


def _first_readyz(proc: subprocess.Popen[bytes], base: str, log: Path) -> httpx.Response:
    """The first answer of /readyz, once the server listens."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return httpx.get(f"{base}/readyz", timeout=2)
        except httpx.TransportError:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_image_command_serves_a_fresh_sqlite_database(tmp_path: Path) -> None:
    proc, base, log = _serve(
        tmp_path,
        TRIALBRIDGE_MODEL_CHECK_PROCESSES="1",
        TRIALBRIDGE_MODEL_CHECK_MIN_ENTRIES="2",
    )
    try:
        deadline = time.monotonic() + 60
        ready = _first_readyz(proc, base, log)
        assert ready.json() == {
            "status": "ready",
            "schema_revision": migrate.head_revision(),
            "model_checks": "idle",
        }
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert (tmp_path / "var" / "trialbridge.db").is_file()

        # The first large Bundle starts the model-check worker (spawned from the console script)
        # and is checked in place meanwhile; once the worker is ready, Bundles go to it.
        first = httpx.post(
            f"{base}/fhir",
            content=_transaction(viable_tumour(subject="Patient/pkg")),
            headers=FHIR_JSON,
            timeout=60,
        )
        assert first.status_code == 200, first.text
        while httpx.get(f"{base}/readyz").json()["model_checks"] != "ready":
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline + 60
            time.sleep(0.2)
        bad = viable_tumour(subject="Patient/pkg", effectiveDateTime="2020-01-01T10:00:00")
        refused = httpx.post(
            f"{base}/fhir",
            content=_transaction(viable_tumour(subject="Patient/pkg"), bad),
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


def test_serve_leaves_the_schema_to_a_release_step_when_told(tmp_path: Path) -> None:
    proc, base, log = _serve(tmp_path, TRIALBRIDGE_AUTO_MIGRATE="false")
    try:
        unready = _first_readyz(proc, base, log)
        assert unready.status_code == 503
        assert unready.json()["error"] == {
            "status": 503,
            "code": "schema_not_current",
            "message": "database schema at revision none, "
            f"this release needs {migrate.head_revision()}: "
            "run `trialbridge migrate`",
            "details": [],
        }
        subprocess.run(
            [str(BIN / "trialbridge"), "migrate"],
            cwd=tmp_path,
            env={**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/var/trialbridge.db"},
            check=True,
            capture_output=True,
            timeout=120,
        )
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200
        assert ready.json()["schema_revision"] == migrate.head_revision()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log.read_text()


def test_readiness_does_not_tell_who_asks_where_the_database_is(tmp_path: Path) -> None:
    """The connection error names the host and port: it goes to the log, not to the client."""
    settings = Settings(
        database_url="postgresql://postgres@127.0.0.1:9/nowhere",
        auto_migrate=False,
        audit_spool_dir=tmp_path / "spool",
        webhook_interval_seconds=0,
    )
    with served(settings) as running:
        answer = httpx.get(f"{running.url}/readyz", timeout=30)
    assert (answer.status_code, answer.json()["error"]["code"]) == (503, "database_unavailable")
    assert answer.json()["error"]["message"] == "the database is unavailable"
    assert "127.0.0.1" not in answer.text
    assert ":9" not in answer.text
