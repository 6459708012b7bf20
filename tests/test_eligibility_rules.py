"""Known answers for the NCT06088771 eligibility criteria, on events the real mappers derive."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest

from service.protocol.terminology import build_terminology
from service.studies.interventional.eligibility import (
    CriterionResult,
    EligibilityResult,
    Verdict,
    evaluate,
)
from service.studies.interventional.membership import trial_membership
from service.studies.interventional.protocol import TrialProtocol
from tests.kit import fhir as kit
from tests.kit.mapping import events_of
from tests.kit.protocols import trial_protocol

TERMINOLOGY = build_terminology()
PROTOCOL = trial_protocol(TERMINOLOGY)

AS_OF = dt.date(2025, 3, 31)
ENROLLED = dt.date(2025, 3, 3)
DAY1 = dt.date(2025, 3, 10)

EvidenceRow = tuple[str, str, str, str]  # resource type, id, version, deciding value


# -- p1's FHIR, shaped like hospital feeds: the kit's builders with this file's defaults ----------

problem = partial(
    kit.condition,
    category=kit.condition_category("problem-list-item", "Problem List Item"),
    onset="2025-01-20",
)
t_category = partial(kit.observation, code=kit.T_CLINICAL, effective="2025-02-12")
m_category = partial(kit.observation, code=kit.M_CLINICAL, effective="2025-02-12")
stage_group = partial(kit.observation, code=kit.STAGE_CLINICAL, effective="2025-02-12")
egfr = partial(kit.genomic_variant, gene=kit.EGFR, effective="2025-02-14")
# ALK rearrangement by FISH (LOINC 78205-2) on the tumour block
alk = partial(
    kit.observation,
    code=kit.coded(
        kit.LOINC,
        "78205-2",
        "ALK gene rearrangements [Presence] in Blood or Tissue by FISH Nominal",
    ),
    effective="2025-02-14",
    specimen={"reference": "Specimen/p1-block"},
)
# ROS1 named only in the local test name (no LOINC code is verified for it)
ros1 = partial(
    kit.observation,
    code=kit.coded("urn:oid:1.2.840.114350.1", "LAB8841", text="ROS1 gene rearrangement, FISH"),
    effective="2025-02-14",
)
TUMOUR_BLOCK = kit.specimen(
    id="p1-block", type="Lung tissue, core biopsy (FFPE block)", collected="2025-02-20"
)
smoking = partial(kit.smoking_status, effective="2025-02-03")
LOBECTOMY_VATS = {**kit.LOBECTOMY, "text": "VATS right upper lobectomy"}
CORE_BIOPSY = {"text": "CT-guided core needle biopsy, right upper lobe of lung"}
prednisone = partial(kit.dose, drug=kit.PREDNISONE, code="312617", amount=40, route=kit.ORAL)
STUDY = kit.research_study()


def before(days: int, day: dt.date = ENROLLED) -> str:
    """08:15 in New York, `days` days before the reference day (a morning dose)."""
    return f"{(day - dt.timedelta(days=days)).isoformat()}T08:15:00-05:00"


def outpatient_order(
    *, id: str, display: str, code: str, start: str, end: str | None
) -> dict[str, Any]:
    """A completed outpatient order of a drug with a dosing period (feeds send it twice daily)."""
    return kit.medication_request(
        id=id,
        medication=kit.coded(kit.RXNORM, code, display, text=display),
        status="completed",
        authored=start,
        dosageInstruction=[
            {
                "text": "apply twice daily",
                "timing": {"repeat": {"boundsPeriod": kit.period(start, end)}},
            }
        ],
    )


# -- running the real mappers and the evaluator ----------------------------------------------------


def screen(
    *resources: dict[str, Any],
    as_of: dt.date = AS_OF,
    enrolled_on: dt.date | None = ENROLLED,
    day1: dt.date | None = None,
    protocol: TrialProtocol = PROTOCOL,
) -> EligibilityResult:
    """The evaluator's result on the mapped resources."""
    return evaluate(
        protocol, events_of(TERMINOLOGY, resources), as_of=as_of, enrolled_on=enrolled_on, day1=day1
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

C34_90 = kit.LUNG_CANCER_C34_90
NSCLC_SCT = kit.NSCLC

NSCLC_CASES = [
    pytest.param(
        Case(
            [problem(id="dx", code=C34_90)],
            "unknown",
            "lung cancer recorded without a histology (e.g. ICD-10 C34)",
            [("Condition", "dx", "1", "C34.90")],
            "histology of the lung cancer (NSCLC or a NSCLC histology)",
        ),
        id="icd10-C34.90-without-histology",
    ),
    pytest.param(
        Case(
            [problem(id="dx", code=NSCLC_SCT)],
            "met",
            "NSCLC recorded on 2025-01-20",
            [("Condition", "dx", "1", "254637007")],
        ),
        id="snomed-254637007",
    ),
    pytest.param(
        Case(
            [
                problem(
                    id="dx",
                    code=kit.coded(
                        kit.ICD10CM,
                        "C34.11",
                        "Malignant neoplasm of upper lobe, right bronchus or lung",
                        text="Adenocarcinoma of lung",
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
            [problem(id="htn", code=kit.HYPERTENSION)],
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
                problem(
                    id="dx",
                    code=NSCLC_SCT,
                    verificationStatus={
                        "coding": [{"system": f"{kit.HL7}/condition-ver-status", "code": "refuted"}]
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
            [problem(id="dx", code=C34_90)],
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
            [t_category(id="t", valueCodeableConcept={"text": "cT1a"})],
            "not_met",
            "T1a is below T1b",
            [("Observation", "t", "1", "cT1a")],
        ),
        id="cT1a",
    ),
    pytest.param(
        Case(
            [t_category(id="t", valueCodeableConcept={"text": "T1b"})],
            "met",
            "T1b is at least T1b",
            [("Observation", "t", "1", "T1b")],
        ),
        id="T1b",
    ),
    pytest.param(
        Case(
            [t_category(id="t", code=kit.T_PATHOLOGICAL, valueCodeableConcept={"text": "ypT2a"})],
            "unknown",  # CLINICAL.md rev 2: eligibility is judged from pre-treatment staging
            "no pre-treatment T category (post-treatment or later staging not counted: ypT2a)",
            [],
            "clinical T category",
        ),
        id="ypT2a",
    ),
    pytest.param(
        Case(
            [t_category(id="t", valueCodeableConcept={"text": "TX"})],
            "unknown",
            "primary tumour cannot be assessed (TX)",
            [("Observation", "t", "1", "TX")],
            "an assessable T category",
        ),
        id="TX",
    ),
    pytest.param(
        Case(
            [t_category(id="t", valueCodeableConcept={"text": "T0"})],
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
            [t_category(id="t", valueCodeableConcept={"text": "cT2"})],
            "met",
            "T2 is at least T1b",
            [("Observation", "t", "1", "cT2")],
        ),
        id="cT2-without-subcategory-is-above-T1b",
    ),
    pytest.param(
        Case(
            [t_category(id="t", valueCodeableConcept={"text": "cT1"})],
            "unknown",
            "T1 without its subcategory may be below T1b",
            [("Observation", "t", "1", "cT1")],
            "the T subcategory (T1mi/T1a/T1b/T1c)",
        ),
        id="cT1-without-subcategory-is-unknown",
    ),
    pytest.param(
        Case(
            [t_category(id="t", valueCodeableConcept={"text": "see pathology report"})],
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
                t_category(
                    id="t-jan", valueCodeableConcept={"text": "cT1a"}, effective="2025-01-22"
                ),
                t_category(
                    id="t-feb", valueCodeableConcept={"text": "cT2a"}, effective="2025-02-12"
                ),
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
            [
                kit.service_request(
                    id="sr", code=LOBECTOMY_VATS, authored="2025-02-25", occurrence="2025-03-25"
                )
            ],
            "met",
            "lung resection planned or performed on 2025-03-25",
            [("ServiceRequest", "sr", "1", "ServiceRequest active")],
        ),
        id="service-request",
    ),
    pytest.param(
        Case(
            [
                kit.procedure(
                    id="pr",
                    code=kit.PARTIAL_LOBECTOMY,
                    status="preparation",
                    performed="2025-03-25",
                )
            ],
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
                kit.service_request(
                    id="sr",
                    code=LOBECTOMY_VATS,
                    authored="2025-02-25",
                    occurrence="2025-03-25",
                    status="revoked",
                ),
                kit.procedure(
                    id="pr", code=kit.PARTIAL_LOBECTOMY, status="stopped", performed="2025-03-25"
                ),
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
            [kit.procedure(id="bx", code=CORE_BIOPSY, status="completed", performed="2025-02-20")],
            "met",
            "biopsy planned or done on 2025-02-20",
            [("Procedure", "bx", "1", "Procedure completed")],
        ),
        id="done",
    ),
    pytest.param(
        Case(
            [
                kit.service_request(
                    id="bxo", code=kit.LUNG_BIOPSY, authored="2025-03-01", occurrence="2025-03-06"
                )
            ],
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
            [kit.procedure(id="bx", code=CORE_BIOPSY, status="not-done", performed="2025-02-20")],
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

RA = kit.RHEUMATOID_ARTHRITIS
PSORIASIS = kit.coded(kit.ICD10CM, "L40.0", "Psoriasis vulgaris")
T1DM = kit.coded(kit.ICD10CM, "E10.9", "Type 1 diabetes mellitus without complications")
T2DM = kit.coded(kit.ICD10CM, "E11.9", "Type 2 diabetes mellitus without complications")

AUTOIMMUNE_CASES = [
    pytest.param(
        Case(
            [problem(id="dx", code=NSCLC_SCT), problem(id="ai", code=RA, onset="2019-06-01")],
            "met",
            "M05.79 recorded on 2019-06-01",
            [("Condition", "ai", "1", "M05.79")],
        ),
        id="M05.79",
    ),
    pytest.param(
        Case(
            [problem(id="ai", code=PSORIASIS, onset="2012-04-11", clinical="inactive")],
            "met",
            "L40.0 recorded on 2012-04-11",
            [("Condition", "ai", "1", "L40.0")],
        ),
        id="L40.0-history",
    ),
    pytest.param(
        Case(
            [problem(id="ai", code=T1DM, onset="1998-09-30")],
            "met",
            "E10.9 recorded on 1998-09-30",
            [("Condition", "ai", "1", "E10.9")],
        ),
        id="E10.9",
    ),
    pytest.param(
        Case(
            [
                problem(id="dx", code=NSCLC_SCT),
                problem(id="htn", code=kit.HYPERTENSION, onset="2016-02-02"),
                problem(id="dm", code=T2DM, onset="2018-07-07"),
                problem(
                    id="fh",
                    code=kit.coded(
                        kit.ICD10CM,
                        "Z82.61",
                        "Family history of arthritis",
                        text="Family history of rheumatoid arthritis",
                    ),
                    onset="2020-01-01",
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

C78_01 = kit.LUNG_METASTASIS

METASTATIC_CASES = [
    pytest.param(
        Case(
            [m_category(id="m", valueCodeableConcept=kit.coded(kit.AJCC, "cM1a", "cM1a"))],
            "met",
            "metastatic disease: M1a",
            [("Observation", "m", "1", "M1a")],
        ),
        id="cM1a",
    ),
    pytest.param(
        Case(
            [problem(id="dx", code=NSCLC_SCT), problem(id="met", code=C78_01, onset="2025-02-18")],
            "met",
            "metastatic disease: C78.01",
            [("Condition", "met", "1", "C78.01")],
        ),
        id="C78.01-condition",
    ),
    pytest.param(
        Case(
            [m_category(id="m", valueCodeableConcept=kit.coded(kit.AJCC, "cM0", "cM0"))],
            "not_met",
            "no distant metastasis (M0)",
            [("Observation", "m", "1", "M0")],
        ),
        id="cM0",
    ),
    pytest.param(
        Case(
            [stage_group(id="sg", valueCodeableConcept=kit.coded(kit.AJCC, "4", "Stage 4"))],
            "met",
            "metastatic disease: IV",
            [("Observation", "sg", "1", "IV")],
        ),
        id="stage-group-IV",
    ),
    pytest.param(
        Case(
            [stage_group(id="sg", valueCodeableConcept=kit.coded(kit.AJCC, "3A", "Stage 3A"))],
            "not_met",
            "stage group IIIA",
            [("Observation", "sg", "1", "IIIA")],
        ),
        id="stage-group-IIIA",
    ),
    pytest.param(
        Case(
            [
                problem(
                    id="dx",
                    code=NSCLC_SCT,
                    stage=[{"summary": kit.coded(kit.AJCC, "4A", "Stage 4A")}],
                )
            ],
            "met",
            "metastatic disease: stage IVA",
            [("Condition", "dx", "1", "stage IVA")],
        ),
        id="condition-stage-summary-IVA",
    ),
    pytest.param(
        Case(
            [
                problem(
                    id="dx",
                    code=NSCLC_SCT,
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
    """Exclusion 6: M1 category, distant secondary malignancy (C78–C79) or stage IV; M0 or a lower group rule it out."""
    check("metastatic", case)


# -- 7. driver alterations ---------------------------------------------------------------------------

PLASMA = {"display": "Plasma cell-free DNA (Guardant360 CDx)"}

DRIVER_CASES = [
    pytest.param(
        Case(
            [egfr(id="egfr", present=True, specimen=PLASMA)],
            "met",
            "driver alteration: EGFR positive (ctDNA)",
            [("Observation", "egfr", "1", "EGFR positive (ctDNA)")],
        ),
        id="EGFR-positive-ctDNA",
    ),
    pytest.param(
        Case(
            [TUMOUR_BLOCK, alk(id="alk", valueCodeableConcept=kit.PRESENT)],
            "met",
            "driver alteration: ALK positive (tissue)",
            [("Observation", "alk", "1", "ALK positive (tissue)")],
        ),
        id="ALK-FISH-78205-2-positive",
    ),
    pytest.param(
        Case(
            [ros1(id="ros1", valueString="Positive: ROS1 rearrangement detected (CD74-ROS1)")],
            "met",
            "driver alteration: ROS1 positive (specimen not stated)",
            [("Observation", "ros1", "1", "ROS1 positive (specimen not stated)")],
        ),
        id="ROS1-by-gene-name",
    ),
    pytest.param(
        Case(
            [
                egfr(id="egfr", present=False),
                TUMOUR_BLOCK,
                alk(id="alk", valueCodeableConcept=kit.ABSENT),
                ros1(id="ros1", valueString="Negative"),
            ],
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
            [egfr(id="egfr", present=False)],
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
                egfr(id="egfr-tissue", present=False),
                egfr(id="egfr-plasma", present=True, effective="2025-02-27", specimen=PLASMA),
                TUMOUR_BLOCK,
                alk(id="alk", valueCodeableConcept=kit.ABSENT),
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
                kit.observation(
                    id="gfr",
                    code=kit.coded(
                        kit.LOINC,
                        "33914-3",
                        "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum or Plasma by Creatinine-based formula (MDRD)",
                        text="eGFR",
                    ),
                    effective="2025-02-12",
                    valueQuantity={
                        "value": 52,
                        "unit": "mL/min/{1.73_m2}",
                        "system": kit.UCUM,
                        "code": "mL/min/{1.73_m2}",
                    },
                    interpretation=[
                        kit.coded(f"{kit.HL7}/v3-ObservationInterpretation", "L", "Low")
                    ],
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
METFORMIN = kit.dose(
    id="met",
    code="861007",
    drug="metFORMIN 500 MG Oral Tablet",
    amount=40,
    when="2025-02-27T08:00:00-05:00",
    route=kit.ORAL,
)

MEDICATION_CASES = [
    pytest.param(
        Case([prednisone(id="pred", when=before(63))], "not_met", NO_IMMUNOMODULATOR),
        id="prednisone-9-weeks-before",
    ),
    pytest.param(
        Case(
            [prednisone(id="pred", when=before(49))],
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
            [prednisone(id="pred", when=before(56))],
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
        Case([prednisone(id="pred", when=before(57))], "not_met", NO_IMMUNOMODULATOR),
        id="57-days",
    ),
    pytest.param(
        Case(
            [
                outpatient_order(
                    id="cream",
                    display="hydrocortisone 1 % Topical Cream",
                    code="106258",
                    start="2025-02-10",
                    end="2025-02-24",
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
                outpatient_order(
                    id="mtx",
                    display="methotrexate 2.5 MG Oral Tablet",
                    code="105586",
                    start="2024-10-01",
                    end="2025-01-15",
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
    kit.dose(
        id="d1a",
        drug="dupilumab 300 MG/2ML Prefilled Syringe",
        amount=300,
        when="2025-03-10T09:00:00-05:00",
        route=kit.SUBCUTANEOUS,
    ),
    kit.dose(
        id="d1b",
        drug="dupilumab 300 MG/2ML Prefilled Syringe",
        amount=300,
        when="2025-03-10T09:04:00-05:00",
        route=kit.SUBCUTANEOUS,
    ),
    kit.dose(
        id="d1c",
        drug="Libtayo 350 MG/7ML Injection",
        amount=350,
        when="2025-03-10T10:00:00-05:00",
        route=kit.SUBCUTANEOUS,
    ),
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
    pred = kit.dose(
        id="pred",
        code="312617",
        drug="predniSONE 20 MG Oral Tablet",
        amount=40,
        when="2025-01-10",
        route=kit.ORAL,
    )
    events = events_of(
        TERMINOLOGY,
        [
            STUDY,
            kit.research_subject(id="p1-rs", number="001-007", start=start),
            *STUDY_DOSES,
            pred,
        ],
    )
    facts = trial_membership(PROTOCOL, events)
    assert facts is not None
    assert (facts.enrolled_on, facts.day1) == reference
    result = evaluate(PROTOCOL, events, as_of=AS_OF, enrolled_on=facts.enrolled_on, day1=facts.day1)
    got = criterion(result, "immunomodulators")
    assert (got.verdict, got.reason, evidence(got)) == (verdict, reason, rows)


def test_reference_day_is_as_of_before_enrollment() -> None:
    """Screening before enrollment counts back from the as-of day, since enrollment has not happened yet."""
    result = screen(
        prednisone(id="pred", when=before(60)), as_of=dt.date(2025, 1, 20), enrolled_on=ENROLLED
    )
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
            [smoking(id="smk", finding=kit.coded(kit.SNOMED, "266919005", "Never smoker"))],
            "met",
            "never smoker",
            [("Observation", "smk", "1", "never")],
        ),
        id="never-smoker-is-excluded",
    ),
    pytest.param(
        Case(
            [
                smoking(
                    id="smk", finding=kit.coded(kit.SNOMED, "8517006", "Former smoker (finding)")
                )
            ],
            "not_met",
            "current or former smoker",
            [("Observation", "smk", "1", "ever")],
        ),
        id="ex-smoker",
    ),
    pytest.param(
        Case(
            [
                smoking(
                    id="smk", finding=kit.coded(kit.SNOMED, "266927001", "Unknown if ever smoked")
                )
            ],
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
                smoking(
                    id="smk-2023",
                    finding=kit.coded(kit.SNOMED, "8517006", "Former smoker (finding)"),
                    effective="2023-05-02",
                ),
                smoking(
                    id="smk-2025",
                    finding=kit.coded(kit.SNOMED, "266927001", "Unknown if ever smoked"),
                    effective="2025-02-03",
                ),
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
        problem(id="dx", code=NSCLC_SCT),
        problem(id="htn", code=kit.HYPERTENSION, onset="2016-02-02"),
        t_category(id="t", valueCodeableConcept={"text": "cT2a"}),
        m_category(id="m", valueCodeableConcept=kit.coded(kit.AJCC, "cM0", "cM0")),
        kit.service_request(
            id="sr", code=LOBECTOMY_VATS, authored="2025-02-25", occurrence="2025-03-25"
        ),
        kit.procedure(id="bx", code=CORE_BIOPSY, status="completed", performed="2025-02-20"),
        TUMOUR_BLOCK,
        egfr(id="egfr", present=False),
        alk(id="alk", valueCodeableConcept=kit.ABSENT),
        ros1(id="ros1", valueString="Negative"),
        prednisone(id="pred", when=before(63)),
        smoking(id="smk", finding=kit.coded(kit.SNOMED, "8517006", "Former smoker (finding)")),
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
    patient["egfr"] = egfr(id="egfr", present=True, specimen=PLASMA)
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
    patient["t"] = t_category(id="t", valueCodeableConcept={"text": "cT1a"})
    result = screen(*patient.values())
    assert verdicts(result) == {**ELIGIBLE_VERDICTS, "stage": "not_met", "biopsy": "unknown"}
    assert result.overall == "ineligible"
    assert result.counts() == {"met": 2, "not_met": 6, "unknown": 1}


def test_unsettled_is_indeterminate_with_the_exact_missing_list() -> None:
    """Nothing decides against the patient but some criteria are unknown: indeterminate, listing what is missing."""
    patient = eligible_patient()
    del patient["smk"], patient["alk"], patient["ros1"], patient["sr"]
    patient["dx"] = problem(id="dx", code=C34_90)
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
    """A May EGFR result and a May metastasis do not count as of March; they do as of May (the T stays the enrollment's)."""
    patient = eligible_patient()
    later = [
        egfr(id="egfr-may", present=True, effective="2025-05-12", specimen=PLASMA),
        problem(
            id="met-may",
            code=kit.coded(kit.ICD10CM, "C79.51", "Secondary malignant neoplasm of bone"),
            onset="2025-05-20",
        ),
        t_category(id="t-may", valueCodeableConcept={"text": "cT1a"}, effective="2025-05-02"),
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
    # CLINICAL.md rev 2: an enrolled subject's stage is the one at enrollment, May's cT1a is not
    assert evidence(criterion(may, "stage")) == [("Observation", "t", "1", "cT2a")]


def test_an_order_counts_from_when_it_was_written() -> None:
    """A resection order written after the as-of day is unknown then, even though surgery is planned for later."""
    order = kit.service_request(
        id="sr", code=LOBECTOMY_VATS, authored="2025-04-02", occurrence="2025-04-20"
    )
    before = criterion(screen(order, as_of=AS_OF), "resectable")
    after = criterion(screen(order, as_of=dt.date(2025, 4, 2)), "resectable")
    assert (before.verdict, after.verdict) == ("unknown", "met")
    assert evidence(after) == [("ServiceRequest", "sr", "1", "ServiceRequest active")]


def test_a_procedure_in_preparation_counts_whatever_its_planned_date() -> None:
    """A Procedure in preparation carries only its planned date, so it is known on any as-of day."""
    planned = kit.procedure(
        id="pr", code=kit.PARTIAL_LOBECTOMY, status="preparation", performed="2025-06-10"
    )
    got = criterion(screen(planned, as_of=AS_OF), "resectable")
    assert (got.verdict, got.reason) == ("met", "lung resection planned or performed on 2025-06-10")


def test_evidence_names_the_resource_version() -> None:
    """Evidence points at the exact version the verdict came from, not just the resource."""
    smk = smoking(id="smk", finding=kit.coded(kit.SNOMED, "8517006", "Former smoker (finding)"))
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
