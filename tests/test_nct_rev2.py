"""NCT06088771 after CLINICAL.md revision 2: each corrected definition as a known answer over HTTP.

Every subject below starts from one hand-checked work-up that settles all nine criteria in the
patient's favour (eligible, 4 met and 5 not met) and keeps to the schedule: enrolled 2025-03-03,
three core needle biopsies on Day -20, a stool sample on Day -5, cemiplimab 350 mg and dupilumab
2 × 300 mg on Day 1 (2025-03-10), a lobectomy on Day 18 and a post-operative visit 30 days later.
So a clean subject has no deviation at all, and each test changes only what its definition is about.
The expected answers are worked out from CLINICAL.md revision 2, not read from the code.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import httpx
import pytest

from service.protocol.terminology import build_terminology
from service.stats import survival
from service.studies.cirae.cohort import CohortPatient, build_cohort
from service.studies.interventional.eligibility import EligibilityResult, evaluate
from tests.kit import fhir as kit
from tests.kit import nct
from tests.kit.client import get_json, put_resources
from tests.kit.cohort import fresh_outcomes
from tests.kit.mapping import events_of
from tests.kit.nct import (
    DAY1,
    ENROLLED,
    EX_SMOKER,
    NCT,
    POST_OP,
    SURGERY,
    cites,
    criterion,
    eligibility,
    on_study,
    outcomes,
    prednisone,
    subject_row,
    work_up,
)
from tests.kit.protocols import cohort_protocol, trial_protocol

STUDY = kit.research_study()

Resources = list[dict[str, Any]]


# -- FHIR: one clean subject, varied per test (every resource id starts with the patient id) ------


def subject(pid: str, number: str, *extra: dict[str, Any], **enrollment: Any) -> Resources:
    """A clean enrolled subject plus the records a test adds or replaces (same id replaces).

    Its screening: three core needle biopsies on Day -20, no hypertension, and a medication
    history of prednisone 63 days before enrollment, outside the 56-day window."""
    by_id = work_up(
        pid,
        patient={"mrn": f"MRN-{pid}", "gender": "female", "birth_date": "1956-02-11"},
        problem_list=False,
        hypertension=False,
        resection_text=None,
        resection_on=SURGERY,
        core_biopsies=3,
        history=(),
        smoker=EX_SMOKER,
    )
    by_id[f"{pid}-pred"] = prednisone(pid, ENROLLED - dt.timedelta(days=63))
    by_id |= on_study(pid, number, **enrollment)
    by_id |= {r["id"]: r for r in extra}
    return list(by_id.values())


# -- reading the trial API ---------------------------------------------------------------------------


def deviations(api: httpx.Client, sid: str) -> list[tuple[str, str]]:
    """The subject's deviation log as (rule, message)."""
    return [(d["rule"], d["message"]) for d in nct.deviations(api, subject=sid)]


def timeline(api: httpx.Client, sid: str) -> list[tuple[int | None, str | None, str]]:
    """The subject's timeline as (study day, date, kind)."""
    body = get_json(api, f"/studies/{NCT}/subjects/{sid}/timeline")
    return [(e["study_day"], (e["date"] or {}).get("value"), e["kind"]) for e in body["events"]]


def clean(api: httpx.Client, sid: str) -> None:
    """What a clean subject shows: eligible then and now, no deviation, surgery on Day 18."""
    body = eligibility(api, sid)
    assert (body["overall"], body["at_enrollment"]) == ("eligible", "eligible")
    assert body["counts"] == {"met": 4, "not_met": 5, "unknown": 0}
    assert deviations(api, sid) == []
    out = outcomes(api, sid)
    assert (out["day1"], out["time_to_surgery_days"], out["on_time_surgery"]) == (
        DAY1.isoformat(),
        17,
        True,
    )
    assert out["surgery"]["study_day"] == 18
    last = (POST_OP - DAY1).days  # 47: censored at the post-operative visit
    for endpoint in ("efs", "os"):
        got = out[endpoint]
        assert (got["days"], got["event"], got["date"]) == (last, False, POST_OP.isoformat())


