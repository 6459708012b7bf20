"""Known answers for the Observation mapper: TNM, genomics, smoking, viable tumour, disease status."""

from __future__ import annotations

import datetime as dt
from functools import partial
from typing import Any

import pytest

from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.events.observation import map_observation, parse_tnm
from fhir_mapping.json_codec import LexicalDecimal, loads
from service.protocol.terminology import build_terminology
from tests.conftest import TEST_DATA
from tests.kit import fhir as kit
from tests.kit.expected import day_json, match_json, source_json
from tests.kit.mapping import concept_matches, context, single

TERMINOLOGY = build_terminology()
EXAMPLES = TEST_DATA / "fhir-r4-examples"
SRC = SourceRef("Observation", "o1", 1)  # the source version every fixture event claims
# A final Observation of patient p1 taken on 2025-02-12.
measured = partial(kit.observation, effective="2025-02-12")


def _one(resource: dict[str, Any], ctx: MappingContext | None = None) -> TrialEvent:
    """The single event an Observation must yield."""
    return single(map_observation(resource, SRC, ctx or context(TERMINOLOGY)))


def _wire(concept: dict[str, Any] | None) -> dict[str, Any] | None:
    """How an event value shows a CodeableConcept: its codings (always a list) and its text."""
    if concept is None:
        return None
    return {
        "coding": concept.get("coding", []),
        **({"text": concept["text"]} if "text" in concept else {}),
    }


CT_SNOMED_NAME = kit.coded(kit.SNOMED, None, "cT category (observable entity)")


# --- TNM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "value", "expected", "concepts"),
    [
        pytest.param(
            kit.T_CLINICAL,
            {"valueCodeableConcept": kit.coded(kit.AJCC, "cT1a", "cT1a")},
            ("T", "clinical", "cT1a", "T1a", "c"),
            [("tnm_t", "code")],
            id="cT1a-AJCC-code",
        ),
        pytest.param(
            kit.T_CLINICAL,
            {"valueCodeableConcept": {"text": "T1b"}},
            ("T", "clinical", "T1b", "T1b", None),
            [("tnm_t", "code")],
            id="T1b-text-no-prefix",
        ),
        pytest.param(
            kit.T_CLINICAL,
            {"valueCodeableConcept": kit.coded(kit.AJCC, "ypT2a", None)},
            ("T", "pathological", "ypT2a", "T2a", "yp"),
            [("tnm_t", "code")],
            id="ypT2a-prefix-makes-it-pathological",
        ),
        pytest.param(
            kit.T_PATHOLOGICAL,
            {"valueString": "T2a"},
            ("T", "pathological", "T2a", "T2a", None),
            [("tnm_t", "code"), ("tnm_pathological", "code")],
            id="pathological-LOINC-code",
        ),
        pytest.param(
            kit.T_CLINICAL,
            {"valueCodeableConcept": kit.coded(kit.AJCC, "TX", "TX")},
            ("T", "clinical", "TX", "TX", None),
            [("tnm_t", "code")],
            id="TX",
        ),
        pytest.param(
            kit.T_CLINICAL,
            {"valueCodeableConcept": kit.coded(kit.AJCC, "pTis", None)},
            ("T", "pathological", "pTis", "Tis", "p"),
            [("tnm_t", "code")],
            id="pTis",
        ),
        pytest.param(
            CT_SNOMED_NAME,
            {"valueCodeableConcept": kit.coded(kit.SNOMED, None, "T1b category (finding)")},
            ("T", "clinical", "T1b category (finding)", "T1b", None),
            [("tnm_t", "name")],
            id="SNOMED-display-style-name-only",
        ),
        pytest.param(
            kit.T_CLINICAL,
            {
                "valueCodeableConcept": kit.coded(
                    kit.SNOMED, None, "American Joint Committee on Cancer cT1mi (qualifier value)"
                )
            },
            (
                "T",
                "clinical",
                "American Joint Committee on Cancer cT1mi (qualifier value)",
                "T1mi",
                "c",
            ),
            [("tnm_t", "code")],
            id="AJCC-qualifier-display-T1mi",
        ),
        pytest.param(
            kit.N_CLINICAL,
            {"valueString": "cT1bN0M0"},
            ("N", "clinical", "cT1bN0M0", "N0", None),
            [("tnm_n", "code")],
            id="N-from-run-together-TNM",
        ),
        pytest.param(
            kit.M_CLINICAL,
            {"valueCodeableConcept": kit.coded(kit.AJCC, "cM1a", "M1a")},
            ("M", "clinical", "cM1a", "M1a", "c"),
            [("tnm_m", "code")],
            id="M1a",
        ),
        pytest.param(
            kit.STAGE_CLINICAL,
            {"valueCodeableConcept": {"text": "IV"}},
            ("stage_group", "clinical", "IV", "IV", None),
            [("tnm_stage_group", "code")],
            id="stage-group-IV",
        ),
        pytest.param(
            kit.STAGE_PATHOLOGICAL,
            {"valueCodeableConcept": kit.coded(kit.AJCC, "3A", "IIIA")},
            ("stage_group", "pathological", "3A", "IIIA", None),
            [("tnm_stage_group", "code"), ("tnm_pathological", "code")],
            id="stage-group-AJCC-code-3A",
        ),
        pytest.param(
            {"text": "Clinical TNM stage grouping"},
            {"valueCodeableConcept": kit.coded(kit.SNOMED, None, "Stage 2B (qualifier value)")},
            ("stage_group", "clinical", "Stage 2B (qualifier value)", "IIB", None),
            [("tnm_stage_group", "name")],
            id="stage-group-arabic-SNOMED-display",
        ),
        pytest.param(
            kit.T_CLINICAL,
            {"valueString": "see pathology report"},
            ("T", "clinical", "see pathology report", None, None),
            [("tnm_t", "code")],
            id="unreadable-category",
        ),
    ],
)
def test_tnm_category(
    code: dict[str, Any], value: dict[str, Any], expected: tuple[Any, ...], concepts: list[Any]
) -> None:
    """T/N/M/stage categories are read with their prefix, so 'stage >= T1b' and M1 checks work."""
    resource = measured(code=code, **value)
    event = _one(resource)
    assert event.kind is EventKind.TNM_CATEGORY
    axis, setting, raw, category, prefix = expected
    assert dict(event.values) == {
        "axis": axis,
        "setting": setting,
        "raw": raw,
        "category": category,
        "prefix": prefix,
        "value": _wire(resource.get("valueCodeableConcept")),
        "status": "final",
    }
    assert concept_matches(event) == concepts


