"""Eligibility over real HTTP: a hand-checked cohort on the screening list, as-of reads, errors."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.helpers import bundle, entry
from tests.kit.clock import FROZEN_DATE

NCT = "NCT06088771"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
HGNC = "http://www.genenames.org/geneId"
AJCC = "http://cancerstaging.org"
UCUM = "http://unitsofmeasure.org"
HL7 = "http://terminology.hl7.org/CodeSystem"

ENROLLED = dt.date(2025, 3, 3)
STUDY = {
    "resourceType": "ResearchStudy",
    "id": "rs-nct",
    "status": "active",
    "identifier": [{"system": "https://clinicaltrials.gov", "value": NCT}],
    "title": "Neoadjuvant dupilumab + cemiplimab in resectable NSCLC",
}

Resources = dict[str, dict[str, Any]]


@pytest.fixture
def api(server: LiveServer, fhir: httpx.Client) -> Iterator[httpx.Client]:
    """A client on /api/v1 of an empty store (the `fhir` fixture empties it)."""
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=60) as client:
        yield client


# -- FHIR builders, one patient at a time (every resource id starts with the patient id) ------------


def coded(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    """A CodeableConcept with one coding and an optional text."""
    concept: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text is not None:
        concept["text"] = text
    return concept


def patient(pid: str) -> dict[str, Any]:
    """A Patient with an MRN."""
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [
            {
                "system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14",
                "value": f"MRN{pid.upper()}",
            }
        ],
        "gender": "female",
        "birthDate": "1958-11-30",
    }


def condition(
    pid: str, key: str, code: dict[str, Any], onset: str = "2025-01-20"
) -> dict[str, Any]:
    """A confirmed problem-list Condition."""
    return {
        "resourceType": "Condition",
        "id": f"{pid}-{key}",
        "clinicalStatus": {"coding": [{"system": f"{HL7}/condition-clinical", "code": "active"}]},
        "verificationStatus": {
            "coding": [{"system": f"{HL7}/condition-ver-status", "code": "confirmed"}]
        },
        "category": [
            {"coding": [{"system": f"{HL7}/condition-category", "code": "problem-list-item"}]}
        ],
        "code": code,
        "subject": {"reference": f"Patient/{pid}"},
        "onsetDateTime": onset,
        "recordedDate": onset,
    }


def observation(
    pid: str, key: str, code: dict[str, Any], when: str = "2025-02-12", **value: Any
) -> dict[str, Any]:
    """A final Observation with the given value element(s)."""
    return {
        "resourceType": "Observation",
        "id": f"{pid}-{key}",
        "status": "final",
        "code": code,
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        **value,
    }


def variant(
    pid: str, key: str, hgnc: str, gene: str, present: bool, when: str = "2025-02-14", **extra: Any
) -> dict[str, Any]:
    """An mCODE genomic variant Observation (69548-6 with a gene-studied component)."""
    answer = coded(LOINC, "LA9633-4", "Present") if present else coded(LOINC, "LA9634-2", "Absent")
    return observation(
        pid,
        key,
        coded(LOINC, "69548-6", "Genetic variant assessment"),
        when,
        component=[
            {
                "code": coded(LOINC, "48018-6", "Gene studied [ID]"),
                "valueCodeableConcept": coded(HGNC, hgnc, gene),
            }
        ],
        valueCodeableConcept=answer,
        **extra,
    )


def smoking(pid: str, code: str, display: str) -> dict[str, Any]:
    """A US Core smoking-status Observation."""
    return observation(
        pid,
        "smk",
        coded(LOINC, "72166-2", "Tobacco smoking status"),
        "2025-02-03",
        valueCodeableConcept=coded(SNOMED, code, display),
    )


def prednisone(pid: str, days_before_enrollment: int) -> dict[str, Any]:
    """Prednisone by mouth, given the given number of days before 2025-03-03."""
    when = ENROLLED - dt.timedelta(days=days_before_enrollment)
    return {
        "resourceType": "MedicationAdministration",
        "id": f"{pid}-pred",
        "status": "completed",
        "medicationCodeableConcept": coded(RXNORM, "312617", "predniSONE 20 MG Oral Tablet"),
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"{when.isoformat()}T08:15:00-05:00",
        "dosage": {
            "route": coded(SNOMED, "26643006", "Oral route"),
            "dose": {"value": 40, "unit": "mg", "system": UCUM, "code": "mg"},
        },
    }


def enrollment(pid: str, number: str) -> Resources:
    """A ResearchSubject (enrolled 2025-03-03) and the Day-1 study drugs on 2025-03-10."""
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "ResearchSubject",
            "id": f"{pid}-rs",
            "status": "on-study",
            "identifier": [{"system": "urn:study:nct06088771:subject", "value": number}],
            "period": {"start": ENROLLED.isoformat()},
            "study": {"reference": "ResearchStudy/rs-nct"},
            "individual": {"reference": f"Patient/{pid}"},
        }
    ]
    for key, drug, mg, at in (
        ("dupi-a", "dupilumab 300 MG/2ML Prefilled Syringe", 300, "09:00"),
        ("dupi-b", "dupilumab 300 MG/2ML Prefilled Syringe", 300, "09:04"),
        ("cemi", "Libtayo 350 MG/7ML Injection", 350, "10:00"),
    ):
        resources.append(
            {
                "resourceType": "MedicationAdministration",
                "id": f"{pid}-{key}",
                "status": "completed",
                "medicationCodeableConcept": {"text": drug},
                "subject": {"reference": f"Patient/{pid}"},
                "effectiveDateTime": f"2025-03-10T{at}:00-05:00",
                "dosage": {"dose": {"value": mg, "unit": "mg", "system": UCUM, "code": "mg"}},
            }
        )
    return {r["id"]: r for r in resources}


NSCLC = coded(SNOMED, "254637007", "Non-small cell lung cancer")
C34_90 = coded(
    ICD10CM, "C34.90", "Malignant neoplasm of unspecified part of unspecified bronchus or lung"
)
PLASMA = {"display": "Plasma cell-free DNA"}


def work_up(pid: str) -> Resources:
    """A complete screening work-up settling every criterion in the patient's favour (eligible)."""
    resources = [
        patient(pid),
        condition(pid, "dx", NSCLC),
        condition(
            pid, "htn", coded(ICD10CM, "I10", "Essential (primary) hypertension"), "2016-02-02"
        ),
        observation(
            pid,
            "t",
            coded(LOINC, "21905-5", "Primary tumor.clinical [Class] Cancer"),
            valueCodeableConcept={"text": "cT2a"},
        ),
        observation(
            pid,
            "m",
            coded(LOINC, "21907-1", "Distant metastases.clinical [Class] Cancer"),
            valueCodeableConcept=coded(AJCC, "cM0", "cM0"),
        ),
        {
            "resourceType": "ServiceRequest",
            "id": f"{pid}-sr",
            "status": "active",
            "intent": "order",
            "code": coded(SNOMED, "173171007", "Lobectomy of lung", "VATS right upper lobectomy"),
            "subject": {"reference": f"Patient/{pid}"},
            "authoredOn": "2025-02-25",
            "occurrenceDateTime": "2025-03-25",
        },
        {
            "resourceType": "Procedure",
            "id": f"{pid}-bx",
            "status": "completed",
            "code": {"text": "CT-guided core needle biopsy, right upper lobe of lung"},
            "subject": {"reference": f"Patient/{pid}"},
            "performedDateTime": "2025-02-20",
        },
        variant(pid, "egfr", "HGNC:3236", "EGFR", False),
        variant(pid, "alk", "HGNC:427", "ALK", False),
        variant(pid, "ros1", "HGNC:10261", "ROS1", False),
        prednisone(pid, 63),
        smoking(pid, "8517006", "Former smoker (finding)"),
    ]
    return {r["id"]: r for r in resources}