# -- 1. Day 1 is anchored on enrollment ------------------------------------------------------------

ATOPIC_DUPILUMAB = dt.date(2024, 3, 4)  # a year before enrollment, for atopic dermatitis


def atopic_dermatitis(pid: str) -> Resources:
    """Dupilumab for atopic dermatitis a year before enrollment, and the diagnosis."""
    return [
        kit.condition(
            id=f"{pid}-ad",
            patient=pid,
            code=kit.coded(kit.ICD10CM, "L20.9", "Atopic dermatitis, unspecified"),
            onset="2015-06-01",
        ),
        kit.dose(
            id=f"{pid}-dupi-ad",
            patient=pid,
            drug="Dupixent 300 MG/2ML Prefilled Syringe",
            amount=300,
            when=ATOPIC_DUPILUMAB,
            route=kit.SUBCUTANEOUS,
        ),
    ]


def test_day1_is_the_first_study_drug_on_or_after_enrollment(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Dupilumab a year before enrollment is prior medication: Day 1 stays 2025-03-10, no deviation."""
    put_resources(fhir, STUDY, *subject("a1", "101-001", *atopic_dermatitis("a1")))
    row = subject_row(api, "101-001")
    assert (row["enrolled_on"], row["day1"]) == (ENROLLED.isoformat(), DAY1.isoformat())
    sid = row["subject_id"]
    clean(api, sid)
    # the old dose is on the timeline before Day 1 (date − Day 1, no Day 0): Day -371
    prior = (ATOPIC_DUPILUMAB - DAY1).days
    assert prior == -371
    assert (prior, ATOPIC_DUPILUMAB.isoformat(), "drug_administration") in timeline(api, sid)
    # exclusion 8 counts it as prior medication, outside the 56 days before enrollment
    immuno = criterion(eligibility(api, sid), "immunomodulators")
    assert (immuno["verdict"], immuno["reason"]) == (
        "not_met",
        "no listed drug in the 56 days before 2025-03-03",
    )


def test_day1_without_an_enrollment_date_is_the_first_cemiplimab_day(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """No enrollment date: Day 1 is the first day cemiplimab is given, not the old dupilumab day."""
    put_resources(fhir, STUDY, *subject("a2", "101-002", *atopic_dermatitis("a2"), start=None))
    row = subject_row(api, "101-002")
    assert (row["enrolled_on"], row["day1"]) == (None, DAY1.isoformat())
    sid = row["subject_id"]
    assert deviations(api, sid) == []
    out = outcomes(api, sid)
    assert (out["day1"], out["time_to_surgery_days"], out["efs"]["days"]) == (
        DAY1.isoformat(),
        17,
        (POST_OP - DAY1).days,
    )


# -- 2. metastatic disease comes only from the cancer -----------------------------------------------


def staged(pid: str, rid: str, code: dict[str, Any], stage: str) -> dict[str, Any]:
    """A condition whose Condition.stage summary says `stage`."""
    return kit.condition(
        id=f"{pid}-{rid}",
        patient=pid,
        code=code,
        onset="2024-11-02",
        stage=[{"summary": {"text": stage}}],
    )


PRESSURE_ULCER = kit.coded(kit.ICD10CM, "L89.154", "Pressure ulcer of sacral region, stage 4")
CKD_4 = kit.coded(kit.ICD10CM, "N18.4", "Chronic kidney disease, stage 4 (severe)")
# ICD-10-CM's title for C77.1, and the shorter display some feeds send with the same code
C77_1 = kit.coded(
    kit.ICD10CM,
    "C77.1",
    "Secondary and unspecified malignant neoplasm of intrathoracic lymph nodes",
)
C77_1_SHORT = kit.coded(
    kit.ICD10CM, "C77.1", "Secondary malignant neoplasm of intrathoracic lymph nodes"
)


def test_only_the_cancer_makes_metastatic_disease(api: httpx.Client, fhir: httpx.Client) -> None:
    """A stage 4 pressure ulcer or kidney disease, and C77.1 nodes, are not metastases; stage IVA lung cancer is."""
    put_resources(
        fhir,
        STUDY,
        *subject(
            "b1",
            "102-001",
            staged("b1", "ulcer", PRESSURE_ULCER, "Stage 4"),
            staged("b1", "ckd", CKD_4, "Stage 4"),
        ),
        *subject("b2", "102-002", kit.condition(id="b2-n", patient="b2", code=C77_1)),
        *subject("b3", "102-003", kit.condition(id="b3-n", patient="b3", code=C77_1_SHORT)),
        # the lung cancer's own stage IVA is metastatic disease
        *subject("b4", "102-004", staged("b4", "dx", kit.NSCLC, "Stage IVA")),
    )
    for pid, number in (("b1", "102-001"), ("b2", "102-002"), ("b3", "102-003")):
        sid = subject_row(api, number)["subject_id"]
        clean(api, sid)
        metastatic = criterion(eligibility(api, sid), "metastatic")
        assert (metastatic["verdict"], metastatic["reason"]) == (
            "not_met",
            "no distant metastasis (M0)",
        )
        assert cites(metastatic) == [(f"Observation/{pid}-m/_history/1", "M0")]
    sid = subject_row(api, "102-004")["subject_id"]
    body = eligibility(api, sid)
    assert (body["overall"], body["at_enrollment"]) == ("ineligible", "ineligible")
    metastatic = criterion(body, "metastatic")
    assert (metastatic["verdict"], metastatic["reason"]) == (
        "met",
        "metastatic disease: stage IVA",
    )
    assert cites(metastatic) == [("Condition/b4-dx/_history/1", "stage IVA")]
    assert deviations(api, sid) == [
        ("ineligible_enrolled", "enrolled on 2025-03-03 while ineligible on that day")
    ]


# -- 3. eligibility is judged from pre-treatment staging --------------------------------------------


def pathological_t(pid: str, value: str) -> dict[str, Any]:
    """The resected specimen's T category, reported on 2025-04-09 (Day 31)."""
    return kit.observation(
        id=f"{pid}-pt",
        patient=pid,
        code=kit.T_PATHOLOGICAL,
        effective="2025-04-09",
        valueCodeableConcept={"text": value},
    )


def test_post_treatment_staging_never_changes_eligibility(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """ypT0 after a complete response, or a pT1a after Day 1, leaves the cT2a verdict: eligible."""
    put_resources(
        fhir,
        STUDY,
        *subject("c1", "103-001", pathological_t("c1", "ypT0")),
        *subject("c2", "103-002", pathological_t("c2", "pT1a")),
    )
    for pid, number in (("c1", "103-001"), ("c2", "103-002")):
        sid = subject_row(api, number)["subject_id"]
        clean(api, sid)
        for as_of in (None, "2025-05-31"):
            body = eligibility(api, sid, **({"as_of": as_of} if as_of else {}))
            assert (body["overall"], body["at_enrollment"]) == ("eligible", "eligible")
            stage = criterion(body, "stage")
            assert (stage["verdict"], stage["reason"]) == ("met", "T2a is at least T1b")
            assert cites(stage) == [(f"Observation/{pid}-t/_history/1", "cT2a")]


# -- 4. small-cell histology alone does not meet inclusion 1 ----------------------------------------

SMALL_CELL = kit.coded(kit.SNOMED, "254632001", "Small cell carcinoma of lung")


def test_small_cell_histology_alone_is_not_nsclc(api: httpx.Client, fhir: httpx.Client) -> None:
    """Small cell by SNOMED code, by text only, or beside an ICD-10 C34: inclusion 1 not met."""
    c34 = kit.LUNG_CANCER_C34_90
    put_resources(
        fhir,
        STUDY,
        *subject(
            "d1",
            "104-001",
            kit.condition(id="d1-dx", patient="d1", code=SMALL_CELL, onset="2025-01-20"),
        ),
        *subject(
            "d2",
            "104-002",
            kit.condition(id="d2-dx", patient="d2", code="SCLC, limited", onset="2025-01-20"),
        ),
        *subject(
            "d3",
            "104-003",
            kit.condition(id="d3-dx", patient="d3", code=c34, onset="2025-01-20"),
            kit.condition(id="d3-sc", patient="d3", code=SMALL_CELL, onset="2025-01-24"),
        ),
    )
    expected = {
        "d1": ("d1-dx", "2025-01-20", "254632001"),
        "d2": ("d2-dx", "2025-01-20", "SCLC, limited"),
        "d3": ("d3-sc", "2025-01-24", "254632001"),
    }
    for pid, (rid, onset, value) in expected.items():
        sid = subject_row(api, f"104-00{pid[1]}")["subject_id"]
        body = eligibility(api, sid)
        assert (body["overall"], body["at_enrollment"]) == ("ineligible", "ineligible")
        assert body["counts"] == {"met": 3, "not_met": 6, "unknown": 0}
        nsclc = criterion(body, "nsclc")
        assert (nsclc["verdict"], nsclc["reason"], nsclc["missing"]) == (
            "not_met",
            f"small cell lung cancer recorded on {onset}, no NSCLC",
            None,
        )
        assert cites(nsclc) == [(f"Condition/{rid}/_history/1", value)]
        assert deviations(api, sid) == [
            ("ineligible_enrolled", "enrolled on 2025-03-03 while ineligible on that day")
        ]


# -- 5. smoking history is cumulative ----------------------------------------------------------------

NEVER = kit.coded(kit.SNOMED, "266919005", "Never smoker")


def test_a_later_never_smoker_record_does_not_erase_a_smoking_history(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Ex-smoker on 2025-02-03, "never smoker" on 2025-02-20: a smoking history, citing both."""
    never = kit.smoking_status(id="e1-never", patient="e1", finding=NEVER, effective="2025-02-20")
    put_resources(fhir, STUDY, *subject("e1", "105-001", never))
    sid = subject_row(api, "105-001")["subject_id"]
    clean(api, sid)
    smoking = criterion(eligibility(api, sid), "never_smoker")
    assert (smoking["verdict"], smoking["reason"]) == (
        "not_met",
        "current or former smoker on 2025-02-03; a never-smoker record does not erase a smoking history",
    )
    assert cites(smoking) == [
        ("Observation/e1-smk/_history/1", "ever"),
        ("Observation/e1-never/_history/1", "never"),
    ]


# -- 6. a variant of uncertain significance (or benign) does not exclude ---------------------------

SIGNIFICANCE = kit.coded(kit.LOINC, "53037-8", "Genetic variation clinical significance [Imp]")
UNCERTAIN = kit.coded(kit.LOINC, "LA26333-7", "Uncertain significance")
BENIGN = kit.coded(kit.LOINC, "LA6675-8", "Benign")
PATHOGENIC = kit.coded(kit.LOINC, "LA6668-3", "Pathogenic")
LIKELY_PATHOGENIC = kit.coded(kit.LOINC, "LA26332-9", "Likely pathogenic")


def variant(
    rid: str, gene: dict[str, Any], significance: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """An mCODE genomic variant: present, with its clinical-significance component."""
    return kit.observation(
        id=rid,
        code=kit.GENETIC_VARIANT,
        effective="2025-02-14",
        component=[
            {"code": kit.GENE_STUDIED, "valueCodeableConcept": gene},
            {"code": SIGNIFICANCE, "valueCodeableConcept": significance},
        ],
        valueCodeableConcept=kit.PRESENT,
        **extra,
    )


def test_a_variant_of_uncertain_significance_does_not_exclude(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """EGFR VUS or ALK benign variant: unknown for that gene (indeterminate), never an exclusion."""
    put_resources(
        fhir,
        STUDY,
        *subject("f1", "106-001", variant("f1-egfr", kit.EGFR, UNCERTAIN, patient="f1")),
        *subject("f2", "106-002", variant("f2-alk", kit.ALK, BENIGN, patient="f2")),
    )
    expected = {
        "106-001": ("f1-egfr", "EGFR", "Uncertain significance"),
        "106-002": ("f2-alk", "ALK", "Benign"),
    }
    for number, (rid, gene, said) in expected.items():
        sid = subject_row(api, number)["subject_id"]
        body = eligibility(api, sid)
        assert (body["overall"], body["at_enrollment"]) == ("indeterminate", "indeterminate")
        assert body["counts"] == {"met": 4, "not_met": 4, "unknown": 1}
        driver = criterion(body, "driver")
        shown = f"{gene} variant: {said} (specimen not stated)"
        assert (driver["verdict"], driver["reason"], driver["missing"]) == (
            "unknown",
            f"{shown}, not an activating alteration",
            f"{gene} testing (tissue or ctDNA)",
        )
        assert cites(driver)[-1] == (f"Observation/{rid}/_history/1", shown)
        assert len(cites(driver)) == 3  # the two other genes' negative results, then the variant
        assert body["missing"] == [f"{gene} testing (tissue or ctDNA)"]
        assert deviations(api, sid) == []


# -- 12. the KM median where S(t) sits exactly at 0.5: R survival's midpoint ---------------------


def died_on_day(pid: str, number: str, days: int) -> Resources:
    """A clean subject who died `days` after Day 1."""
    resources = subject(pid, number)
    resources[0] = {
        **resources[0],
        "deceasedDateTime": (DAY1 + dt.timedelta(days=days)).isoformat(),
    }
    return resources


def followed_to_day(pid: str, number: str, days: int) -> Resources:
    """A clean subject last seen (a visit) `days` after Day 1, alive."""
    when = DAY1 + dt.timedelta(days=days)
    visit = kit.encounter(id=f"{pid}-visit", patient=pid, start=f"{when}T10:00:00-04:00")
    return subject(pid, number, visit)


def test_km_median_on_a_flat_half_is_the_midpoint(api: httpx.Client, fhir: httpx.Client) -> None:
    """Deaths on days 100, 200, 1000, 1300, censored 1400 and 1500: S = 1/2 on [1000, 1300) → 1150."""
    put_resources(
        fhir,
        STUDY,
        *died_on_day("g1", "112-001", 100),
        *died_on_day("g2", "112-002", 200),
        *died_on_day("g3", "112-003", 1000),
        *died_on_day("g4", "112-004", 1300),
        *followed_to_day("g5", "112-005", 1400),
        *followed_to_day("g6", "112-006", 1500),
    )
    # by hand: S = 5/6, 4/6, then 3/6 = 1/2 exactly from day 1000 until the death on day 1300
    assert Fraction(5, 6) * Fraction(4, 5) * Fraction(3, 4) == Fraction(1, 2)
    out = fresh_outcomes(api, NCT)["outcomes"]
    for endpoint in ("efs", "os"):
        km = out[endpoint]
        assert (km["n"], km["events"], km["censored"]) == (6, 4, 2)
        assert (km["median_days"], km["median_months"]) == (1150.0, round(1150 / (365.25 / 12), 2))


# -- pure known answers (the real mappers, then the evaluator or the cohort builder) ---------------

TERMS = build_terminology()
TRIAL = trial_protocol(TERMS)
CIRAE = cohort_protocol(TERMS)


def screened(
    *resources: dict[str, Any], as_of: dt.date = dt.date(2025, 3, 31)
) -> EligibilityResult:
    """Eligibility of one enrolled patient (2025-03-03, Day 1 2025-03-10) on mapped resources."""
    return evaluate(
        TRIAL, events_of(TERMS, resources), as_of=as_of, enrolled_on=ENROLLED, day1=DAY1
    )


def verdict(result: EligibilityResult, criterion_id: str) -> tuple[str, str]:
    """(verdict, reason) of one criterion."""
    (found,) = [c for c in result.criteria if c.criterion.id == criterion_id]
    return found.verdict, found.reason


M0 = kit.observation(
    id="m", code=kit.M_CLINICAL, effective="2025-02-12", valueCodeableConcept={"text": "cM0"}
)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        pytest.param(
            "Mediastinal lymph node metastases",
            ("not_met", "no distant metastasis (M0)"),
            id="nodal-by-name",
        ),
        pytest.param(
            kit.coded(kit.ICD10CM, "C77.1", text="Metastatic NSCLC, hilar nodes"),
            ("not_met", "no distant metastasis (M0)"),
            id="C77-code-with-a-metastatic-text",
        ),
        pytest.param(
            "Metastases to bone and mediastinal lymph nodes",
            ("met", "metastatic disease: Metastases to bone and mediastinal lymph nodes"),
            id="a-distant-site-named-too",
        ),
        pytest.param(
            kit.LUNG_METASTASIS,
            ("met", "metastatic disease: C78.01"),
            id="C78.01",
        ),
        pytest.param(
            kit.coded(kit.ICD10CM, "C79.51", "Secondary malignant neoplasm of bone"),
            ("met", "metastatic disease: C79.51"),
            id="C79.51",
        ),
    ],
)
def test_nodal_disease_is_not_metastatic(code: Any, expected: tuple[str, str]) -> None:
    """C77 and lymph-node wording are N disease; C78–C79 and a named distant site are metastases."""
    result = screened(M0, kit.condition(id="c", code=code, onset="2025-02-01"))
    assert verdict(result, "metastatic") == expected


def cirae_stage(*history: dict[str, Any]) -> str:
    """The cirAE cohort's stage covariate of one patient (pembrolizumab from 2021-03-01)."""
    resources = [
        kit.patient(id="p1", gender="female", birth_date="1960-03-01"),
        kit.medication_administration(
            id="p1-icb", medication="pembrolizumab 200 MG", effective="2021-03-01"
        ),
        *history,
    ]
    (built,) = build_cohort(CIRAE, [CohortPatient("p1", "S-1", events_of(TERMS, resources))])
    return built.stage


def test_cirae_stage_covariate_is_the_cancers() -> None:
    """Stage IIIA lung cancer, then a stage 4 pressure ulcer before ICB: the covariate is III."""
    lung = kit.condition(
        id="p1-lung",
        code=kit.coded(kit.ICD10CM, "C34.90", text="Lung adenocarcinoma"),
        onset="2020-11-15",
        stage=[{"summary": {"text": "Stage IIIA"}}],
    )
    ulcer = kit.condition(
        id="p1-ulcer",
        code=PRESSURE_ULCER,
        onset="2021-02-01",
        stage=[{"summary": {"text": "Stage 4"}}],
    )
    assert cirae_stage(lung) == "III"
    assert cirae_stage(lung, ulcer) == "III"
    assert cirae_stage(ulcer) == "unknown"


def t_observation(
    value: str, effective: str, code: dict[str, Any] = kit.T_CLINICAL
) -> dict[str, Any]:
    """A T category Observation."""
    return kit.observation(
        id=f"t-{effective}", code=code, effective=effective, valueCodeableConcept={"text": value}
    )


def test_stage_is_read_from_pre_treatment_staging() -> None:
    """Only non-y T categories known by enrollment count; a candidate's upfront pT counts."""
    ct2a = t_observation("cT2a", "2025-02-12")
    assert verdict(screened(ct2a), "stage") == ("met", "T2a is at least T1b")
    later_ct1a = t_observation("cT1a", "2025-03-05")  # after enrollment, before Day 1
    assert verdict(screened(ct2a, later_ct1a), "stage") == ("met", "T2a is at least T1b")
    assert verdict(screened(later_ct1a), "stage") == (
        "unknown",
        "no pre-treatment T category (post-treatment or later staging not counted: cT1a)",
    )
    yct0 = t_observation("ycT0", "2025-02-20")  # a post-therapy category, even before enrollment
    assert verdict(screened(ct2a, yct0), "stage") == ("met", "T2a is at least T1b")
    # not enrolled, no Day 1: a resection's pT1a is the staging there is (below T1b)
    upfront = t_observation("pT1a", "2025-02-20", kit.T_PATHOLOGICAL)
    candidate = evaluate(TRIAL, events_of(TERMS, [ct2a, upfront]), as_of=dt.date(2025, 3, 31))
    assert verdict(candidate, "stage") == ("not_met", "T1a is below T1b")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        pytest.param(SMALL_CELL, "not_met", id="small-cell-SNOMED"),
        pytest.param("Small cell lung carcinoma", "not_met", id="small-cell-text"),
        pytest.param("Oat cell carcinoma of right upper lobe", "not_met", id="oat-cell"),
        pytest.param("Non-small cell carcinoma of lung", "met", id="non-small-cell-text"),
        pytest.param("NSCLC", "met", id="NSCLC-abbreviation"),
        pytest.param(kit.LUNG_CANCER_C34_90, "unknown", id="C34-without-histology"),
    ],
)
def test_small_cell_is_told_from_non_small_cell(code: Any, expected: str) -> None:
    """'Small cell' inside 'non-small cell' is NSCLC; small cell alone is not; C34 alone is unknown."""
    result = screened(kit.condition(id="dx", code=code, onset="2025-01-20"))
    assert verdict(result, "nsclc")[0] == expected


def smoking(finding: Any, effective: str) -> dict[str, Any]:
    """A smoking-status Observation."""
    return kit.smoking_status(id=f"smk-{effective}", finding=finding, effective=effective)


UNKNOWN_IF_SMOKED = kit.coded(kit.SNOMED, "266927001", "Unknown if ever smoked")


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param([(NEVER, "2024-01-05")], "met", id="never-only"),
        pytest.param(
            [(NEVER, "2024-01-05"), (EX_SMOKER, "2025-02-03")], "not_met", id="never-then-ex"
        ),
        pytest.param(
            [(EX_SMOKER, "2024-01-05"), (NEVER, "2025-02-03")], "not_met", id="ex-then-never"
        ),
        pytest.param(
            [(EX_SMOKER, "2024-01-05"), (UNKNOWN_IF_SMOKED, "2025-02-03")],
            "not_met",
            id="ex-then-unknown",
        ),
        pytest.param(
            [(NEVER, "2024-01-05"), (UNKNOWN_IF_SMOKED, "2025-02-03")],
            "met",
            id="never-then-unknown",
        ),
        pytest.param([(UNKNOWN_IF_SMOKED, "2025-02-03")], "unknown", id="unknown-only"),
    ],
)
def test_smoking_history_is_cumulative(records: list[tuple[Any, str]], expected: str) -> None:
    """Any ex-smoker or smoker record is a history; only never-smoker records alone make a never smoker."""
    result = screened(*(smoking(finding, when) for finding, when in records))
    assert verdict(result, "never_smoker")[0] == expected