@pytest.mark.parametrize(
    ("text", "axis", "expected"),
    [
        ("cT1b", "T", ("c", "T1b")),
        ("T0", "T", (None, "T0")),
        ("pN0(i-)", "N", ("p", "N0")),
        ("pN1mi", "N", ("p", "N1mi")),
        ("ycT2 ycN0 cM0", "M", ("c", "M0")),
        ("T1bN0M1c", "M", (None, "M1c")),
        ("Tissue", "T", None),
        ("CT chest", "T", None),
        ("T5", "T", None),
        ("N4", "N", None),
        ("Stadium IIIB", "stage_group", (None, "IIIB")),
        ("Stage IA1", "stage_group", (None, "IA1")),
        ("American Joint Committee on Cancer stage IVA", "stage_group", (None, "IVA")),
        ("4", "stage_group", (None, "IV")),
        ("0", "stage_group", (None, "0")),
        ("Stage unknown", "stage_group", None),
    ],
)
def test_parse_tnm(text: str, axis: str, expected: Any) -> None:
    """The category reader copes with AJCC, UICC and SNOMED spellings and refuses non-categories."""
    assert parse_tnm(text, axis) == expected


# --- genomic findings ---------------------------------------------------------------------------

ALK_FISH = kit.coded(
    kit.LOINC, "78205-2", "ALK gene rearrangements [Presence] in Blood or Tissue by FISH"
)
TISSUE_SPECIMEN = kit.specimen(
    id="sp-core-1", type=kit.coded(None, None, "Tissue core biopsy"), patient=None
)
PLASMA_SPECIMEN = kit.specimen(id="sp-plasma-1", type="Plasma (Streck tube)", patient=None)


