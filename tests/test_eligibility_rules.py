"""Known answers for the NCT06088771 eligibility criteria, on events the real mappers derive."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from fhir_mapping.events.context import MappingContext, MemoryLookup
from fhir_mapping.events.model import SourceRef, TrialEvent
from fhir_mapping.events.registry import map_resource
from service.protocol.terminology import build_terminology
from service.studies.interventional.eligibility import (
    CriterionResult,
    EligibilityResult,
    Verdict,
    evaluate,
)
from service.studies.interventional.membership import trial_membership
from service.studies.interventional.protocol import TrialProtocol
from service.studies.registry import load_protocols

TERMINOLOGY = build_terminology()
_LOADED = load_protocols(TERMINOLOGY)["NCT06088771"]
assert isinstance(_LOADED, TrialProtocol)
PROTOCOL: TrialProtocol = _LOADED

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
HGNC = "http://www.genenames.org/geneId"
AJCC = "http://cancerstaging.org"
UCUM = "http://unitsofmeasure.org"
HL7 = "http://terminology.hl7.org/CodeSystem"

AS_OF = dt.date(2025, 3, 31)
ENROLLED = dt.date(2025, 3, 3)
DAY1 = dt.date(2025, 3, 10)
SUBJECT = {"reference": "Patient/p1", "display": "Alvarez, Maria"}

EvidenceRow = tuple[str, str, str, str]  # resource type, id, version, deciding value


# -- FHIR builders (shaped like hospital feeds: codes with displays, texts, statuses, dates) ------


def coded(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    """A CodeableConcept with one coding and an optional text."""
    concept: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text is not None:
        concept["text"] = text
    return concept


def condition(
    cid: str,
    code: dict[str, Any],
    onset: str = "2025-01-20",
    clinical: str = "active",
    **extra: Any,
) -> dict[str, Any]:
    """A confirmed problem-list Condition of p1."""
    return {
        "resourceType": "Condition",
        "id": cid,
        "meta": {"lastUpdated": f"{onset}T10:00:00Z"},
        "clinicalStatus": {"coding": [{"system": f"{HL7}/condition-clinical", "code": clinical}]},
        "verificationStatus": {
            "coding": [{"system": f"{HL7}/condition-ver-status", "code": "confirmed"}]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": f"{HL7}/condition-category",
                        "code": "problem-list-item",
                        "display": "Problem List Item",
                    }
                ]
            }
        ],
        "code": code,
        "subject": SUBJECT,
        "onsetDateTime": onset,
        "recordedDate": onset,
        **extra,
    }


def observation(
    oid: str, code: dict[str, Any], when: str = "2025-02-12", **value: Any
) -> dict[str, Any]:
    """A final laboratory/survey Observation of p1 with the given value element(s)."""
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": code,
        "subject": SUBJECT,
        "effectiveDateTime": when,
        "issued": f"{when}T16:42:00-05:00",
        **value,
    }


def t_category(
    oid: str, text: str, when: str = "2025-02-12", *, loinc: str = "21905-5"
) -> dict[str, Any]:
    """A TNM primary-tumour Observation whose category is written as text (cT1a, ypT2a …)."""
    display = (
        "Primary tumor.clinical [Class] Cancer"
        if loinc == "21905-5"
        else "Primary tumor.pathology [Class] Cancer"
    )
    return observation(oid, coded(LOINC, loinc, display), when, valueCodeableConcept={"text": text})


def m_category(oid: str, ajcc: str, when: str = "2025-02-12") -> dict[str, Any]:
    """A clinical M category Observation coded with its AJCC code (cM0, cM1a …)."""
    return observation(
        oid,
        coded(LOINC, "21907-1", "Distant metastases.clinical [Class] Cancer"),
        when,
        valueCodeableConcept=coded(AJCC, ajcc, ajcc),
    )


def stage_group(oid: str, ajcc: str, display: str, when: str = "2025-02-12") -> dict[str, Any]:
    """A clinical stage group Observation (AJCC code, e.g. 4 / Stage 4)."""
    return observation(
        oid,
        coded(LOINC, "21908-9", "Stage group.clinical Cancer"),
        when,
        valueCodeableConcept=coded(AJCC, ajcc, display),
    )


def variant(
    oid: str,
    hgnc: str,
    gene: str,
    present: bool,
    when: str = "2025-02-14",
    specimen: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An mCODE genomic variant Observation: 69548-6 with a gene-studied component."""
    answer = coded(LOINC, "LA9633-4", "Present") if present else coded(LOINC, "LA9634-2", "Absent")
    resource = observation(
        oid,
        coded(LOINC, "69548-6", "Genetic variant assessment"),
        when,
        component=[
            {
                "code": coded(LOINC, "48018-6", "Gene studied [ID]"),
                "valueCodeableConcept": coded(HGNC, hgnc, gene),
            }
        ],
        valueCodeableConcept=answer,
    )
    if specimen is not None:
        resource["specimen"] = specimen
    return resource


def egfr(oid: str, present: bool, when: str = "2025-02-14", **kw: Any) -> dict[str, Any]:
    """EGFR variant assessment."""
    return variant(oid, "HGNC:3236", "EGFR", present, when, **kw)


def alk(oid: str, present: bool, when: str = "2025-02-14") -> dict[str, Any]:
    """ALK rearrangement by FISH (LOINC 78205-2) on the tumour block."""
    answer = coded(LOINC, "LA9633-4", "Present") if present else coded(LOINC, "LA9634-2", "Absent")
    return observation(
        oid,
        coded(
            LOINC,
            "78205-2",
            "ALK gene rearrangements [Presence] in Blood or Tissue by FISH Nominal",
        ),
        when,
        specimen={"reference": "Specimen/p1-block"},
        valueCodeableConcept=answer,
    )


