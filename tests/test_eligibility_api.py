"""Eligibility over real HTTP: a hand-checked cohort on the screening list, as-of reads, errors."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import httpx

from tests.kit import fhir as kit
from tests.kit import nct
from tests.kit.client import get_json, put_resources
from tests.kit.clock import FROZEN_DATE
from tests.kit.nct import (
    CANDIDATE,
    ENROLLED,
    NCT,
    criterion,
    eligibility,
    prednisone,
    problem,
    subject_id,
)

STUDY = kit.research_study(title="Neoadjuvant dupilumab + cemiplimab in resectable NSCLC")

Resources = dict[str, dict[str, Any]]


# -- FHIR, one patient at a time (every resource id starts with the patient id) ---------------------

EPIC_MRN = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"


def candidate(pid: str) -> dict[str, Any]:
    """A screening candidate's Patient, MRN{PID} in the hospital's MRN system."""
    return kit.patient(id=pid, mrn_system=EPIC_MRN, mrn=f"MRN{pid.upper()}", **CANDIDATE)


def charted(pid: str, rid: str, code: dict[str, Any], on: str) -> dict[str, Any]:
    """A problem-list Condition with onset `on`, recorded the same day."""
    return problem(id=f"{pid}-{rid}", patient=pid, code=code, onset=on, recorded=on)


def before_enrollment(days: int) -> str:
    """08:15 in New York, `days` days before the enrollment day (a morning dose)."""
    return f"{(ENROLLED - dt.timedelta(days=days)).isoformat()}T08:15:00-05:00"


def enrollment(pid: str, number: str) -> Resources:
    """A ResearchSubject (enrolled 2025-03-03) and the Day-1 study drugs on 2025-03-10."""
    resources: list[dict[str, Any]] = [
        kit.research_subject(id=f"{pid}-rs", patient=pid, number=number, start=ENROLLED)
    ]
    for key, drug, mg, at in (
        ("dupi-a", "dupilumab 300 MG/2ML Prefilled Syringe", 300, "09:00"),
        ("dupi-b", "dupilumab 300 MG/2ML Prefilled Syringe", 300, "09:04"),
        ("cemi", "Libtayo 350 MG/7ML Injection", 350, "10:00"),
    ):
        resources.append(
            kit.medication_administration(
                id=f"{pid}-{key}",
                patient=pid,
                medication=drug,
                effective=f"2025-03-10T{at}:00-05:00",
                dose=kit.quantity(mg, "mg"),
            )
        )
    return {r["id"]: r for r in resources}


C34_90 = kit.LUNG_CANCER_C34_90
PLASMA = {"display": "Plasma cell-free DNA"}


def work_up(pid: str) -> Resources:
    """A complete screening work-up settling every criterion in the patient's favour (eligible):
    the Conditions recorded on their onset day, prednisone 9 weeks before enrollment."""
    return nct.work_up(
        pid,
        patient={"mrn_system": EPIC_MRN, "mrn": f"MRN{pid.upper()}", **CANDIDATE},
        recorded=True,
        history=[prednisone(pid, before_enrollment(63))],
    )


def cohort() -> Resources:
    """Twelve screening candidates and one non-candidate, each a variation of the work-up."""
    out: Resources = {"rs-nct": STUDY}
    # e1: the full work-up, enrolled
    out |= work_up("e1") | enrollment("e1", "001-001")
    # e2: NSCLC by histology name, T3 coded, resection in preparation, biopsy ordered, stage IIIA,
    # one NGS panel negative for all three genes, only a topical steroid, current smoker
    e2 = work_up("e2")
    adenocarcinoma = kit.coded(
        kit.ICD10CM,
        "C34.11",
        "Malignant neoplasm of upper lobe, right bronchus or lung",
        text="Adenocarcinoma of lung",
    )
    e2["e2-dx"] = charted("e2", "dx", adenocarcinoma, "2025-01-20")
    e2["e2-t"]["valueCodeableConcept"] = kit.coded(kit.AJCC, "cT3", "cT3")
    e2["e2-sr"] = kit.procedure(
        id="e2-sr",
        patient="e2",
        code=kit.PARTIAL_LOBECTOMY,
        status="preparation",
        performed="2025-03-28",
    )
    e2["e2-bx"] = kit.service_request(
        id="e2-bx",
        patient="e2",
        code=kit.LUNG_BIOPSY,
        authored="2025-02-18",
        occurrence="2025-02-24",
    )
    e2["e2-m"] = kit.observation(
        id="e2-m",
        patient="e2",
        code=kit.STAGE_CLINICAL,
        effective="2025-02-12",
        valueCodeableConcept=kit.coded(kit.AJCC, "3A", "Stage 3A"),
    )
    for gene in ("egfr", "alk", "ros1"):
        del e2[f"e2-{gene}"]
    e2["e2-ngs"] = kit.observation(
        id="e2-ngs",
        patient="e2",
        code={"text": "NSCLC NGS panel (EGFR, ALK, ROS1)"},
        effective="2025-02-14",
        valueCodeableConcept={"text": "Negative"},
    )
    e2["e2-pred"] = kit.medication_request(
        id="e2-pred",
        patient="e2",
        medication=kit.coded(kit.RXNORM, "106258", "hydrocortisone 1 % Topical Cream"),
        authored="2025-02-10",
    )
    e2["e2-smk"] = kit.smoking_status(
        id="e2-smk",
        patient="e2",
        finding=kit.coded(kit.SNOMED, "77176002", "Smoker"),
        effective="2025-02-03",
    )
    out |= e2
    # i1: rheumatoid arthritis
    out |= work_up("i1")
    out["i1-ra"] = charted("i1", "ra", kit.RHEUMATOID_ARTHRITIS, "2019-06-01")
    # i2: cT1a
    out |= work_up("i2")
    out["i2-t"]["valueCodeableConcept"] = {"text": "cT1a"}
    # i3: EGFR positive in ctDNA
    out |= work_up("i3")
    out["i3-egfr"] = kit.genomic_variant(
        id="i3-egfr",
        patient="i3",
        gene=kit.EGFR,
        present=True,
        effective="2025-02-14",
        specimen=PLASMA,
    )
    # i4: never smoker
    out |= work_up("i4")
    out["i4-smk"] = kit.smoking_status(
        id="i4-smk",
        patient="i4",
        finding=kit.coded(kit.SNOMED, "266919005", "Never smoker"),
        effective="2025-02-03",
    )
    # i5: NSCLC and a bone metastasis, nothing else
    out |= {
        "i5": candidate("i5"),
        "i5-dx": charted("i5", "dx", kit.NSCLC, "2025-01-20"),
        "i5-met": charted("i5", "met", kit.LUNG_METASTASIS, "2025-01-20"),
    }
    # i6: prednisone 7 weeks before enrollment, enrolled
    out |= work_up("i6") | enrollment("i6", "001-006")
    out["i6-pred"] = prednisone("i6", before_enrollment(49))
    # n1: C34.90 without histology, nothing else
    out |= {
        "n1": candidate("n1"),
        "n1-dx": charted("n1", "dx", C34_90, "2025-01-20"),
    }
    # n2: no smoking status
    n2 = work_up("n2")
    del n2["n2-smk"]
    out |= n2
    # n3: only EGFR tested
    n3 = work_up("n3")
    del n3["n3-alk"], n3["n3-ros1"]
    out |= n3
    # r1: a ResearchSubject and Day-1 doses, no clinical data: a candidate by enrollment alone
    out |= {"r1": candidate("r1")} | enrollment("r1", "001-011")
    # x1: no lung cancer and no ResearchSubject: not a candidate
    out |= {
        "x1": candidate("x1"),
        "x1-htn": charted("x1", "htn", kit.HYPERTENSION, "2025-01-20"),
        "x1-smk": kit.smoking_status(
            id="x1-smk",
            patient="x1",
            finding=kit.coded(kit.SNOMED, "266919005", "Never smoker"),
            effective="2025-02-03",
        ),
    }
    return out


@dataclass(frozen=True)
class Expected:
    """A candidate's hand-worked result."""

    overall: str
    met: int
    not_met: int
    unknown: int
    at_enrollment: str | None = None