@pytest.mark.parametrize(
    ("resource", "expected", "concepts"),
    [
        pytest.param(
            measured(
                code=kit.GENETIC_VARIANT,
                valueCodeableConcept=kit.PRESENT,
                method={"text": "Next generation sequencing"},
                specimen={"display": "Peripheral blood: ctDNA"},
                component=[
                    {
                        "code": kit.GENE_STUDIED,
                        "valueCodeableConcept": kit.EGFR,
                    }
                ],
            ),
            {
                "genes": ["EGFR"],
                "result": "positive",
                "method": "NGS",
                "specimen_kind": "ctDNA",
                "value": kit.PRESENT,
            },
            [
                ("genetic_variant_assessment", "code"),
                ("egfr_gene", "code"),
                ("result_positive", "code"),
            ],
            id="EGFR-positive-ctDNA-mCODE-variant",
        ),
        pytest.param(
            measured(
                code=ALK_FISH,
                valueCodeableConcept={"text": "Positive"},
                specimen={"reference": "Specimen/sp-core-1"},
            ),
            {
                "genes": ["ALK"],
                "result": "positive",
                "method": "FISH",
                "specimen_kind": "tissue",
                "value": {"coding": [], "text": "Positive"},
            },
            [
                ("genetic_variant_assessment", "code"),
                ("alk_gene", "code"),
                ("result_positive", "name"),
            ],
            id="ALK-by-FISH-78205-2-positive-tissue",
        ),
        pytest.param(
            measured(
                code="ROS1 gene",
                valueString="Rearranged",
                specimen={"reference": "Specimen/sp-plasma-1"},
            ),
            {
                "genes": ["ROS1"],
                "result": "positive",
                "method": None,
                "specimen_kind": "ctDNA",
                "value": "Rearranged",
            },
            [("ros1_gene", "name"), ("result_positive", "name")],
            id="ROS1-by-gene-name-only-plasma-specimen",
        ),
        pytest.param(
            measured(
                code="EGFR exon 19/21 mutation analysis",
                method={"coding": [{"display": "Real-time PCR"}]},
                valueCodeableConcept={"text": "Not detected"},
            ),
            {
                "genes": ["EGFR"],
                "result": "negative",
                "method": "PCR",
                "specimen_kind": None,
                "value": {"coding": [], "text": "Not detected"},
            },
            [
                ("genetic_variant_assessment", "name"),
                ("egfr_gene", "name"),
                ("result_negative", "name"),
            ],
            id="EGFR-not-detected-is-negative",
        ),
        pytest.param(
            measured(
                code=kit.GENETIC_VARIANT,
                valueCodeableConcept=kit.ABSENT,
                component=[{"code": kit.GENE_STUDIED, "valueCodeableConcept": kit.ALK}],
                interpretation=[{"text": "Positive"}],
            ),
            {
                "genes": ["ALK"],
                "result": "negative",
                "method": None,
                "specimen_kind": None,
                "value": kit.ABSENT,
            },
            [
                ("genetic_variant_assessment", "code"),
                ("alk_gene", "code"),
                ("result_negative", "code"),
            ],
            id="value-wins-over-interpretation",
        ),
        pytest.param(
            measured(
                code="KRAS G12C mutation",
                valueCodeableConcept={"text": "Detected"},
                interpretation=[{"coding": [{"code": "POS", "display": "Positive"}]}],
            ),
            {
                "genes": [],
                "result": "positive",
                "method": None,
                "specimen_kind": None,
                "value": {"coding": [], "text": "Detected"},
            },
            [("genetic_variant_assessment", "name"), ("result_positive", "name")],
            id="other-gene-is-a-finding-without-study-genes",
        ),
    ],
)
def test_genomic_finding(
    resource: dict[str, Any], expected: dict[str, Any], concepts: list[Any]
) -> None:
    """EGFR/ALK/ROS1 results with method and specimen decide exclusion 7 (tissue or ctDNA)."""
    event = _one(resource, context(TERMINOLOGY, TISSUE_SPECIMEN, PLASMA_SPECIMEN))
    assert event.kind is EventKind.GENOMIC_FINDING
    assert dict(event.values) == {**expected, "status": "final"}
    assert concept_matches(event) == concepts


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param(
            measured(
                code="eGFR",
                valueQuantity={"value": 72, "unit": "mL/min/{1.73_m2}", "system": kit.UCUM},
                interpretation=[{"text": "Abnormal"}],
            ),
            id="kidney-eGFR",
        ),
        pytest.param(
            measured(
                code="EGFR (NON-AFRICAN AMERICAN)",
                valueQuantity={"value": 58, "unit": "mL/min"},
            ),
            id="kidney-EGFR-upper-case-with-qualifier",
        ),
        pytest.param(
            measured(code="EGFR", valueQuantity={"value": 61, "unit": "mL/min/1.73m2"}),
            id="bare-EGFR-number",
        ),
        pytest.param(
            measured(code="Alk Phos", valueQuantity={"value": 88, "unit": "U/L"}),
            id="alkaline-phosphatase",
        ),
    ],
)
def test_labs_that_share_a_gene_symbol_are_not_genomic(resource: dict[str, Any]) -> None:
    """An eGFR or 'Alk Phos' lab must never look like an EGFR/ALK variant (it would exclude people)."""
    assert map_observation(resource, SRC, context(TERMINOLOGY)) == []