def egfr_absent() -> dict[str, Any]:
    """An EGFR result with no variant found."""
    return kit.genomic_variant(id="egfr-neg", gene=kit.EGFR, present=False, effective="2025-02-01")


NEGATIVE_ALK_ROS1 = [
    kit.genomic_variant(id=f"{g}-neg", gene=gene, present=False, effective="2025-02-01")
    for g, gene in (("alk", kit.ALK), ("ros1", kit.ROS1))
]


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        pytest.param([variant("v", kit.EGFR, PATHOGENIC)], "met", id="pathogenic"),
        pytest.param([variant("v", kit.EGFR, LIKELY_PATHOGENIC)], "met", id="likely-pathogenic"),
        pytest.param([variant("v", kit.EGFR, UNCERTAIN)], "unknown", id="uncertain"),
        pytest.param(
            [variant("v", kit.EGFR, kit.coded(kit.LOINC, "LA26334-5", "Likely benign"))],
            "unknown",
            id="likely-benign",
        ),
        pytest.param([variant("v", kit.EGFR, {"text": "VUS"})], "unknown", id="VUS-abbreviation"),
        pytest.param(
            [
                kit.observation(
                    id="v",
                    code="EGFR mutation analysis",
                    effective="2025-02-14",
                    valueString="EGFR p.V1010M, variant of uncertain significance",
                )
            ],
            "unknown",
            id="uncertain-in-the-value-text",
        ),
        # a negative EGFR test settles the gene; the VUS reported beside it is not activating
        pytest.param(
            [variant("v", kit.EGFR, UNCERTAIN), egfr_absent()], "not_met", id="VUS-and-negative"
        ),
    ],
)
def test_only_activating_variants_exclude(resources: list[dict[str, Any]], expected: str) -> None:
    """Pathogenic or likely pathogenic → met; uncertain, benign, likely benign → unknown, never met."""
    result = screened(*resources, *NEGATIVE_ALK_ROS1)
    assert verdict(result, "driver")[0] == expected