def ros1(oid: str, result: str, when: str = "2025-02-14") -> dict[str, Any]:
    """ROS1 named only in the local test name (no LOINC code is verified for it)."""
    return observation(
        oid,
        {
            "coding": [{"system": "urn:oid:1.2.840.114350.1", "code": "LAB8841"}],
            "text": "ROS1 gene rearrangement, FISH",
        },
        when,
        valueString=result,
    )


TUMOUR_BLOCK = {
    "resourceType": "Specimen",
    "id": "p1-block",
    "type": {"text": "Lung tissue, core biopsy (FFPE block)"},
    "subject": SUBJECT,
    "collection": {"collectedDateTime": "2025-02-20"},
}


def smoking(oid: str, code: str, display: str, when: str = "2025-02-03") -> dict[str, Any]:
    """A US Core smoking-status Observation (LOINC 72166-2)."""
    resource = observation(
        oid,
        coded(LOINC, "72166-2", "Tobacco smoking status"),
        when,
        valueCodeableConcept=coded(SNOMED, code, display),
    )
    resource["category"] = [
        {"coding": [{"system": f"{HL7}/observation-category", "code": "social-history"}]}
    ]
    return resource


def procedure(prid: str, code: dict[str, Any], status: str, when: str) -> dict[str, Any]:
    """A Procedure of p1."""
    return {
        "resourceType": "Procedure",
        "id": prid,
        "status": status,
        "code": code,
        "subject": SUBJECT,
        "performedDateTime": when,
    }


def service_request(
    srid: str, code: dict[str, Any], authored: str, occurrence: str, status: str = "active"
) -> dict[str, Any]:
    """An order for a procedure, authored on one day for another."""
    return {
        "resourceType": "ServiceRequest",
        "id": srid,
        "status": status,
        "intent": "order",
        "code": code,
        "subject": SUBJECT,
        "authoredOn": authored,
        "occurrenceDateTime": occurrence,
        "requester": {"display": "Dr. Chen, Thoracic Surgery"},
    }


LOBECTOMY = coded(SNOMED, "173171007", "Lobectomy of lung", "VATS right upper lobectomy")
PARTIAL_LOBECTOMY = coded(SNOMED, "359615001", "Partial lobectomy of lung")
CORE_BIOPSY = {"text": "CT-guided core needle biopsy, right upper lobe of lung"}
LUNG_BIOPSY = coded(SNOMED, "78603008", "Biopsy of lung")
ORAL = coded(SNOMED, "26643006", "Oral route")


def administration(
    mid: str, code: str, display: str, when: str, route: dict[str, Any] = ORAL
) -> dict[str, Any]:
    """A completed MedicationAdministration of p1 (RxNorm clinical-drug code)."""
    return {
        "resourceType": "MedicationAdministration",
        "id": mid,
        "status": "completed",
        "medicationCodeableConcept": coded(RXNORM, code, display),
        "subject": SUBJECT,
        "effectiveDateTime": when,
        "dosage": {
            "route": route,
            "dose": {"value": 40, "unit": "mg", "system": UCUM, "code": "mg"},
        },
    }


def prednisone(mid: str, days_before: int, reference: dt.date = ENROLLED) -> dict[str, Any]:
    """Prednisone 40 mg by mouth given `days_before` days before the reference day."""
    when = (reference - dt.timedelta(days=days_before)).isoformat()
    return administration(mid, "312617", "predniSONE 20 MG Oral Tablet", f"{when}T08:15:00-05:00")


def medication_request(
    mid: str, display: str, code: str, start: str, end: str | None, status: str = "completed"
) -> dict[str, Any]:
    """An outpatient order with a dosing period."""
    bounds = {"start": start, **({"end": end} if end else {})}
    return {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": coded(RXNORM, code, display, display),
        "subject": SUBJECT,
        "authoredOn": start,
        "dosageInstruction": [
            {"text": "apply twice daily", "timing": {"repeat": {"boundsPeriod": bounds}}}
        ],
    }


STUDY = {
    "resourceType": "ResearchStudy",
    "id": "rs-nct",
    "status": "active",
    "identifier": [{"system": "https://clinicaltrials.gov", "value": "NCT06088771"}],
}


def research_subject(start: str | None) -> dict[str, Any]:
    """p1 on study NCT06088771, with or without an enrollment date."""
    resource: dict[str, Any] = {
        "resourceType": "ResearchSubject",
        "id": "p1-rs",
        "status": "on-study",
        "identifier": [{"system": "urn:study:nct06088771:subject", "value": "001-007"}],
        "study": {"reference": "ResearchStudy/rs-nct"},
        "individual": SUBJECT,
    }
    if start is not None:
        resource["period"] = {"start": start}
    return resource


def study_dose(mid: str, display: str, mg: int, when: str) -> dict[str, Any]:
    """A study-drug administration (defines Day 1)."""
    dose = administration(
        mid, "999999", display, when, coded(SNOMED, "34206005", "Subcutaneous route")
    )
    dose["dosage"]["dose"]["value"] = mg
    return dose


# -- running the real mappers and the evaluator ----------------------------------------------------


def events_of(*resources: dict[str, Any]) -> list[TrialEvent]:
    """Every event the registered mappers derive from these resources (version from meta, else 1)."""
    ctx = MappingContext(TERMINOLOGY, MemoryLookup(list(resources)))
    out: list[TrialEvent] = []
    for r in resources:
        version = int(r.get("meta", {}).get("versionId", 1))
        out += map_resource(
            r["resourceType"], r, SourceRef(r["resourceType"], r["id"], version), ctx
        )
    return out