# --- smoking --------------------------------------------------------------------------------------

SMOKING = kit.SMOKING_STATUS


@pytest.mark.parametrize(
    ("value", "status", "matched"),
    [
        pytest.param(
            kit.coded(kit.SNOMED, "266919005", "Never smoked tobacco (finding)"),
            "never",
            ("never_smoker", "code"),
            id="never-snomed",
        ),
        pytest.param(
            kit.coded(kit.SNOMED, "8517006", "Ex-smoker (finding)"),
            "ever",
            ("ever_smoker", "code"),
            id="ex",
        ),
        pytest.param(
            kit.coded(kit.SNOMED, "266927001", "Unknown if ever smoked"),
            "unknown",
            ("smoking_unknown", "code"),
            id="unknown-snomed",
        ),
        pytest.param({"text": "Former smoker"}, "ever", ("ever_smoker", "name"), id="former-text"),
        pytest.param(
            kit.coded(kit.SNOMED, None, "Smokes tobacco daily (finding)"),
            "ever",
            ("ever_smoker", "name"),
            id="daily-smoker-display",
        ),
        pytest.param({"text": "Non smoker"}, "never", ("never_smoker", "name"), id="non-smoker"),
        pytest.param({"text": "see social history note"}, None, None, id="unreadable"),
    ],
)
def test_smoking_status(value: dict[str, Any], status: str | None, matched: Any) -> None:
    """Never vs ever vs unknown decides exclusion 9; never is tested before 'smoker' can match."""
    event = _one(measured(code=SMOKING, valueCodeableConcept=value))
    assert event.kind is EventKind.SMOKING_STATUS
    assert dict(event.values) == {
        "status": status,
        "value": _wire(value),
        "observation_status": "final",
    }
    assert concept_matches(event) == [("smoking_status", "code"), *([matched] if matched else [])]


# --- viable tumour --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code_text", "value", "percent", "site", "flag"),
    [
        pytest.param(
            "Percent viable tumor in primary tumor bed",
            kit.quantity(LexicalDecimal("5.0"), "%"),
            "5.0",
            "primary",
            None,
            id="primary-5-percent",
        ),
        pytest.param(
            "Residual viable tumour in lymph nodes",
            kit.quantity(0, "%"),
            "0",
            "nodal",
            None,
            id="nodal-0-percent",
        ),
        pytest.param(
            "Residual viable tumor, largest focus",
            kit.quantity(LexicalDecimal("3"), "mm"),
            None,
            "primary",
            "unit 'mm' is not %: percent not read",
            id="size-in-mm-is-not-a-percent",
        ),
        pytest.param(
            "Viable tumor (%)",
            None,
            None,
            "primary",
            "no valueQuantity: percent not read",
            id="none",
        ),
    ],
)
def test_viable_tumour(
    code_text: str, value: Any, percent: str | None, site: str, flag: str | None
) -> None:
    """MPR/pCR read the lexical percent of viable tumour in the primary and the nodes."""
    extra = {"valueQuantity": value} if value else {"valueString": "pending"}
    event = _one(measured(code={"text": code_text}, **extra))
    assert event.kind is EventKind.VIABLE_TUMOUR
    assert dict(event.values) == {"percent": percent, "site": site, "flag": flag, "status": "final"}
    assert concept_matches(event)[0] == ("viable_tumour", "name")