def cohort() -> Resources:
    """Twelve screening candidates and one non-candidate, each a variation of the work-up."""
    out: Resources = {"rs-nct": STUDY}
    # e1: the full work-up, enrolled
    out |= work_up("e1") | enrollment("e1", "001-001")
    # e2: NSCLC by histology name, T3 coded, resection in preparation, biopsy ordered, stage IIIA,
    # one NGS panel negative for all three genes, only a topical steroid, current smoker
    e2 = work_up("e2")
    e2["e2-dx"] = condition(
        "e2",
        "dx",
        coded(
            ICD10CM,
            "C34.11",
            "Malignant neoplasm of upper lobe, right bronchus or lung",
            "Adenocarcinoma of lung",
        ),
    )
    e2["e2-t"]["valueCodeableConcept"] = coded(AJCC, "cT3", "cT3")
    e2["e2-sr"] = {
        "resourceType": "Procedure",
        "id": "e2-sr",
        "status": "preparation",
        "code": coded(SNOMED, "359615001", "Partial lobectomy of lung"),
        "subject": {"reference": "Patient/e2"},
        "performedDateTime": "2025-03-28",
    }
    e2["e2-bx"] = {
        "resourceType": "ServiceRequest",
        "id": "e2-bx",
        "status": "active",
        "intent": "order",
        "code": coded(SNOMED, "78603008", "Biopsy of lung"),
        "subject": {"reference": "Patient/e2"},
        "authoredOn": "2025-02-18",
        "occurrenceDateTime": "2025-02-24",
    }
    e2["e2-m"] = observation(
        "e2",
        "m",
        coded(LOINC, "21908-9", "Stage group.clinical Cancer"),
        valueCodeableConcept=coded(AJCC, "3A", "Stage 3A"),
    )
    for gene in ("egfr", "alk", "ros1"):
        del e2[f"e2-{gene}"]
    e2["e2-ngs"] = observation(
        "e2",
        "ngs",
        {"text": "NSCLC NGS panel (EGFR, ALK, ROS1)"},
        "2025-02-14",
        valueCodeableConcept={"text": "Negative"},
    )
    e2["e2-pred"] = {
        "resourceType": "MedicationRequest",
        "id": "e2-pred",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": coded(RXNORM, "106258", "hydrocortisone 1 % Topical Cream"),
        "subject": {"reference": "Patient/e2"},
        "authoredOn": "2025-02-10",
    }
    e2["e2-smk"] = smoking("e2", "77176002", "Smoker")
    out |= e2
    # i1: rheumatoid arthritis
    out |= work_up("i1")
    out["i1-ra"] = condition(
        "i1",
        "ra",
        coded(
            ICD10CM,
            "M05.79",
            "Rheumatoid arthritis with rheumatoid factor of multiple sites without organ or systems involvement",
        ),
        "2019-06-01",
    )
    # i2: cT1a
    out |= work_up("i2")
    out["i2-t"]["valueCodeableConcept"] = {"text": "cT1a"}
    # i3: EGFR positive in ctDNA
    out |= work_up("i3")
    out["i3-egfr"] = variant("i3", "egfr", "HGNC:3236", "EGFR", True, specimen=PLASMA)
    # i4: never smoker
    out |= work_up("i4")
    out["i4-smk"] = smoking("i4", "266919005", "Never smoker")
    # i5: NSCLC and a bone metastasis, nothing else
    out |= {
        "i5": patient("i5"),
        "i5-dx": condition("i5", "dx", NSCLC),
        "i5-met": condition(
            "i5", "met", coded(ICD10CM, "C78.01", "Secondary malignant neoplasm of right lung")
        ),
    }
    # i6: prednisone 7 weeks before enrollment, enrolled
    out |= work_up("i6") | enrollment("i6", "001-006")
    out["i6-pred"] = prednisone("i6", 49)
    # n1: C34.90 without histology, nothing else
    out |= {"n1": patient("n1"), "n1-dx": condition("n1", "dx", C34_90)}
    # n2: no smoking status
    n2 = work_up("n2")
    del n2["n2-smk"]
    out |= n2
    # n3: only EGFR tested
    n3 = work_up("n3")
    del n3["n3-alk"], n3["n3-ros1"]
    out |= n3
    # r1: a ResearchSubject and Day-1 doses, no clinical data: a candidate by enrollment alone
    out |= {"r1": patient("r1")} | enrollment("r1", "001-011")
    # x1: no lung cancer and no ResearchSubject: not a candidate
    out |= {
        "x1": patient("x1"),
        "x1-htn": condition("x1", "htn", coded(ICD10CM, "I10", "Essential (primary) hypertension")),
        "x1-smk": smoking("x1", "266919005", "Never smoker"),
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


def put_all(fhir: httpx.Client, resources: Resources) -> None:
    """PUT every resource in one transaction Bundle."""
    body = bundle(
        "transaction",
        *(entry(r, "PUT", f"{r['resourceType']}/{r['id']}") for r in resources.values()),
    )
    response = fhir.post("", content=body)
    assert response.status_code == 200, response.text


def get_json(api: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    """A 200 JSON body."""
    response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


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


def eligibility(api: httpx.Client, subject_id: str, **params: Any) -> dict[str, Any]:
    """One candidate's eligibility (stored, or as of a day)."""
    return get_json(api, f"/studies/{NCT}/subjects/{subject_id}/eligibility", **params)


def evidence_patients(body: dict[str, Any]) -> set[str]:
    """The patients whose resources are cited as evidence (resource ids start with the patient id)."""
    return {e["id"].split("-")[0] for c in body["criteria"] for e in c["evidence"]}


def criterion(body: dict[str, Any], criterion_id: str) -> dict[str, Any]:
    """One criterion of a subject's eligibility."""
    found: list[dict[str, Any]] = [c for c in body["criteria"] if c["id"] == criterion_id]
    assert len(found) == 1
    return found[0]


def rows(found: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """A criterion's evidence as (type, id, version, reference, value)."""
    return [
        (e["resource_type"], e["id"], e["version"], e["reference"], e["value"])
        for e in found["evidence"]
    ]


def subject_by_number(api: httpx.Client, number: str) -> str:
    """The pseudonymous subject id of a study subject number."""
    subjects = get_json(api, f"/studies/{NCT}/subjects", subject_number=number)["subjects"]
    assert len(subjects) == 1
    subject_id: str = subjects[0]["subject_id"]
    return subject_id


def identify(api: httpx.Client, candidates: list[dict[str, Any]]) -> dict[str, str]:
    """Patient id → subject id, by cited evidence and, for enrolled patients, by subject number."""
    by_number = {pid: subject_by_number(api, n) for pid, n in SUBJECT_NUMBERS.items()}
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
    put_all(fhir, cohort())
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
    put_all(fhir, cohort())
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
    egfr_may = variant("m1", "egfr-may", "HGNC:3236", "EGFR", True, "2025-05-12", specimen=PLASMA)
    m1[egfr_may["id"]] = egfr_may
    put_all(fhir, {"rs-nct": STUDY} | m1)
    sid = subject_by_number(api, "002-001")

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
    m2["m2-met"] = condition(
        "m2", "met", coded(ICD10CM, "C79.51", "Secondary malignant neoplasm of bone"), "2025-05-20"
    )
    put_all(fhir, m2)
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
    put_all(fhir, {"rs-nct": STUDY} | late)
    sid = subject_by_number(api, "003-001")
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
    put_all(fhir, {"n1": patient("n1"), "n1-dx": condition("n1", "dx", C34_90)})
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