def screen(
    *resources: dict[str, Any],
    as_of: dt.date = AS_OF,
    enrolled_on: dt.date | None = ENROLLED,
    day1: dt.date | None = None,
    protocol: TrialProtocol = PROTOCOL,
) -> EligibilityResult:
    """The evaluator's result on the mapped resources."""
    return evaluate(
        protocol, events_of(*resources), as_of=as_of, enrolled_on=enrolled_on, day1=day1
    )


def criterion(result: EligibilityResult, criterion_id: str) -> CriterionResult:
    """One criterion's result by id."""
    (found,) = [c for c in result.criteria if c.criterion.id == criterion_id]
    return found


def evidence(result: CriterionResult) -> list[EvidenceRow]:
    """The evidence as (type, id, version, value) on the wire."""
    rows = [e.to_json() for e in result.evidence]
    for row in rows:
        assert row["reference"] == f"{row['resource_type']}/{row['id']}/_history/{row['version']}"
    return [(r["resource_type"], r["id"], r["version"], r["value"]) for r in rows]


@dataclass(frozen=True)
class Case:
    """One known answer: resources in, verdict/reason/evidence/missing out."""

    resources: Sequence[dict[str, Any]]
    verdict: Verdict
    reason: str
    evidence: Sequence[EvidenceRow] = ()
    missing: str | None = None


def check(criterion_id: str, case: Case, **kw: Any) -> None:
    """Evaluate and compare one criterion exactly."""
    got = criterion(screen(*case.resources, **kw), criterion_id)
    assert (got.verdict, got.reason, evidence(got), got.missing) == (
        case.verdict,
        case.reason,
        list(case.evidence),
        case.missing,
    )


# -- 1. NSCLC ----------------------------------------------------------------------------------------

C34_90 = coded(
    ICD10CM, "C34.90", "Malignant neoplasm of unspecified part of unspecified bronchus or lung"
)
NSCLC_SCT = coded(SNOMED, "254637007", "Non-small cell lung cancer")
HYPERTENSION = coded(ICD10CM, "I10", "Essential (primary) hypertension")

NSCLC_CASES = [
    pytest.param(
        Case(
            [condition("dx", C34_90)],
            "unknown",
            "lung cancer recorded without a histology (e.g. ICD-10 C34)",
            [("Condition", "dx", "1", "C34.90")],
            "histology of the lung cancer (NSCLC or a NSCLC histology)",
        ),
        id="icd10-C34.90-without-histology",
    ),
    pytest.param(
        Case(
            [condition("dx", NSCLC_SCT)],
            "met",
            "NSCLC recorded on 2025-01-20",
            [("Condition", "dx", "1", "254637007")],
        ),
        id="snomed-254637007",
    ),
    pytest.param(
        Case(
            [
                condition(
                    "dx",
                    coded(
                        ICD10CM,
                        "C34.11",
                        "Malignant neoplasm of upper lobe, right bronchus or lung",
                        "Adenocarcinoma of lung",
                    ),
                )
            ],
            "met",
            "NSCLC recorded on 2025-01-20",
            [("Condition", "dx", "1", "Adenocarcinoma of lung")],
        ),
        id="histology-by-name",
    ),
    pytest.param(
        Case(
            [condition("htn", HYPERTENSION)],
            "unknown",
            "no lung cancer diagnosis recorded",
            [],
            "a lung cancer diagnosis with its histology",
        ),
        id="no-lung-cancer",
    ),
    pytest.param(
        Case(
            [
                condition(
                    "dx",
                    NSCLC_SCT,
                    verificationStatus={
                        "coding": [{"system": f"{HL7}/condition-ver-status", "code": "refuted"}]
                    },
                )
            ],
            "unknown",
            "no lung cancer diagnosis recorded",
            [],
            "a lung cancer diagnosis with its histology",
        ),
        id="refuted-nsclc-is-no-diagnosis",
    ),
]


@pytest.mark.parametrize("case", NSCLC_CASES)
def test_nsclc_diagnosis(case: Case) -> None:
    """Inclusion 1: NSCLC by SNOMED code or histology name; ICD-10 C34 alone is the protocol's choice."""
    check("nsclc", case)


def test_nsclc_choice_is_a_protocol_setting() -> None:
    """Setting lung_cancer_without_histology to not_met turns C34.90 alone into not met (no code change)."""
    strict = PROTOCOL.eligibility[0].model_copy(update={"lung_cancer_without_histology": "not_met"})
    protocol = PROTOCOL.model_copy(update={"eligibility": (strict, *PROTOCOL.eligibility[1:])})
    check(
        "nsclc",
        Case(
            [condition("dx", C34_90)],
            "not_met",
            "lung cancer recorded without a histology (e.g. ICD-10 C34)",
            [("Condition", "dx", "1", "C34.90")],
            None,
        ),
        protocol=protocol,
    )


# -- 2. T category -----------------------------------------------------------------------------------