# Worked out by hand from CLINICAL.md (inclusions 1–4, exclusions 5–9), as of today.
EXPECTED: dict[str, Expected] = {
    "e1": Expected("eligible", 4, 5, 0, "eligible"),
    "e2": Expected("eligible", 4, 5, 0),
    "i1": Expected("ineligible", 5, 4, 0),  # autoimmune met
    "i2": Expected("ineligible", 3, 6, 0),  # stage not met
    "i3": Expected("ineligible", 5, 4, 0),  # driver met
    "i4": Expected("ineligible", 5, 4, 0),  # never smoker met
    "i5": Expected("ineligible", 2, 1, 6),  # nsclc + metastatic met; autoimmune not met
    "i6": Expected("ineligible", 5, 4, 0, "ineligible"),  # immunomodulator met
    "n1": Expected("indeterminate", 0, 1, 8),  # only autoimmune settled (not met)
    "n2": Expected("indeterminate", 4, 4, 1),  # smoking unknown
    "n3": Expected("indeterminate", 4, 4, 1),  # ALK/ROS1 unknown
    "r1": Expected("indeterminate", 0, 1, 8, "indeterminate"),  # study drugs are medication records
}
SUBJECT_NUMBERS = {"e1": "001-001", "i6": "001-006", "r1": "001-011"}


