"""A server process starts, and serves FHIR writes and reads, without the statistics libraries.

matplotlib, numpy, pandas, scipy, lifelines, comorbidipy, pyreadstat and fpdf2 cost a process
~160 MB; they load with the first statistic, figure, export or PDF that needs them. Each check runs
in a fresh interpreter, so what this test session imported does not count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = (
    "comorbidipy",
    "fpdf",
    "lifelines",
    "matplotlib",
    "numpy",
    "pandas",
    "pyreadstat",
    "scipy",
)
REPORT = (
    f"import json, sys\nprint(json.dumps(sorted({{m for m in {HEAVY!r} if m in sys.modules}})))\n"
)

SERVE = """
import threading, time
import httpx, uvicorn
from api.app import create_app
from service.infra.settings import Settings

config = uvicorn.Config(create_app(Settings()), host="127.0.0.1", port=PORT, log_level="warning")
server = uvicorn.Server(config)
thread = threading.Thread(target=server.run, daemon=True)
thread.start()
while not server.started:
    assert thread.is_alive()
    time.sleep(0.02)
patient = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "s-1"}]}
bundle = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "fullUrl": "urn:uuid:0b9b2a4e-7f3c-4d2e-9a41-2f7c1d0e5a61",
            "resource": {**patient, "identifier": [{"system": "urn:mrn", "value": "s-2"}]},
            "request": {"method": "POST", "url": "Patient"},
        }
    ],
}
fhir = {"content-type": "application/fhir+json"}
with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=60) as client:
    answers = [
        client.post("/fhir/Patient", json=patient, headers=fhir).status_code,
        client.post("/fhir", json=bundle, headers=fhir).status_code,
        client.get("/fhir/Patient", params={"identifier": "urn:mrn|s-2"}).status_code,
        client.get("/api/v1/studies").status_code,
        client.get("/metrics").status_code,
        client.get("/readyz").status_code,
    ]
server.should_exit = True
thread.join(timeout=30)
print(json.dumps(answers))
"""


def _run(code: str, folder: Path, **env: str) -> list[Any]:
    """Run `code` in a fresh interpreter: the JSON lines it printed, parsed."""
    variables = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{folder}/trialbridge.db",
        "TRIALBRIDGE_AUTH_DISABLED": "true",
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=variables,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]


def test_importing_the_app_and_the_command_line_loads_no_statistics_library(
    tmp_path: Path,
) -> None:
    (found,) = _run("import api.app, api.cli\n" + REPORT, tmp_path)
    assert found == []


@pytest.mark.slow
def test_the_check_sees_a_statistics_library_when_one_is_imported(tmp_path: Path) -> None:
    """The probe itself works: the figure module does load matplotlib."""
    (found,) = _run("import api.app, service.stats.plots\n" + REPORT, tmp_path)
    assert "matplotlib" in found  # what else it pulls in may change; that one it draws with


@pytest.mark.slow
def test_a_server_serving_fhir_writes_and_reads_loads_no_statistics_library(
    tmp_path: Path,
) -> None:
    """With no cohort computation in this process (its refresher off), nothing pulls them in."""
    from tests.conftest import free_port

    code = "import json\n" + SERVE.replace("PORT", str(free_port())) + REPORT
    answers, found = _run(
        code,
        tmp_path,
        TRIALBRIDGE_COHORT_REFRESH_INTERVAL_SECONDS="0",
        TRIALBRIDGE_MODEL_CHECK_PROCESSES="0",
        TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS="0",
    )
    assert answers == [201, 200, 200, 200, 200, 200]
    assert found == []


REFRESH = """
import json
from service.derivation.catalog import load_catalog
from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from service.privacy.evidence import EvidenceCodec
from service.reads.cohort_refresher import CohortRefresher
from service.stats import survival

calls = {name: 0 for name in COUNTED}
for name in list(calls):  # count the statistics computed, so the check knows they ran
    def counted(*args, _f=getattr(survival, name), _name=name):
        calls[_name] += 1
        return _f(*args)
    setattr(survival, name, counted)
settings = Settings()
engine = make_engine(settings)
migrate.prepare(engine, auto_migrate=True)
protocols = load_catalog(settings).protocols
refresher = CohortRefresher(
    engine, protocols, EvidenceCodec(engine).seal, interval_seconds=0, zone=settings.site_zone()
)
outcome = refresher.refresh(STUDY, force=True).outcome
print(json.dumps([outcome, [calls[name] for name in COUNTED]]))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("study", "counted", "at_least", "found_libraries"),
    [
        # the EFS and OS curves; the response rates' exact CIs
        ("NCT06088771", ("km_fit", "clopper_pearson"), (2, 2), ["numpy", "scipy.special"]),
        # a matched comparison's follow-up and two groups' curves; its log-rank test (the Cox
        # models run on pandas tables with scipy.linalg's solve)
        ("cirae-dupilumab", ("km_fit", "log_rank"), (3, 1), ["numpy", "pandas", "scipy.special"]),
    ],
)
def test_a_cohort_refresh_imports_neither_lifelines_nor_scipy_stats(
    tmp_path: Path,
    study: str,
    counted: tuple[str, ...],
    at_least: tuple[int, ...],
    found_libraries: list[str],
) -> None:
    """Curves, tests and CIs come from numpy and scipy.special (issue 19: the two libraries cost
    3–5 s of a process's first computation; issue 17: ~55 MB an idle server keeps for life); only
    drawing a figure needs lifelines."""
    from tests.kit.cli import run_trialbridge

    generated = tmp_path / "generated"
    generator = [sys.executable, str(REPO / "bench" / "generate.py"), "--out", str(generated)]
    subprocess.run([*generator, "--patients", "60", "--seed", "5"], check=True, capture_output=True)
    url = f"sqlite:///{tmp_path}/trialbridge.db"
    files = [str(p) for p in sorted(generated.glob("part-*.ndjson"))]
    done = run_trialbridge(url, "load", *files, cwd=generated)
    assert done.returncode == 0, done.stderr[-2000:]
    probe = "import json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m in WANTED)))\n"
    wanted = ("lifelines", "matplotlib", "numpy", "pandas", "scipy.special", "scipy.stats")
    code = (
        f"STUDY, COUNTED = {study!r}, {counted!r}\n"
        + REFRESH
        + probe.replace("WANTED", repr(wanted))
    )
    (outcome, calls), found = _run(code, tmp_path, DATABASE_URL=url)
    assert outcome == "computed"
    ran = dict(zip(counted, calls, strict=True))
    assert all(n >= least for n, least in zip(calls, at_least, strict=True)), ran
    assert found == found_libraries