STAGE_CASES = [
    pytest.param(
        Case(
            [t_category("t", "cT1a")],
            "not_met",
            "T1a is below T1b",
            [("Observation", "t", "1", "cT1a")],
        ),
        id="cT1a",
    ),
    pytest.param(
        Case(
            [t_category("t", "T1b")],
            "met",
            "T1b is at least T1b",
            [("Observation", "t", "1", "T1b")],
        ),
        id="T1b",
    ),
    pytest.param(
        Case(
            [t_category("t", "ypT2a", loinc="21899-0")],
            "met",
            "T2a is at least T1b",
            [("Observation", "t", "1", "ypT2a")],
        ),
        id="ypT2a",
    ),
    pytest.param(
        Case(
            [t_category("t", "TX")],
            "unknown",
            "primary tumour cannot be assessed (TX)",
            [("Observation", "t", "1", "TX")],
            "an assessable T category",
        ),
        id="TX",
    ),
    pytest.param(
        Case(
            [t_category("t", "T0")],
            "not_met",
            "no evidence of primary tumour (T0)",
            [("Observation", "t", "1", "T0")],
        ),
        id="T0",
    ),
    pytest.param(
        Case([], "unknown", "no primary tumour (T) category recorded", [], "clinical T category"),
        id="no-T",
    ),
    pytest.param(
        Case(
            [t_category("t", "cT2")],
            "met",
            "T2 is at least T1b",
            [("Observation", "t", "1", "cT2")],
        ),
        id="cT2-without-subcategory-is-above-T1b",
    ),
    pytest.param(
        Case(
            [t_category("t", "cT1")],
            "unknown",
            "T1 without its subcategory may be below T1b",
            [("Observation", "t", "1", "cT1")],
            "the T subcategory (T1mi/T1a/T1b/T1c)",
        ),
        id="cT1-without-subcategory-is-unknown",
    ),
    pytest.param(
        Case(
            [t_category("t", "see pathology report")],
            "unknown",
            "T category 'see pathology report' could not be read",
            [("Observation", "t", "1", "see pathology report")],
            "a readable T category",
        ),
        id="unreadable",
    ),
    pytest.param(
        Case(
            [
                t_category("t-jan", "cT1a", "2025-01-22"),
                t_category("t-feb", "cT2a", "2025-02-12"),
            ],
            "met",
            "T2a is at least T1b",
            [("Observation", "t-feb", "1", "cT2a")],
        ),
        id="latest-restaging-wins",
    ),
]


@pytest.mark.parametrize("case", STAGE_CASES)
def test_t_category_at_least_t1b(case: Case) -> None:
    """Inclusion 2: the latest T category read from code or text, ordered Tis < … < T4."""
    check("stage", case)


# -- 3. resectable -----------------------------------------------------------------------------------

RESECTABLE_CASES = [
    pytest.param(
        Case(
            [service_request("sr", LOBECTOMY, "2025-02-25", "2025-03-25")],
            "met",
            "lung resection planned or performed on 2025-03-25",
            [("ServiceRequest", "sr", "1", "ServiceRequest active")],
        ),
        id="service-request",
    ),
    pytest.param(
        Case(
            [procedure("pr", PARTIAL_LOBECTOMY, "preparation", "2025-03-25")],
            "met",
            "lung resection planned or performed on 2025-03-25",
            [("Procedure", "pr", "1", "Procedure preparation")],
        ),
        id="procedure-in-preparation",
    ),
    pytest.param(
        Case(
            [],
            "unknown",
            "no planned or performed lung resection",
            [],
            "a planned lung resection (ServiceRequest or Procedure)",
        ),
        id="nothing",
    ),
    pytest.param(
        Case(
            [
                service_request("sr", LOBECTOMY, "2025-02-25", "2025-03-25", status="revoked"),
                procedure("pr", PARTIAL_LOBECTOMY, "stopped", "2025-03-25"),
            ],
            "unknown",
            "no planned or performed lung resection",
            [],
            "a planned lung resection (ServiceRequest or Procedure)",
        ),
        id="revoked-order-and-stopped-procedure",
    ),
]


@pytest.mark.parametrize("case", RESECTABLE_CASES)
def test_resection_planned(case: Case) -> None:
    """Inclusion 3: a lung-resection order or a Procedure in preparation/in progress/done; never not met."""
    check("resectable", case)


# -- 4. biopsy ---------------------------------------------------------------------------------------

BIOPSY_CASES = [
    pytest.param(
        Case(
            [procedure("bx", CORE_BIOPSY, "completed", "2025-02-20")],
            "met",
            "biopsy planned or done on 2025-02-20",
            [("Procedure", "bx", "1", "Procedure completed")],
        ),
        id="done",
    ),
    pytest.param(
        Case(
            [service_request("bxo", LUNG_BIOPSY, "2025-03-01", "2025-03-06")],
            "met",
            "biopsy planned or done on 2025-03-06",
            [("ServiceRequest", "bxo", "1", "ServiceRequest active")],
        ),
        id="planned",
    ),
    pytest.param(
        Case([], "unknown", "no biopsy planned or done", [], "a planned screening biopsy"),
        id="none",
    ),
    pytest.param(
        Case(
            [procedure("bx", CORE_BIOPSY, "not-done", "2025-02-20")],
            "unknown",
            "no biopsy planned or done",
            [],
            "a planned screening biopsy",
        ),
        id="not-done",
    ),
]


@pytest.mark.parametrize("case", BIOPSY_CASES)
def test_screening_biopsy(case: Case) -> None:
    """Inclusion 4: a biopsy planned or done is met; otherwise unknown (never not met)."""
    check("biopsy", case)


# -- 5. autoimmune -----------------------------------------------------------------------------------

RA = coded(
    ICD10CM,
    "M05.79",
    "Rheumatoid arthritis with rheumatoid factor of multiple sites without organ or systems involvement",
)
PSORIASIS = coded(ICD10CM, "L40.0", "Psoriasis vulgaris")
T1DM = coded(ICD10CM, "E10.9", "Type 1 diabetes mellitus without complications")
T2DM = coded(ICD10CM, "E11.9", "Type 2 diabetes mellitus without complications")