# -- HTTP helpers ------------------------------------------------------------------------------------


def screening(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    """Every candidate of the screening list, following the cursor."""
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = get_json(api, f"/studies/{NCT}/eligibility", **query)
        rows += page["candidates"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


def evidence_patients(body: dict[str, Any]) -> set[str]:
    """The patients whose resources are cited as evidence (resource ids start with the patient id)."""
    return {e["id"].split("-")[0] for c in body["criteria"] for e in c["evidence"]}


def rows(found: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """A criterion's evidence as (type, id, version, reference, value)."""
    return [
        (e["resource_type"], e["id"], e["version"], e["reference"], e["value"])
        for e in found["evidence"]
    ]


def identify(api: httpx.Client, candidates: list[dict[str, Any]]) -> dict[str, str]:
    """Patient id → subject id, by cited evidence and, for enrolled patients, by subject number."""
    by_number = {pid: subject_id(api, n) for pid, n in SUBJECT_NUMBERS.items()}
    found: dict[str, str] = {}
    for row in candidates:
        cited = evidence_patients(eligibility(api, row["subject_id"]))
        numbered = {pid for pid, sid in by_number.items() if sid == row["subject_id"]}
        assert len(cited | numbered) == 1, (row, cited, numbered)
        (pid,) = cited | numbered
        found[pid] = row["subject_id"]
    return found


# -- the cohort --------------------------------------------------------------------------------------


def test_screening_list_matches_the_hand_worked_cohort(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Every candidate's stored overall status, verdict counts and enrollment-day status are as worked out by hand."""
    put_resources(fhir, *cohort().values())
    candidates = screening(api)
    ids = identify(api, candidates)
    assert sorted(ids) == sorted(EXPECTED)  # x1 (no lung cancer, not enrolled) is not screened
    assert [c["subject_id"] for c in candidates] == sorted(ids.values())
    by_subject = {c["subject_id"]: c for c in candidates}
    got = {
        pid: Expected(
            by_subject[sid]["overall"],
            by_subject[sid]["counts"]["met"],
            by_subject[sid]["counts"]["not_met"],
            by_subject[sid]["counts"]["unknown"],
            by_subject[sid]["at_enrollment"],
        )
        for pid, sid in ids.items()
    }
    assert got == EXPECTED
    assert {c["as_of"] for c in candidates} == {FROZEN_DATE.isoformat()}  # the server's UTC day
    for pid, sid in ids.items():
        body = eligibility(api, sid)
        want = EXPECTED[pid]
        assert (body["subject_id"], body["overall"], body["at_enrollment"]) == (
            sid,
            want.overall,
            want.at_enrollment,
        )
        assert body["counts"] == {"met": want.met, "not_met": want.not_met, "unknown": want.unknown}
        assert [c["number"] for c in body["criteria"]] == list(range(1, 10))


def test_screening_list_filters_by_status_and_pages(api: httpx.Client, fhir: httpx.Client) -> None:
    """Staff list only the eligible (or ineligible, indeterminate) candidates, a page at a time."""
    put_resources(fhir, *cohort().values())
    ids = identify(api, screening(api))
    for status in ("eligible", "ineligible", "indeterminate"):
        listed = [c["subject_id"] for c in screening(api, status=status)]
        want = sorted(ids[pid] for pid, e in EXPECTED.items() if e.overall == status)
        assert listed == want
        assert {c["overall"] for c in screening(api, status=status, limit=2)} == {status}
    pages = []
    cursor: str | None = None
    while True:
        page = get_json(
            api, f"/studies/{NCT}/eligibility", limit=5, **({"cursor": cursor} if cursor else {})
        )
        pages.append([c["subject_id"] for c in page["candidates"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [s for p in pages for s in p] == sorted(ids.values())
    ineligible = get_json(api, f"/studies/{NCT}/eligibility", status="ineligible", limit=4)
    assert len(ineligible["candidates"]) == 4
    rest = get_json(
        api,
        f"/studies/{NCT}/eligibility",
        status="ineligible",
        limit=4,
        cursor=ineligible["next_cursor"],
    )
    assert len(rest["candidates"]) == 2
    assert rest["next_cursor"] is None
    response = api.get(f"/studies/{NCT}/eligibility", params={"status": "maybe"})
    assert response.status_code == 422
    response = api.get(f"/studies/{NCT}/eligibility", params={"cursor": "!!!"})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_cursor")


# -- as of a day, and corrections --------------------------------------------------------------------

EGFR_MAY = "Observation/m1-egfr-may/_history/1"
NEGATIVES = [
    (
        "Observation",
        "m1-alk",
        "1",
        "Observation/m1-alk/_history/1",
        "ALK negative (specimen not stated)",
    ),
    (
        "Observation",
        "m1-egfr",
        "1",
        "Observation/m1-egfr/_history/1",
        "EGFR negative (specimen not stated)",
    ),
    (
        "Observation",
        "m1-ros1",
        "1",
        "Observation/m1-ros1/_history/1",
        "ROS1 negative (specimen not stated)",
    ),
]


def test_as_of_reads_and_corrections(api: httpx.Client, fhir: httpx.Client) -> None:
    """Eligible in March, ineligible in May (EGFR+ in May); entered-in-error on that result restores eligibility on the next read."""
    m1 = work_up("m1") | enrollment("m1", "002-001")
    egfr_may = kit.genomic_variant(
        id="m1-egfr-may",
        patient="m1",
        gene=kit.EGFR,
        present=True,
        effective="2025-05-12",
        specimen=PLASMA,
    )
    m1[egfr_may["id"]] = egfr_may
    put_resources(fhir, *({"rs-nct": STUDY} | m1).values())
    sid = subject_id(api, "002-001")

    march = eligibility(api, sid, as_of="2025-03-31")
    assert (march["as_of"], march["overall"], march["at_enrollment"]) == (
        "2025-03-31",
        "eligible",
        "eligible",
    )
    assert march["missing"] == []
    assert criterion(march, "driver")["verdict"] == "not_met"
    assert sorted(rows(criterion(march, "driver"))) == NEGATIVES

    may = eligibility(api, sid, as_of="2025-05-31")
    assert (may["as_of"], may["overall"], may["at_enrollment"]) == (
        "2025-05-31",
        "ineligible",
        "eligible",
    )
    driver = criterion(may, "driver")
    assert (driver["verdict"], driver["reason"], driver["missing"]) == (
        "met",
        "driver alteration: EGFR positive (ctDNA)",
        None,
    )
    assert rows(driver) == [("Observation", "m1-egfr-may", "1", EGFR_MAY, "EGFR positive (ctDNA)")]
    zoned = eligibility(api, sid, as_of="2025-05-31T23:30:00-04:00")
    assert (zoned["as_of"], zoned["overall"]) == ("2025-05-31", "ineligible")

    stored = eligibility(api, sid)
    assert stored["as_of"] == FROZEN_DATE.isoformat()
    assert (stored["overall"], stored["at_enrollment"]) == ("ineligible", "eligible")
    assert rows(criterion(stored, "driver")) == [
        ("Observation", "m1-egfr-may", "1", EGFR_MAY, "EGFR positive (ctDNA)")
    ]

    egfr_may["status"] = "entered-in-error"
    response = fhir.put("/Observation/m1-egfr-may", content=json.dumps(egfr_may))
    assert response.status_code == 200, response.text
    corrected = eligibility(api, sid)
    assert (corrected["overall"], corrected["at_enrollment"]) == ("eligible", "eligible")
    assert corrected["counts"] == {"met": 4, "not_met": 5, "unknown": 0}
    assert criterion(corrected, "driver")["verdict"] == "not_met"
    assert sorted(rows(criterion(corrected, "driver"))) == NEGATIVES
    assert [(c["subject_id"], c["overall"]) for c in screening(api)] == [(sid, "eligible")]
    assert eligibility(api, sid, as_of="2025-05-31")["overall"] == "eligible"


def test_metastasis_found_in_may(api: httpx.Client, fhir: httpx.Client) -> None:
    """A bone metastasis with onset in May leaves the March answer eligible and makes May's ineligible."""
    m2 = work_up("m2")
    m2["m2-met"] = charted("m2", "met", kit.BONE_METASTASIS, "2025-05-20")
    put_resources(fhir, *m2.values())
    (row,) = screening(api)
    sid = row["subject_id"]
    assert (row["overall"], row["at_enrollment"]) == ("ineligible", None)
    march = eligibility(api, sid, as_of="2025-03-31")
    assert (march["overall"], march["at_enrollment"]) == ("eligible", None)
    metastatic = criterion(march, "metastatic")
    assert (metastatic["verdict"], metastatic["reason"]) == (
        "not_met",
        "no distant metastasis (M0)",
    )
    assert rows(metastatic) == [("Observation", "m2-m", "1", "Observation/m2-m/_history/1", "M0")]
    may = criterion(eligibility(api, sid, as_of="2025-05-31"), "metastatic")
    assert (may["verdict"], may["reason"]) == ("met", "metastatic disease: C79.51")
    assert rows(may) == [("Condition", "m2-met", "1", "Condition/m2-met/_history/1", "C79.51")]


def test_at_enrollment_is_the_status_on_the_enrollment_day(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """An enrolled patient whose biopsy and surgery order came after enrollment was indeterminate that day."""
    late = work_up("l1") | enrollment("l1", "003-001")
    late["l1-bx"]["performedDateTime"] = "2025-03-05"
    late["l1-sr"]["authoredOn"] = "2025-03-06"
    put_resources(fhir, *({"rs-nct": STUDY} | late).values())
    sid = subject_id(api, "003-001")
    stored = eligibility(api, sid)
    assert (stored["overall"], stored["at_enrollment"]) == ("eligible", "indeterminate")
    on_the_day = eligibility(api, sid, as_of=ENROLLED.isoformat())
    assert (on_the_day["overall"], on_the_day["at_enrollment"]) == (
        "indeterminate",
        "indeterminate",
    )
    assert on_the_day["missing"] == [
        "a planned lung resection (ServiceRequest or Procedure)",
        "a planned screening biopsy",
    ]
    assert [(c["subject_id"], c["overall"], c["at_enrollment"]) for c in screening(api)] == [
        (sid, "eligible", "indeterminate")
    ]


# -- errors ------------------------------------------------------------------------------------------


def test_eligibility_errors_have_the_documented_codes(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Bad as_of is 400 invalid_as_of, a cohort study has no eligibility (404 not_applicable), unknown subject 404."""
    put_resources(
        fhir,
        *(
            {
                "n1": candidate("n1"),
                "n1-dx": charted("n1", "dx", C34_90, "2025-01-20"),
            }
        ).values(),
    )
    (row,) = screening(api)
    path = f"/studies/{NCT}/subjects/{row['subject_id']}/eligibility"
    for bad in ("2025-13-01", "2025-03-31T10:00:00", "2025-03", "yesterday"):
        response = api.get(path, params={"as_of": bad})
        assert response.status_code == 400, bad
        body = response.json()
        assert set(body) == {"error"}
        assert (body["error"]["status"], body["error"]["code"]) == (400, "invalid_as_of")
    for cohort_path in (
        "/studies/cirae-dupilumab/eligibility",
        f"/studies/cirae-dupilumab/subjects/{row['subject_id']}/eligibility",
    ):
        response = api.get(cohort_path)
        assert (response.status_code, response.json()["error"]["code"]) == (404, "not_applicable")
    response = api.get(f"/studies/{NCT}/subjects/S-NOSUCHSUBJECT/eligibility")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "subject_not_found")
    response = api.get(
        f"/studies/{NCT}/subjects/S-NOSUCHSUBJECT/eligibility", params={"as_of": "2025-03-31"}
    )
    assert (response.status_code, response.json()["error"]["code"]) == (404, "subject_not_found")
    response = api.get("/studies/NCT00000000/eligibility")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "study_not_found")
