"""NCT06088771 patients and the trial API's answers about them, for every test of the trial.

Every resource id starts with the patient id. `work_up` settles all nine criteria in the patient's
favour (eligible); a test varies one resource to make a known verdict, and its keywords give the
variants the test files were written with. The milestones follow the schedule: enrolled 2025-03-03,
Day 1 2025-03-10, a lobectomy on 2025-03-27 (Day 18) and a post-operative visit 30 days later.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from tests.kit import fhir as kit
from tests.kit.client import get_json
from tests.kit.evidence import cited

Resources = dict[str, dict[str, Any]]
NCT = "NCT06088771"
ENROLLED = dt.date(2025, 3, 3)
DAY1 = dt.date(2025, 3, 10)
SYRINGE = "dupilumab 300 MG in 2 ML Prefilled Syringe"
CORE_NEEDLE_BIOPSY = "CT-guided core needle biopsy of lung"
EX_SMOKER = kit.coded(kit.SNOMED, "8517006", "Ex-smoker")
FORMER_SMOKER = kit.coded(kit.SNOMED, "8517006", "Former smoker (finding)")
CANDIDATE = {"gender": "female", "birth_date": "1958-11-30"}  # work_up's Patient by default


def day(n: int, day1: dt.date = DAY1) -> dt.date:
    """The calendar date of study day n (CDISC: no Day 0)."""
    return day1 + dt.timedelta(days=n - 1 if n > 0 else n)


SURGERY = day(18)  # 2025-03-27
POST_OP = SURGERY + dt.timedelta(days=30)  # 2025-04-26, the last data point of a clean subject


def _by_id(*resources: dict[str, Any]) -> Resources:
    return {r["id"]: r for r in resources}


def problem(**fields: Any) -> dict[str, Any]:
    """A problem-list Condition."""
    return kit.condition(category=kit.condition_category("problem-list-item"), **fields)


# -- screening ----------------------------------------------------------------------------------------


def work_up(
    pid: str,
    *,
    patient: Mapping[str, Any] | None = CANDIDATE,
    problem_list: bool = True,
    recorded: bool = False,
    hypertension: bool = True,
    resection_text: str | None = "VATS right upper lobectomy",
    resection_on: kit.Date = "2025-03-25",
    core_biopsies: int | None = None,
    history: Iterable[dict[str, Any]] | None = None,
    smoker: dict[str, Any] = FORMER_SMOKER,
) -> Resources:
    """A complete screening work-up settling every criterion in the patient's favour (eligible).

    `patient`: the Patient's fields (None: no Patient). The Conditions are on the problem list
    (`problem_list`), recorded on their onset day when `recorded`; hypertension since 2016 unless
    not `hypertension`. The lobectomy ordered on 2025-02-25 for `resection_on` has the text
    `resection_text` (None: only the code). `core_biopsies`: None, one CT-guided biopsy on
    2025-02-20; n, n core needle biopsies on Day -20 as the schedule has them (0: none). `history`
    is the medication history (None: one amlodipine dose in 2024, since criterion 8 needs some
    record to say "no listed drug in the 56 days"; () none). `smoker` is the 2025-02-03 finding.
    """
    condition = problem if problem_list else kit.condition

    def diagnosis(rid: str, code: dict[str, Any], onset: str) -> dict[str, Any]:
        dated = {"recorded": onset} if recorded else {}
        return condition(id=f"{pid}-{rid}", patient=pid, code=code, onset=onset, **dated)

    resection = {**kit.LOBECTOMY, "text": resection_text} if resection_text else kit.LOBECTOMY
    if core_biopsies is None:
        biopsies = [
            kit.procedure(
                id=f"{pid}-bx",
                patient=pid,
                code="CT-guided core needle biopsy, right upper lobe of lung",
                performed="2025-02-20",
            )
        ]
    else:
        biopsies = list(core_biopsy_procedures(pid, core_biopsies).values())
    if history is None:
        history = [
            kit.medication_administration(
                id=f"{pid}-amlo",
                patient=pid,
                medication="amlodipine 5 MG Oral Tablet",
                effective="2024-06-01",
                route=kit.ORAL,
            )
        ]
    return _by_id(
        *([kit.patient(id=pid, **patient)] if patient is not None else []),
        diagnosis("dx", kit.NSCLC, "2025-01-20"),
        *([diagnosis("htn", kit.HYPERTENSION, "2016-02-02")] if hypertension else []),
        kit.observation(
            id=f"{pid}-t",
            patient=pid,
            code=kit.T_CLINICAL,
            effective="2025-02-12",
            valueCodeableConcept={"text": "cT2a"},
        ),
        kit.observation(
            id=f"{pid}-m",
            patient=pid,
            code=kit.M_CLINICAL,
            effective="2025-02-12",
            valueCodeableConcept=kit.coded(kit.AJCC, "cM0", "cM0"),
        ),
        kit.service_request(
            id=f"{pid}-sr",
            patient=pid,
            code=resection,
            authored="2025-02-25",
            occurrence=resection_on,
        ),
        *biopsies,
        *(
            kit.genomic_variant(
                id=f"{pid}-{name}", patient=pid, gene=gene, present=False, effective="2025-02-14"
            )
            for name, gene in (("egfr", kit.EGFR), ("alk", kit.ALK), ("ros1", kit.ROS1))
        ),
        *history,
        kit.smoking_status(id=f"{pid}-smk", patient=pid, finding=smoker, effective="2025-02-03"),
    )


def core_biopsy_procedures(pid: str, n: int = 3, on: dt.date | None = None) -> Resources:
    """`n` CT-guided core needle biopsies on Day -20 (or `on`), ids {pid}-cnb-1 … {pid}-cnb-n."""
    performed = on if on is not None else day(-20)
    return _by_id(
        *(
            kit.procedure(
                id=f"{pid}-cnb-{i}", patient=pid, code=CORE_NEEDLE_BIOPSY, performed=performed
            )
            for i in range(1, n + 1)
        )
    )


def prednisone(pid: str, when: kit.Date, rid: str | None = None) -> dict[str, Any]:
    """A 40 mg oral prednisone dose (RxNorm 312617)."""
    return kit.dose(
        id=rid or f"{pid}-pred",
        patient=pid,
        drug=kit.PREDNISONE,
        code="312617",
        amount=40,
        when=when,
        route=kit.ORAL,
    )


def autoimmune(pid: str) -> Resources:
    """Rheumatoid arthritis since 2019: exclusion 5 met."""
    return _by_id(
        problem(id=f"{pid}-ra", patient=pid, code=kit.RHEUMATOID_ARTHRITIS, onset="2019-06-01")
    )


# -- on study -------------------------------------------------------------------------------------------


def enrollment(pid: str, *, status: str = "on-study") -> Resources:
    """The ResearchSubject for NCT06088771, enrolled on 2025-03-03."""
    return _by_id(kit.research_subject(id=f"{pid}-rs", patient=pid, status=status, start=ENROLLED))


def study_doses(
    pid: str,
    on: dt.date = DAY1,
    at: tuple[str, str, str] = ("09:00:00-04:00", "09:05:00-04:00", "10:00:00-04:00"),
) -> Resources:
    """Day 1 (`on`) as planned: dupilumab 2 × 300 mg by syringe, then cemiplimab 350 mg, at the
    times `at` (a time of day with its offset, or a whole timestamp)."""

    def when(time: str) -> str:
        return time if "T" in time else f"{on}T{time}"

    dupi_a, dupi_b, cemi = (when(time) for time in at)
    return _by_id(
        kit.dose(id=f"{pid}-dupi-a", patient=pid, drug=SYRINGE, amount=300, when=dupi_a),
        kit.dose(id=f"{pid}-dupi-b", patient=pid, drug=SYRINGE, amount=300, when=dupi_b),
        kit.dose(id=f"{pid}-cemi", patient=pid, drug="Libtayo 350 MG", amount=350, when=cemi),
    )


def on_study(
    pid: str,
    number: str,
    *,
    start: dt.date | None = ENROLLED,
    surgery: str = "Right upper lobectomy",
    surgery_on: kit.Date = SURGERY,
) -> Resources:
    """Enrollment as subject `number` and the schedule kept: Day-1 doses, stool on Day -5, the
    lobectomy (on Day 18 unless `surgery_on`), the post-operative visit on Day 48."""
    return _by_id(
        kit.research_subject(id=f"{pid}-rs", patient=pid, number=number, start=start),
        *study_doses(pid).values(),
        kit.specimen(id=f"{pid}-stool", patient=pid, type="Stool specimen", collected=day(-5)),
        kit.procedure(id=f"{pid}-surgery", patient=pid, code=surgery, performed=surgery_on),
        kit.encounter(id=f"{pid}-postop", patient=pid, start=f"{POST_OP}T10:00:00-04:00"),
    )


def day1_doses(pid: str) -> Resources:
    """Dupilumab 2 × 300 mg and cemiplimab 350 mg on Day 1 (2025-03-10)."""
    doses = (("dupi-a", "Dupixent 300 MG", 300), ("dupi-b", "Dupixent 300 MG", 300))
    return _by_id(
        *(
            kit.medication_administration(
                id=f"{pid}-{key}",
                patient=pid,
                medication=drug,
                effective=f"{DAY1}T09:00:00-04:00",
                dose=kit.quantity(mg, "mg"),
            )
            for key, drug, mg in (*doses, ("cemi", "cemiplimab", 350))
        )
    )


def surgery(pid: str) -> Resources:
    """A performed lobectomy on Day 18."""
    return _by_id(
        kit.procedure(id=f"{pid}-lob", patient=pid, code="Left lower lobectomy", performed=SURGERY)
    )


def viable_tumour(pid: str, percent: int) -> Resources:
    """Percent viable tumour of the resected primary (makes MPR evaluable)."""
    return _by_id(
        kit.observation(
            id=f"{pid}-viable",
            patient=pid,
            code="Percent viable tumor, primary",
            effective="2025-04-02",
            valueQuantity=kit.quantity(percent, "%"),
        )
    )


# flow_cohort's CONSORT counts, worked out by hand in tests/test_trial_flow_api.py's table
FLOW_COUNTS = (
    ("Screened", 11),
    ("Eligible", 7),
    ("Enrolled", 6),
    ("Dosed", 5),
    ("Operated", 3),
    ("Evaluable", 2),
)


def flow_cohort() -> list[dict[str, Any]]:
    """Eleven candidates, one per row of tests/test_trial_flow_api.py's table."""
    out: Resources = {"rs-nct": kit.research_study()}
    for pid in ("e1", "e2", "e3", "e4", "e5", "e6", "c1", "x1", "i1", "i2"):
        out |= work_up(pid)
    for pid in ("e1", "e2", "e3", "e4", "e5", "x1"):
        out |= enrollment(pid)
    out |= enrollment("e6", status="screening")
    for pid in ("e1", "e2", "e3", "e4", "x1"):
        out |= day1_doses(pid)
    for pid in ("e1", "e2", "x1"):
        out |= surgery(pid)
    out |= viable_tumour("e1", 5) | viable_tumour("x1", 0)
    out["e4"]["deceasedDateTime"] = "2025-03-20"
    out |= autoimmune("x1") | autoimmune("i1")
    out["i2-t"]["valueCodeableConcept"] = {"text": "cT1a"}
    out |= {
        "n1": kit.patient(id="n1", gender="male", birth_date="1950-05-05"),
        "n1-dx": problem(id="n1-dx", patient="n1", code=kit.LUNG_CANCER_C34_90, onset="2025-01-20"),
    }
    return list(out.values())


