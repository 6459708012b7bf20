"""bench/generate.py: deterministic, valid FHIR, and the service finds the cohorts it planned."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from tests.conftest import LiveServer
from tests.kit.cohort import every_row, fresh_outcomes

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "bench" / "generate.py"
PATIENTS = 50
SEED = 5  # 50 patients of seed 5 hold NCT06088771 subjects and candidates and every cirAE group


def _generate(out: Path, *options: str) -> dict[str, Any]:
    """Run the generator as the benchmarks do; its plan.json."""
    command = [sys.executable, str(GENERATOR), "--out", str(out), *options]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    plan: dict[str, Any] = orjson.loads((out / "plan.json").read_bytes())
    return plan


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """50 patients as transaction Bundles of 20 patients each, and their plan."""
    out = tmp_path_factory.mktemp("cohort")
    options = ("--patients", str(PATIENTS), "--seed", str(SEED), "--format", "bundles")
    return out, _generate(out, *options, "--per-file", "20")


def _resources(folder: Path) -> list[dict[str, Any]]:
    return [
        entry["resource"]
        for path in sorted(folder.glob("part-*.json"))
        for entry in orjson.loads(path.read_bytes())["entry"]
    ]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    """Two runs of one seed write identical files (NDJSON); another seed writes other patients."""
    options = ("--patients", str(PATIENTS), "--per-file", "20")
    _generate(tmp_path / "a", *options, "--seed", str(SEED))
    _generate(tmp_path / "b", *options, "--seed", str(SEED))
    _generate(tmp_path / "c", *options, "--seed", str(SEED + 1))
    first = _files(tmp_path / "a")
    assert list(first) == [*(f"part-{i:05d}.ndjson" for i in range(3)), "plan.json"]
    assert first == _files(tmp_path / "b")
    assert first["part-00000.ndjson"] != _files(tmp_path / "c")["part-00000.ndjson"]


def test_a_patient_does_not_change_when_the_cohort_grows(tmp_path: Path) -> None:
    """The first 50 patients of a 60-patient cohort are those of the 50-patient one."""
    _generate(tmp_path / "small", "--patients", "50", "--seed", str(SEED), "--per-file", "50")
    _generate(tmp_path / "large", "--patients", "60", "--seed", str(SEED), "--per-file", "50")
    small = (tmp_path / "small" / "part-00000.ndjson").read_bytes()
    assert (tmp_path / "large" / "part-00000.ndjson").read_bytes() == small


def test_every_resource_validates_and_the_plan_counts_them(
    cohort: tuple[Path, dict[str, Any]],
) -> None:
    """Each generated resource is valid FHIR R4B; the plan's counts are those of the files."""
    folder, plan = cohort
    resources = _resources(folder)
    for resource in resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    types = Counter(r["resourceType"] for r in resources)
    assert dict(types) == plan["resource_types"]
    assert len(resources) == plan["resources"]
    assert types["Patient"] == PATIENTS
    assert types["ResearchSubject"] == plan["nct06088771_subjects"]
    assert len({(r["resourceType"], r["id"]) for r in resources}) == len(resources)
    assert plan["nct06088771_subjects"] > 0
    assert plan["nct06088771_candidates"] > 0
    assert all(n > 0 for n in plan["cirae_groups"].values())


def test_the_service_finds_the_planned_cohorts(
    server: LiveServer, fhir: httpx.Client, cohort: tuple[Path, dict[str, Any]]
) -> None:
    """Posted as transactions, the data yields exactly the planned subjects and cirAE groups."""
    folder, plan = cohort
    created = 0
    for path in sorted(folder.glob("part-*.json")):
        response = fhir.post("", content=path.read_bytes(), timeout=300)
        assert response.status_code == 200, response.text[:2000]
        created += sum(e["response"]["status"].startswith("201") for e in response.json()["entry"])
    assert created == plan["resources"]
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=300) as api:
        nct = fresh_outcomes(api, "NCT06088771")
        assert nct["outcomes"]["counts"]["subjects"] == plan["nct06088771_subjects"]
        listed = api.get("/studies/NCT06088771/subjects", params={"limit": 100}).json()
        assert len(listed["subjects"]) == plan["nct06088771_subjects"]
        cirae = fresh_outcomes(api, "cirae-dupilumab")["outcomes"]
    assert cirae["groups"] == plan["cirae_groups"]
    # CLINICAL.md revision 2: the NCT06088771 subjects (cemiplimab + dupilumab, no cirAE) fit no
    # cirAE group and are excluded with the reason
    assert cirae["excluded"]["n"] == plan["cirae_excluded"] == plan["nct06088771_subjects"]
    reason = "dupilumab without a cirAE (another indication)"
    assert cirae["excluded"]["by_reason"] == {reason: plan["nct06088771_subjects"]}
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=300) as api:
        excluded = every_row(api, "cirae-dupilumab", "excluded")
    assert [e["reason"] for e in excluded] == [reason] * plan["nct06088771_subjects"]