AUTOIMMUNE_CASES = [
    pytest.param(
        Case(
            [condition("dx", NSCLC_SCT), condition("ai", RA, "2019-06-01")],
            "met",
            "M05.79 recorded on 2019-06-01",
            [("Condition", "ai", "1", "M05.79")],
        ),
        id="M05.79",
    ),
    pytest.param(
        Case(
            [condition("ai", PSORIASIS, "2012-04-11", clinical="inactive")],
            "met",
            "L40.0 recorded on 2012-04-11",
            [("Condition", "ai", "1", "L40.0")],
        ),
        id="L40.0-history",
    ),
    pytest.param(
        Case(
            [condition("ai", T1DM, "1998-09-30")],
            "met",
            "E10.9 recorded on 1998-09-30",
            [("Condition", "ai", "1", "E10.9")],
        ),
        id="E10.9",
    ),
    pytest.param(
        Case(
            [
                condition("dx", NSCLC_SCT),
                condition("htn", HYPERTENSION, "2016-02-02"),
                condition("dm", T2DM, "2018-07-07"),
                condition(
                    "fh",
                    coded(
                        ICD10CM,
                        "Z82.61",
                        "Family history of arthritis",
                        "Family history of rheumatoid arthritis",
                    ),
                    "2020-01-01",
                ),
            ],
            "not_met",
            "none of 4 recorded conditions is in autoimmune_disease",
        ),
        id="none-among-recorded",
    ),
    pytest.param(
        Case(
            [], "unknown", "no conditions recorded", [], "the patient's problem list (conditions)"
        ),
        id="no-conditions",
    ),
]


@pytest.mark.parametrize("case", AUTOIMMUNE_CASES)
def test_autoimmune_history(case: Case) -> None:
    """Exclusion 5: any active or past condition in the autoimmune value set (ICD-10-CM prefixes)."""
    check("autoimmune", case)


# -- 6. metastatic disease ---------------------------------------------------------------------------

C78_01 = coded(ICD10CM, "C78.01", "Secondary malignant neoplasm of right lung")

METASTATIC_CASES = [
    pytest.param(
        Case(
            [m_category("m", "cM1a")],
            "met",
            "metastatic disease: M1a",
            [("Observation", "m", "1", "M1a")],
        ),
        id="cM1a",
    ),
    pytest.param(
        Case(
            [condition("dx", NSCLC_SCT), condition("met", C78_01, "2025-02-18")],
            "met",
            "metastatic disease: C78.01",
            [("Condition", "met", "1", "C78.01")],
        ),
        id="C78.01-condition",
    ),
    pytest.param(
        Case(
            [m_category("m", "cM0")],
            "not_met",
            "no distant metastasis (M0)",
            [("Observation", "m", "1", "M0")],
        ),
        id="cM0",
    ),
    pytest.param(
        Case(
            [stage_group("sg", "4", "Stage 4")],
            "met",
            "metastatic disease: IV",
            [("Observation", "sg", "1", "IV")],
        ),
        id="stage-group-IV",
    ),
    pytest.param(
        Case(
            [stage_group("sg", "3A", "Stage 3A")],
            "not_met",
            "stage group IIIA",
            [("Observation", "sg", "1", "IIIA")],
        ),
        id="stage-group-IIIA",
    ),
    pytest.param(
        Case(
            [condition("dx", NSCLC_SCT, stage=[{"summary": coded(AJCC, "4A", "Stage 4A")}])],
            "met",
            "metastatic disease: stage IVA",
            [("Condition", "dx", "1", "stage IVA")],
        ),
        id="condition-stage-summary-IVA",
    ),
    pytest.param(
        Case(
            [
                condition(
                    "dx",
                    NSCLC_SCT,
                    stage=[{"summary": {"text": "Stage IIIA, 4 cm mass, 4/12 nodes"}}],
                )
            ],
            "unknown",
            "no M category or stage group recorded",
            [],
            "M category or stage group",
        ),
        id="condition-stage-IIIA-with-numbers-is-not-stage-IV",
    ),
    pytest.param(
        Case(
            [], "unknown", "no M category or stage group recorded", [], "M category or stage group"
        ),
        id="nothing",
    ),
]


@pytest.mark.parametrize("case", METASTATIC_CASES)
def test_metastatic_disease(case: Case) -> None:
    """Exclusion 6: M1 category, secondary malignancy (C77–C79) or stage IV; M0 or a lower group rule it out."""
    check("metastatic", case)


# -- 7. driver alterations ---------------------------------------------------------------------------

PLASMA = {"display": "Plasma cell-free DNA (Guardant360 CDx)"}