# -- reading the trial API (/api/v1) -----------------------------------------------------------------


def subject_row(api: httpx.Client, number: str) -> dict[str, Any]:
    """The subject list's row of one subject number."""
    rows = get_json(api, f"/studies/{NCT}/subjects", subject_number=number)["subjects"]
    assert len(rows) == 1, rows
    row: dict[str, Any] = rows[0]
    return row


def subject_id(api: httpx.Client, number: str) -> str:
    """The pseudonymous subject id of a subject number."""
    found: str = subject_row(api, number)["subject_id"]
    return found


def subject_numbers(api: httpx.Client) -> dict[str, str]:
    """Pseudonymous subject id → subject number, of every subject (one page of up to 500)."""
    subjects = get_json(api, f"/studies/{NCT}/subjects", limit=500)["subjects"]
    return {s["subject_id"]: s["subject_number"] for s in subjects}


def eligibility(api: httpx.Client, sid: str, **params: Any) -> dict[str, Any]:
    """A subject's eligibility (stored, or as of a day), its evidence resolved to the versions
    it cites."""
    body = get_json(api, f"/studies/{NCT}/subjects/{sid}/eligibility", **params)
    resolved: dict[str, Any] = cited(api, NCT, body)
    return resolved


def criterion(body: dict[str, Any], criterion_id: str) -> dict[str, Any]:
    """One criterion of an eligibility body."""
    found: list[dict[str, Any]] = [c for c in body["criteria"] if c["id"] == criterion_id]
    assert len(found) == 1
    return found[0]


def cites(found: dict[str, Any]) -> list[tuple[str, str]]:
    """A criterion's evidence as (reference, value)."""
    return [(e["reference"], e["value"]) for e in found["evidence"]]


def deviations(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    """Every deviation matching the filters (one big page)."""
    body = get_json(api, f"/studies/{NCT}/deviations", **{"limit": 500, **params})
    assert body["next_cursor"] is None
    found: list[dict[str, Any]] = body["deviations"]
    return found


def outcomes(api: httpx.Client, sid: str) -> dict[str, Any]:
    """A subject's endpoints."""
    return get_json(api, f"/studies/{NCT}/subjects/{sid}/outcomes")