# --- disease status ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "value", "is_event", "text"),
    [
        pytest.param(
            {"text": "Cancer disease status"},
            kit.coded(kit.SNOMED, None, "Local recurrence of malignant tumor of lung"),
            True,
            "Local recurrence of malignant tumor of lung",
            id="recurrence",
        ),
        pytest.param(
            kit.coded(kit.LOINC, "97509-4", "Cancer disease progression"),
            kit.coded(kit.SNOMED, None, "Patient's condition worsened (finding)"),
            True,
            "Patient's condition worsened (finding)",
            id="mCODE-worsened",
        ),
        pytest.param(
            {"text": "Disease status"},
            {"text": "No evidence of recurrence"},
            False,
            "No evidence of recurrence",
            id="no-evidence-of-recurrence",
        ),
        pytest.param(
            {"text": "Disease status"},
            {"text": "Stable disease"},
            False,
            "Stable disease",
            id="stable",
        ),
    ],
)
def test_disease_status(
    code: dict[str, Any], value: dict[str, Any], is_event: bool, text: str
) -> None:
    """Recurrence/progression are EFS events; 'no evidence of recurrence' is not."""
    event = _one(measured(code=code, valueCodeableConcept=value))
    assert event.kind is EventKind.DISEASE_STATUS
    assert dict(event.values) == {
        "finding": _wire(value),
        "is_event": is_event,
        "text": text,
        "status": "final",
    }


# --- status, dates, subject ------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "unknown"])
def test_void_or_cancelled_observation_yields_nothing(status: str) -> None:
    """A retracted, cancelled or status-unknown result must not stage or exclude anyone."""
    resource = measured(code=kit.M_CLINICAL, status=status, valueString="M1a")
    assert map_observation(resource, SRC, context(TERMINOLOGY)) == []


@pytest.mark.parametrize("status", ["registered", "preliminary", "final", "amended", "corrected"])
def test_kept_statuses_are_recorded(status: str) -> None:
    """Amended and corrected results stand, and the event says which status it came from."""
    event = _one(measured(code=kit.M_CLINICAL, status=status, valueString="M1a"))
    assert event.values["status"] == status


@pytest.mark.parametrize(
    ("extra", "date", "end"),
    [
        pytest.param(
            {"effectiveDateTime": "2025-03-01T23:30:00-05:00"},
            ("2025-03-01T23:30:00-05:00", dt.date(2025, 3, 1)),
            None,
            id="offset-crossing-midnight-keeps-local-day",
        ),
        pytest.param(
            {"effectiveDateTime": None, "effectivePeriod": {"start": "2025-01", "end": "2025-02"}},
            ("2025-01", dt.date(2025, 1, 1)),
            "2025-02",
            id="period",
        ),
        pytest.param(
            {"effectiveDateTime": None, "effectiveInstant": "2025-01-05T08:00:00.120Z"},
            ("2025-01-05T08:00:00.120Z", dt.date(2025, 1, 5)),
            None,
            id="instant",
        ),
        pytest.param(
            {"effectiveDateTime": None, "issued": "2025-01-09T10:00:00+01:00"},
            ("2025-01-09T10:00:00+01:00", dt.date(2025, 1, 9)),
            None,
            id="issued-fallback",
        ),
    ],
)
def test_observation_dates(
    extra: dict[str, Any], date: tuple[str, dt.date], end: str | None
) -> None:
    """Effective time is read in FHIR's order and keeps the day where it was recorded."""
    event = _one(measured(code=kit.M_CLINICAL, valueString="M0", **extra))
    assert event.date is not None
    assert (event.date.text, event.date.first) == date
    assert (event.end.text if event.end else None) == end