DRIVER_CASES = [
    pytest.param(
        Case(
            [egfr("egfr", True, specimen=PLASMA)],
            "met",
            "driver alteration: EGFR positive (ctDNA)",
            [("Observation", "egfr", "1", "EGFR positive (ctDNA)")],
        ),
        id="EGFR-positive-ctDNA",
    ),
    pytest.param(
        Case(
            [TUMOUR_BLOCK, alk("alk", True)],
            "met",
            "driver alteration: ALK positive (tissue)",
            [("Observation", "alk", "1", "ALK positive (tissue)")],
        ),
        id="ALK-FISH-78205-2-positive",
    ),
    pytest.param(
        Case(
            [ros1("ros1", "Positive: ROS1 rearrangement detected (CD74-ROS1)")],
            "met",
            "driver alteration: ROS1 positive (specimen not stated)",
            [("Observation", "ros1", "1", "ROS1 positive (specimen not stated)")],
        ),
        id="ROS1-by-gene-name",
    ),
    pytest.param(
        Case(
            [egfr("egfr", False), TUMOUR_BLOCK, alk("alk", False), ros1("ros1", "Negative")],
            "not_met",
            "no driver alteration: EGFR negative, ALK negative, ROS1 negative",
            [
                ("Observation", "egfr", "1", "EGFR negative (specimen not stated)"),
                ("Observation", "alk", "1", "ALK negative (tissue)"),
                ("Observation", "ros1", "1", "ROS1 negative (specimen not stated)"),
            ],
        ),
        id="all-three-negative",
    ),
    pytest.param(
        Case(
            [egfr("egfr", False)],
            "unknown",
            "no result for ALK, ROS1",
            [("Observation", "egfr", "1", "EGFR negative (specimen not stated)")],
            "ALK/ROS1 testing (tissue or ctDNA)",
        ),
        id="only-EGFR-negative",
    ),
    pytest.param(
        Case(
            [
                egfr("egfr-tissue", False),
                egfr("egfr-plasma", True, "2025-02-27", specimen=PLASMA),
                TUMOUR_BLOCK,
                alk("alk", False),
            ],
            "met",
            "driver alteration: EGFR positive (ctDNA)",
            [("Observation", "egfr-plasma", "1", "EGFR positive (ctDNA)")],
        ),
        id="tissue-negative-ctDNA-positive",
    ),
    pytest.param(
        Case(
            [
                observation(
                    "gfr",
                    coded(
                        LOINC,
                        "33914-3",
                        "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum or Plasma by Creatinine-based formula (MDRD)",
                        "eGFR",
                    ),
                    valueQuantity={
                        "value": 52,
                        "unit": "mL/min/{1.73_m2}",
                        "system": UCUM,
                        "code": "mL/min/{1.73_m2}",
                    },
                    interpretation=[coded(f"{HL7}/v3-ObservationInterpretation", "L", "Low")],
                )
            ],
            "unknown",
            "no result for EGFR, ALK, ROS1",
            [],
            "EGFR/ALK/ROS1 testing (tissue or ctDNA)",
        ),
        id="kidney-eGFR-is-not-the-gene",
    ),
]


@pytest.mark.parametrize("case", DRIVER_CASES)
def test_driver_alteration(case: Case) -> None:
    """Exclusion 7: a positive EGFR/ALK/ROS1 result in tissue or ctDNA; not met only when all three are negative."""
    check("driver", case)


# -- 8. immunomodulators before enrollment ------------------------------------------------------------

NO_IMMUNOMODULATOR = "no listed drug in the 56 days before 2025-03-03"
METFORMIN = administration(
    "met", "861007", "metFORMIN 500 MG Oral Tablet", "2025-02-27T08:00:00-05:00"
)

MEDICATION_CASES = [
    pytest.param(
        Case([prednisone("pred", 63)], "not_met", NO_IMMUNOMODULATOR),
        id="prednisone-9-weeks-before",
    ),
    pytest.param(
        Case(
            [prednisone("pred", 49)],
            "met",
            "predniSONE 20 MG Oral Tablet 49 days before the reference day 2025-03-03",
            [
                (
                    "MedicationAdministration",
                    "pred",
                    "1",
                    "predniSONE 20 MG Oral Tablet 49 days before",
                )
            ],
        ),
        id="prednisone-7-weeks-before",
    ),
    pytest.param(
        Case(
            [prednisone("pred", 56)],
            "met",
            "predniSONE 20 MG Oral Tablet 56 days before the reference day 2025-03-03",
            [
                (
                    "MedicationAdministration",
                    "pred",
                    "1",
                    "predniSONE 20 MG Oral Tablet 56 days before",
                )
            ],
        ),
        id="exactly-56-days",
    ),
    pytest.param(
        Case([prednisone("pred", 57)], "not_met", NO_IMMUNOMODULATOR),
        id="57-days",
    ),
    pytest.param(
        Case(
            [
                medication_request(
                    "cream",
                    "hydrocortisone 1 % Topical Cream",
                    "106258",
                    "2025-02-10",
                    "2025-02-24",
                )
            ],
            "not_met",
            NO_IMMUNOMODULATOR,
        ),
        id="topical-steroid-cream-is-not-systemic",
    ),
    pytest.param(
        Case(
            [
                medication_request(
                    "mtx", "methotrexate 2.5 MG Oral Tablet", "105586", "2024-10-01", "2025-01-15"
                )
            ],
            "met",
            "methotrexate 2.5 MG Oral Tablet 153 days before the reference day 2025-03-03",
            [("MedicationRequest", "mtx", "1", "methotrexate 2.5 MG Oral Tablet 153 days before")],
        ),
        id="course-started-long-before-ended-inside-window",
    ),
    pytest.param(
        Case([METFORMIN], "not_met", NO_IMMUNOMODULATOR),
        id="only-unrelated-drugs",
    ),
    pytest.param(
        Case(
            [],
            "unknown",
            "no medication records",
            [],
            "medication history (orders, administrations, statements)",
        ),
        id="no-medication-records",
    ),
]


@pytest.mark.parametrize("case", MEDICATION_CASES)
def test_immunomodulator_within_8_weeks(case: Case) -> None:
    """Exclusion 8: systemic steroid/immunosuppressant/biologic in the 56 days before enrollment (inclusive)."""
    check("immunomodulators", case)


STUDY_DOSES = (
    study_dose("d1a", "dupilumab 300 MG/2ML Prefilled Syringe", 300, "2025-03-10T09:00:00-05:00"),
    study_dose("d1b", "dupilumab 300 MG/2ML Prefilled Syringe", 300, "2025-03-10T09:04:00-05:00"),
    study_dose("d1c", "Libtayo 350 MG/7ML Injection", 350, "2025-03-10T10:00:00-05:00"),
)


