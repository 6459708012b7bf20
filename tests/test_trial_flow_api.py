"""NCT06088771's CONSORT-style flow over HTTP: eleven hand-built patients, counts worked out by hand.

Patients (`tests.kit.nct.flow_cohort`; every one a screening candidate; CLINICAL.md study 1):

| id | eligibility                      | ResearchSubject | dosed | surgery | viable % | reaches   |
|----|----------------------------------|-----------------|-------|---------|----------|-----------|
| e1 | eligible                         | on-study        | yes   | Day 18  | 5        | evaluable |
| e2 | eligible                         | on-study        | yes   | Day 18  | —        | operated  |
| e3 | eligible                         | on-study        | yes   | —       | —        | dosed     |
| e4 | eligible                         | on-study        | yes   | — (died)| —        | dosed     |
| e5 | eligible                         | on-study        | no    | —       | —        | enrolled  |
| e6 | eligible                         | screening       | no    | —       | —        | eligible  |
| c1 | eligible                         | none            | no    | —       | —        | eligible  |
| x1 | exclusion 5 met (RA) at enrolment| on-study        | yes   | Day 18  | 0        | evaluable |
| i1 | exclusion 5 met (RA)             | none            | no    | —       | —        | screened  |
| i2 | inclusion 2 not met (cT1a)       | none            | no    | —       | —        | screened  |
| n1 | C34.90 only: criterion 1 unknown | none            | no    | —       | —        | screened  |

Screened 11 → eligible 7 (−2 exclusion 5, −1 inclusion 2, −1 indeterminate) → enrolled 6 (−e6,
−c1, +x1 enrolled although not eligible) → dosed 5 (−e5) → operated 3 (−e3 no resection, −e4 died
before surgery) → evaluable 2 (−e2 no percent viable tumour).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.kit import nct
from tests.kit.client import put_resources
from tests.kit.cohort import fresh_listing, fresh_outcomes

NCT = "NCT06088771"
RA = "not eligible: exclusion 5 met (Autoimmune condition, active or history)"
T1A = "not eligible: inclusion 2 not met (Primary tumour stage T1b or higher)"
C34 = "eligibility indeterminate: criterion 1 unknown (Non-small cell lung cancer)"


@pytest.fixture
def api(server: LiveServer, fhir: httpx.Client) -> Iterator[httpx.Client]:
    """A client on /api/v1 over the eleven patients of the table above."""
    put_resources(fhir, *nct.flow_cohort())
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=120) as client:
        yield client


def _box(stage: dict[str, Any]) -> dict[str, Any]:
    assert len(stage["boxes"]) == 1, stage
    box: dict[str, Any] = stage["boxes"][0]
    return box


def _reasons(found: list[dict[str, Any]]) -> dict[str, int]:
    return {c["reason"]: c["n"] for c in found}


def test_trial_flow_counts_and_reasons(api: httpx.Client) -> None:
    """Each step's count, exclusions and additions are the hand-worked ones; they reconcile."""
    out = fresh_outcomes(api, NCT)["outcomes"]
    flow = out["flow"]
    assert flow["title"] == "NCT06088771: flow of patients"
    boxes = [_box(s) for s in flow["stages"]]
    assert [(b["key"], b["n"]) for b in boxes] == [
        ("screened", 11),
        ("eligible", 7),
        ("enrolled", 6),
        ("dosed", 5),
        ("operated", 3),
        ("evaluable", 2),
    ]
    screened, eligible, enrolled, dosed, operated, evaluable = boxes
    assert (screened["excluded"], screened["added"]) == ([], [])
    assert _reasons(eligible["excluded"]) == {RA: 2, T1A: 1, C34: 1}
    assert eligible["added"] == []
    assert _reasons(enrolled["excluded"]) == {
        "not enrolled (ResearchSubject status screening)": 1,
        "not enrolled (no ResearchSubject for the study)": 1,
    }
    assert _reasons(enrolled["added"]) == {RA: 1}
    assert _reasons(dosed["excluded"]) == {"not dosed (no study-drug administration)": 1}
    assert _reasons(operated["excluded"]) == {
        "no lung resection recorded": 1,
        "died before surgery": 1,
    }
    assert _reasons(evaluable["excluded"]) == {
        "MPR not evaluable (percent viable tumour of the resected primary not recorded)": 1
    }
    for before, after in itertools.pairwise(boxes):
        lost = sum(c["n"] for c in after["excluded"])
        gained = sum(c["n"] for c in after["added"])
        assert before["n"] - lost + gained == after["n"], after["key"]
    counts = out["counts"]
    assert (counts["dosed"], counts["operated"], counts["with_response_assessment"]) == (5, 3, 2)
    assert all(b["definition"] for b in boxes)
    assert len(flow["notes"]) == 3


def test_flow_follows_the_screening_list(api: httpx.Client, fhir: httpx.Client) -> None:
    """A new candidate who is not a subject moves only the screening counts: the write changes
    no subject row, yet it marks the snapshot stale (the flow reads the screening list)."""
    first = fresh_outcomes(api, NCT)
    assert _box(first["outcomes"]["flow"]["stages"][0])["n"] == 11
    put_resources(fhir, *nct.work_up("c2").values())
    again = fresh_outcomes(api, NCT)
    assert again["data_as_of"] > first["data_as_of"]
    flow = again["outcomes"]["flow"]
    assert [_box(s)["n"] for s in flow["stages"]] == [12, 8, 6, 5, 3, 2]
    enrolled = _box(flow["stages"][2])
    assert _reasons(enrolled["excluded"])["not enrolled (no ResearchSubject for the study)"] == 2


def test_trial_listing_pages_through_the_subjects(api: httpx.Client) -> None:
    """The seven ResearchSubjects (e1–e6, x1), one row each, two pages of four and three."""
    first = fresh_listing(api, NCT, limit=4)
    assert len(first["subjects"]) == 4
    second = fresh_listing(api, NCT, limit=4, cursor=first["next_cursor"])
    assert (second["computed_at"], second["data_as_of"]) == (
        first["computed_at"],
        first["data_as_of"],
    )
    rows = first["subjects"] + second["subjects"]
    assert second["next_cursor"] is None
    assert len(rows) == 7
    assert [r["subject_id"] for r in rows] == sorted(r["subject_id"] for r in rows)
    assert sum(r["dosed"] for r in rows) == 5
    assert sorted(r["status"] for r in rows) == ["on-study"] * 6 + ["screening"]