def test_identifier_only_subject_resolves_to_the_patient() -> None:
    """A result that names the patient by MRN only still belongs to that Patient."""
    stored = kit.patient(id="pat-7", mrn="MRN-7")
    resource = measured(
        code=SMOKING,
        valueCodeableConcept={"text": "Never smoker"},
        subject={"type": "Patient", "identifier": {"system": "urn:mrn", "value": "MRN-7"}},
    )
    assert _one(resource, context(TERMINOLOGY, stored)).patient_id == "pat-7"


def test_unrelated_observation_yields_nothing() -> None:
    """Vital signs and other labs are not trial events."""
    resource = measured(
        code=kit.coded(kit.LOINC, "8867-4", "Heart rate"),
        valueQuantity={"value": 72, "unit": "/min", "code": "/min"},
    )
    assert map_observation(resource, SRC, context(TERMINOLOGY)) == []


# --- official HL7 examples ---------------------------------------------------------------------


def test_official_observation_examples() -> None:
    """Of all HL7 Observation examples only two genetics results are study events (no TNM/smoking)."""
    found: dict[str, list[str]] = {}
    for path in sorted(EXAMPLES.glob("Observation-*.json")):
        resource = loads(path.read_bytes())
        events = map_observation(
            resource, SourceRef("Observation", resource["id"], 1), context(TERMINOLOGY)
        )
        if events:
            found[resource["id"]] = [e.kind.value for e in events]
    assert found == {
        "example-genetics-1": ["genomic_finding"],
        "example-genetics-brcapat": ["genomic_finding"],
    }


def test_official_second_hand_smoke_is_not_smoking_status() -> None:
    """Second-hand smoke exposure (Observation-secondsmoke) says nothing about the patient smoking."""
    resource = loads((EXAMPLES / "Observation-secondsmoke.json").read_bytes())
    assert (
        map_observation(resource, SourceRef("Observation", "secondsmoke", 1), context(TERMINOLOGY))
        == []
    )


def test_official_genetics_1_egfr_positive() -> None:
    """The HL7 EGFR example names the gene in the core geneticsGene extension: a positive EGFR finding."""
    resource = loads((EXAMPLES / "Observation-example-genetics-1.json").read_bytes())
    [event] = map_observation(
        resource, SourceRef("Observation", "example-genetics-1", 1), context(TERMINOLOGY)
    )
    assert event.to_json() == {
        "kind": "genomic_finding",
        "date": day_json("2013-04-03T15:30:10+01:00", "time", "2013-04-03"),
        "end": None,
        "values": {
            "genes": ["EGFR"],
            "result": "positive",
            "method": None,
            "specimen_kind": "tissue",
            "value": {
                "coding": [{"system": kit.SNOMED, "code": "10828004", "display": "Positive"}]
            },
            "status": "final",
        },
        "concepts": [
            match_json("egfr_gene", "name", "EGFR"),
            match_json("result_positive", "name", "Positive"),
        ],
        "source": source_json("Observation", "example-genetics-1"),
    }
    assert event.patient_id == "example"


def test_official_genetics_brcapat_has_no_study_gene() -> None:
    """A BRCA result is a genomic finding but names none of EGFR/ALK/ROS1, so it cannot exclude."""
    resource = loads((EXAMPLES / "Observation-example-genetics-brcapat.json").read_bytes())
    [event] = map_observation(
        resource, SourceRef("Observation", "example-genetics-brcapat", 1), context(TERMINOLOGY)
    )
    assert (event.date, event.patient_id) == (None, "brcapat")
    assert dict(event.values) == {
        "genes": [],
        "result": None,
        "method": None,
        "specimen_kind": None,
        "value": None,
        "status": "final",
    }
    assert concept_matches(event) == [("genetic_variant_assessment", "name")]


def test_malformed_elements_map_to_nothing_not_an_error() -> None:
    """A wrong-shaped element (number for an array) must not crash ingest; it just reads as absent."""
    resource = measured(
        code=kit.GENETIC_VARIANT, component=1, interpretation=True, extension="x", specimen=[1]
    )
    assert dict(_one(resource).values) == {
        "genes": [],
        "result": None,
        "method": None,
        "specimen_kind": None,
        "value": None,
        "status": "final",
    }