@pytest.mark.parametrize(
    ("start", "reference", "verdict", "reason", "rows"),
    [
        pytest.param(
            "2025-03-03",
            (ENROLLED, DAY1),
            "met",
            "predniSONE 20 MG Oral Tablet 52 days before the reference day 2025-03-03",
            [
                (
                    "MedicationAdministration",
                    "pred",
                    "1",
                    "predniSONE 20 MG Oral Tablet 52 days before",
                )
            ],
            id="research-subject-period-start",
        ),
        pytest.param(
            None,
            (None, DAY1),
            "not_met",
            "no listed drug in the 56 days before 2025-03-10",
            [],
            id="day1-when-no-period",
        ),
    ],
)
def test_reference_day_is_enrollment_else_day1(
    start: str | None,
    reference: tuple[dt.date | None, dt.date],
    verdict: Verdict,
    reason: str,
    rows: list[EvidenceRow],
) -> None:
    """Prednisone 52 days before ResearchSubject.period.start counts; without that date Day 1 (59 days) is used."""
    pred = administration("pred", "312617", "predniSONE 20 MG Oral Tablet", "2025-01-10")
    events = events_of(STUDY, research_subject(start), *STUDY_DOSES, pred)
    facts = trial_membership(PROTOCOL, events)
    assert facts is not None
    assert (facts.enrolled_on, facts.day1) == reference
    result = evaluate(PROTOCOL, events, as_of=AS_OF, enrolled_on=facts.enrolled_on, day1=facts.day1)
    got = criterion(result, "immunomodulators")
    assert (got.verdict, got.reason, evidence(got)) == (verdict, reason, rows)


def test_reference_day_is_as_of_before_enrollment() -> None:
    """Screening before enrollment counts back from the as-of day, since enrollment has not happened yet."""
    result = screen(prednisone("pred", 60), as_of=dt.date(2025, 1, 20), enrolled_on=ENROLLED)
    got = criterion(result, "immunomodulators")
    assert (got.verdict, got.reason, evidence(got)) == (
        "met",
        "predniSONE 20 MG Oral Tablet 18 days before the reference day 2025-01-20",
        [("MedicationAdministration", "pred", "1", "predniSONE 20 MG Oral Tablet 18 days before")],
    )


# -- 9. smoking --------------------------------------------------------------------------------------

SMOKING_CASES = [
    pytest.param(
        Case(
            [smoking("smk", "266919005", "Never smoker")],
            "met",
            "never smoker",
            [("Observation", "smk", "1", "never")],
        ),
        id="never-smoker-is-excluded",
    ),
    pytest.param(
        Case(
            [smoking("smk", "8517006", "Former smoker (finding)")],
            "not_met",
            "current or former smoker",
            [("Observation", "smk", "1", "ever")],
        ),
        id="ex-smoker",
    ),
    pytest.param(
        Case(
            [smoking("smk", "266927001", "Unknown if ever smoked")],
            "unknown",
            "smoking status unknown",
            [("Observation", "smk", "1", "unknown")],
            "a known smoking status",
        ),
        id="unknown-if-ever-smoked",
    ),
    pytest.param(
        Case([], "unknown", "no smoking status recorded", [], "smoking status (LOINC 72166-2)"),
        id="no-smoking-observation",
    ),
    pytest.param(
        Case(
            [
                smoking("smk-2023", "8517006", "Former smoker (finding)", "2023-05-02"),
                smoking("smk-2025", "266927001", "Unknown if ever smoked", "2025-02-03"),
            ],
            "not_met",
            "current or former smoker",
            [("Observation", "smk-2023", "1", "ever")],
        ),
        id="later-unknown-does-not-erase-history",
    ),
]


@pytest.mark.parametrize("case", SMOKING_CASES)
def test_never_smoker(case: Case) -> None:
    """Exclusion 9 (registry): a never smoker is excluded; an unknown status stays unknown."""
    check("never_smoker", case)


# -- overall logic -------------------------------------------------------------------------------------


def eligible_patient() -> dict[str, dict[str, Any]]:
    """A complete screening work-up that settles every criterion in the patient's favour."""
    resources = [
        condition("dx", NSCLC_SCT),
        condition("htn", HYPERTENSION, "2016-02-02"),
        t_category("t", "cT2a"),
        m_category("m", "cM0"),
        service_request("sr", LOBECTOMY, "2025-02-25", "2025-03-25"),
        procedure("bx", CORE_BIOPSY, "completed", "2025-02-20"),
        TUMOUR_BLOCK,
        egfr("egfr", False),
        alk("alk", False),
        ros1("ros1", "Negative"),
        prednisone("pred", 63),
        smoking("smk", "8517006", "Former smoker (finding)"),
    ]
    return {r["id"]: r for r in resources}


def verdicts(result: EligibilityResult) -> dict[str, str]:
    """Criterion id → verdict."""
    return {c.criterion.id: c.verdict for c in result.criteria}


ELIGIBLE_VERDICTS = {
    "nsclc": "met",
    "stage": "met",
    "resectable": "met",
    "biopsy": "met",
    "autoimmune": "not_met",
    "metastatic": "not_met",
    "driver": "not_met",
    "immunomodulators": "not_met",
    "never_smoker": "not_met",
}


def test_all_settled_in_favour_is_eligible() -> None:
    """Every inclusion met and every exclusion not met is eligible, with nothing missing."""
    result = screen(*eligible_patient().values())
    assert verdicts(result) == ELIGIBLE_VERDICTS
    assert (result.overall, result.counts(), result.missing) == (
        "eligible",
        {"met": 4, "not_met": 5, "unknown": 0},
        [],
    )
    assert result.to_json()["overall"] == "eligible"
    assert [c["number"] for c in result.to_json()["criteria"]] == list(range(1, 10))