def exact_median(durations: Sequence[int], events: Sequence[bool]) -> float | None:
    """CLINICAL.md's KM median in exact arithmetic: the first t with S(t) <= 1/2; where S(t) = 1/2
    on a flat stretch, its midpoint (to the next drop, or to the last follow-up)."""
    times = sorted(set(durations))
    survival, curve = Fraction(1), []
    for t in times:
        at_risk = sum(d >= t for d in durations)
        deaths = sum(d == t and e for d, e in zip(durations, events, strict=True))
        survival *= 1 - Fraction(deaths, at_risk)
        curve.append((t, survival))
    reached = next(((t, s) for t, s in curve if s <= Fraction(1, 2)), None)
    if reached is None:
        return None
    if reached[1] < Fraction(1, 2):
        return float(reached[0])
    below = next((t for t, s in curve if s < Fraction(1, 2)), max(durations))
    return (reached[0] + below) / 2


@pytest.mark.parametrize(
    ("durations", "events", "median"),
    [
        pytest.param(
            [100, 200, 1000, 1300, 1400, 1500], [1, 1, 1, 1, 0, 0], 1150.0, id="5/6*4/5*3/4"
        ),
        pytest.param([500, 1000, 1300, 1400], [1, 1, 1, 0], 1150.0, id="exactly-half"),
        pytest.param(
            [100, 200, 300, 400], [1, 1, 0, 0], 300.0, id="ends-on-half: to last follow-up"
        ),
        pytest.param([100, 200, 300], [1, 1, 0], 200.0, id="below-half: the textbook time"),
        pytest.param([100, 200, 300, 400], [1, 0, 0, 0], None, id="never-half"),
    ],
)
def test_km_median_follows_r_survfit(
    durations: list[int], events: list[int], median: float | None
) -> None:
    """Hand-worked medians: a flat stretch at exactly 1/2 gives its midpoint (R survfit)."""
    flags = [bool(e) for e in events]
    assert exact_median(durations, flags) == median
    assert survival.kaplan_meier(durations, flags)["median_days"] == median


def test_km_median_agrees_with_exact_arithmetic_on_tied_data() -> None:
    """300 small cohorts with ties (flat halves are common): the service equals the exact median."""
    rng = random.Random(20261231)
    flats = 0
    for _ in range(300):
        n = rng.choice((2, 4, 6, 8, 10, 12))
        durations = [rng.randint(1, 12) * 10 for _ in range(n)]
        events = [rng.random() < 0.7 for _ in range(n)]
        want = exact_median(durations, events)
        flats += want is not None and want % 10 != 0
        assert survival.kaplan_meier(durations, events)["median_days"] == want, (durations, events)
    assert flats > 20  # the midpoint case was exercised


def test_survfit_median_reads_bands_with_nan() -> None:
    """An undefined band value (NaN) is skipped, as R's approx drops NA points."""
    nan = float("nan")
    assert survival.survfit_median([0, 10, 20, 30], [1.0, nan, 0.5, 0.2]) == 25.0
    assert survival.survfit_median([0, 10], [1.0, nan]) is None