def test_any_exclusion_met_is_ineligible_even_with_unknowns() -> None:
    """One met exclusion decides: ineligible although other criteria are still unknown."""
    patient = eligible_patient()
    del patient["smk"], patient["sr"]
    patient["egfr"] = egfr("egfr", True, specimen=PLASMA)
    result = screen(*patient.values())
    assert verdicts(result) == {
        **ELIGIBLE_VERDICTS,
        "resectable": "unknown",
        "driver": "met",
        "never_smoker": "unknown",
    }
    assert result.overall == "ineligible"
    assert result.counts() == {"met": 4, "not_met": 3, "unknown": 2}


def test_any_inclusion_not_met_is_ineligible_even_with_unknowns() -> None:
    """One inclusion not met decides: ineligible although other criteria are still unknown."""
    patient = eligible_patient()
    del patient["bx"]
    patient["t"] = t_category("t", "cT1a")
    result = screen(*patient.values())
    assert verdicts(result) == {**ELIGIBLE_VERDICTS, "stage": "not_met", "biopsy": "unknown"}
    assert result.overall == "ineligible"
    assert result.counts() == {"met": 2, "not_met": 6, "unknown": 1}


def test_unsettled_is_indeterminate_with_the_exact_missing_list() -> None:
    """Nothing decides against the patient but some criteria are unknown: indeterminate, listing what is missing."""
    patient = eligible_patient()
    del patient["smk"], patient["alk"], patient["ros1"], patient["sr"]
    patient["dx"] = condition("dx", C34_90)
    result = screen(*patient.values())
    assert verdicts(result) == {
        **ELIGIBLE_VERDICTS,
        "nsclc": "unknown",
        "resectable": "unknown",
        "driver": "unknown",
        "never_smoker": "unknown",
    }
    assert result.overall == "indeterminate"
    assert result.missing == [
        "histology of the lung cancer (NSCLC or a NSCLC histology)",
        "a planned lung resection (ServiceRequest or Procedure)",
        "ALK/ROS1 testing (tissue or ctDNA)",
        "smoking status (LOINC 72166-2)",
    ]
    assert result.to_json()["missing"] == result.missing


def test_nothing_known_is_indeterminate() -> None:
    """A patient with no data at all is indeterminate with every criterion's data missing."""
    result = screen(enrolled_on=None)
    assert set(verdicts(result).values()) == {"unknown"}
    assert result.overall == "indeterminate"
    assert result.missing == [
        "a lung cancer diagnosis with its histology",
        "clinical T category",
        "a planned lung resection (ServiceRequest or Procedure)",
        "a planned screening biopsy",
        "the patient's problem list (conditions)",
        "M category or stage group",
        "EGFR/ALK/ROS1 testing (tissue or ctDNA)",
        "medication history (orders, administrations, statements)",
        "smoking status (LOINC 72166-2)",
    ]


# -- as of a day ---------------------------------------------------------------------------------------


def test_data_dated_after_as_of_is_ignored() -> None:
    """A May EGFR result and a May metastasis do not count as of March; they do as of May."""
    patient = eligible_patient()
    later = [
        egfr("egfr-may", True, "2025-05-12", specimen=PLASMA),
        condition(
            "met-may",
            coded(ICD10CM, "C79.51", "Secondary malignant neoplasm of bone"),
            "2025-05-20",
        ),
        t_category("t-may", "cT1a", "2025-05-02"),
    ]
    march = screen(*patient.values(), *later, as_of=AS_OF)
    assert verdicts(march) == ELIGIBLE_VERDICTS
    assert march.overall == "eligible"
    assert evidence(criterion(march, "stage")) == [("Observation", "t", "1", "cT2a")]
    may = screen(*patient.values(), *later, as_of=dt.date(2025, 5, 31))
    assert may.overall == "ineligible"
    assert evidence(criterion(may, "driver")) == [
        ("Observation", "egfr-may", "1", "EGFR positive (ctDNA)")
    ]
    assert evidence(criterion(may, "metastatic")) == [("Condition", "met-may", "1", "C79.51")]
    assert evidence(criterion(may, "stage")) == [("Observation", "t-may", "1", "cT1a")]


def test_an_order_counts_from_when_it_was_written() -> None:
    """A resection order written after the as-of day is unknown then, even though surgery is planned for later."""
    order = service_request("sr", LOBECTOMY, "2025-04-02", "2025-04-20")
    before = criterion(screen(order, as_of=AS_OF), "resectable")
    after = criterion(screen(order, as_of=dt.date(2025, 4, 2)), "resectable")
    assert (before.verdict, after.verdict) == ("unknown", "met")
    assert evidence(after) == [("ServiceRequest", "sr", "1", "ServiceRequest active")]


def test_a_procedure_in_preparation_counts_whatever_its_planned_date() -> None:
    """A Procedure in preparation carries only its planned date, so it is known on any as-of day."""
    planned = procedure("pr", PARTIAL_LOBECTOMY, "preparation", "2025-06-10")
    got = criterion(screen(planned, as_of=AS_OF), "resectable")
    assert (got.verdict, got.reason) == ("met", "lung resection planned or performed on 2025-06-10")


def test_evidence_names_the_resource_version() -> None:
    """Evidence points at the exact version the verdict came from, not just the resource."""
    smk = smoking("smk", "8517006", "Former smoker (finding)")
    smk["meta"] = {"versionId": "3"}
    got = criterion(screen(smk), "never_smoker")
    assert [e.to_json() for e in got.evidence] == [
        {
            "resource_type": "Observation",
            "id": "smk",
            "version": "3",
            "reference": "Observation/smk/_history/3",
            "value": "ever",
        }
    ]
