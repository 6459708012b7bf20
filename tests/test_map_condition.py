"""Known answers for the Condition mapper: diagnoses, cirAE terms, AE flags, dates and voids."""

from __future__ import annotations

import datetime as dt
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from fhir_mapping.events.condition import map_condition
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.json_codec import loads
from service.protocol.terminology import build_terminology
from tests.conftest import TEST_DATA
from tests.kit import fhir as kit
from tests.kit.expected import day_json, match_json, source_json
from tests.kit.mapping import concept_matches, context, single

TERMINOLOGY = build_terminology()
EXAMPLES = TEST_DATA / "fhir-r4-examples"
SRC = SourceRef("Condition", "c1", 1)  # the source version every fixture event claims
# An active, confirmed encounter diagnosis of patient p1 recorded on 2025-02-10.
diagnosis = partial(
    kit.condition, category=kit.condition_category("encounter-diagnosis"), recorded="2025-02-10"
)


def _one(resource: dict[str, Any], *stored: dict[str, Any]) -> TrialEvent:
    """The single condition event a Condition must yield (references resolve to `stored`)."""
    return single(map_condition(resource, SRC, context(TERMINOLOGY, *stored)), EventKind.CONDITION)


def _concepts(event: TrialEvent) -> list[tuple[Any, ...]]:
    """(concept, matched_by, code) triples in order: what eligibility and the cohort read."""
    return concept_matches(event, "concept", "matched_by", "code")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        pytest.param(
            kit.LUNG_CANCER_C34_90,
            [("lung_cancer", "code", "C34.90")],
            id="C34.90-lung-cancer-without-histology",
        ),
        pytest.param(
            kit.coded(kit.SNOMED, "254637007", "Non-small cell lung cancer (disorder)"),
            [("nsclc", "code", "254637007"), ("lung_cancer", "name", None)],
            id="NSCLC-snomed-code",
        ),
        pytest.param(
            {"text": "Adenocarcinoma of lung"},
            [("nsclc", "name", None)],
            id="NSCLC-histology-text-only",
        ),
        pytest.param(
            {"coding": [{"display": "Non-small cell lung cancer, right upper lobe"}]},
            [("nsclc", "name", None), ("lung_cancer", "name", None)],
            id="name-only-coding",
        ),
        pytest.param(
            kit.LUNG_METASTASIS,
            [("metastatic_disease", "code", "C78.01"), ("distant_metastasis", "code", "C78.01")],
            id="C78.01-lung-metastasis",
        ),
        pytest.param(
            kit.BONE_METASTASIS,
            [("metastatic_disease", "code", "C79.51"), ("distant_metastasis", "code", "C79.51")],
            id="C79.51-bone-metastasis",
        ),
        pytest.param(
            kit.RHEUMATOID_ARTHRITIS,
            [("autoimmune_disease", "code", "M05.79")],
            id="M05.79-rheumatoid-arthritis",
        ),
        pytest.param(
            kit.coded(
                kit.ICD10CM,
                "M0579",
                "Rheumatoid arthritis with rheumatoid factor of multiple sites",
            ),
            [("autoimmune_disease", "code", "M0579")],
            id="M0579-dotless",
        ),
        pytest.param(
            kit.coded(kit.ICD10CM, "L40.0", "Psoriasis vulgaris"),
            [("autoimmune_disease", "code", "L40.0")],
            id="L40.0-psoriasis-is-not-a-cirAE-term",
        ),
        pytest.param(
            kit.coded(kit.ICD10CM, "E10.9", "Type 1 diabetes mellitus without complications"),
            [("autoimmune_disease", "code", "E10.9")],
            id="E10.9-type-1-diabetes",
        ),
        pytest.param(
            kit.coded(kit.SNOMED, None, "Maculopapular rash"),
            [("cutaneous_irae", "name", None)],
            id="cirAE-maculopapular-rash",
        ),
        pytest.param(
            {"text": "Bullous pemphigoid"},
            [("cutaneous_irae", "name", None)],
            id="cirAE-bullous-pemphigoid",
        ),
        pytest.param(
            {"text": "Crash injury of left foot"},
            [],
            id="rash-inside-a-word-is-not-a-rash",
        ),
        pytest.param(
            {"text": "Family history of rheumatoid arthritis"},
            [],
            id="family-history-is-not-the-patients-disease",
        ),
    ],
)
def test_concepts_of_condition_codes(code: dict[str, Any], expected: list[Any]) -> None:
    """Each diagnosis lands in exactly the value sets eligibility and the cirAE cohort expect."""
    assert _concepts(_one(diagnosis(code=code))) == expected


def test_cirae_with_month_onset_keeps_the_month() -> None:
    """A cirAE dated '2025-06' covers the whole month, so onset-after-ICB checks stay honest."""
    event = _one(
        diagnosis(
            code="Maculopapular rash",
            onsetDateTime="2025-06",
            clinical="resolved",
            abatementDateTime="2025-08-14",
        )
    )
    assert event.date is not None
    assert (event.date.precision, event.date.first, event.date.last) == (
        "month",
        dt.date(2025, 6, 1),
        dt.date(2025, 6, 30),
    )
    assert event.end is not None
    assert (event.end.text, event.end.precision) == ("2025-08-14", "day")
    assert event.patient_id == "p1"
    assert dict(event.values) == {
        "code": {"coding": [], "text": "Maculopapular rash"},
        "clinical_status": "resolved",
        "verification_status": "confirmed",
        "categories": ["encounter-diagnosis"],
        "icd10": [],
        "is_adverse_event": False,
        "grade": None,
        "grade_source": None,
        "stage": [],
        "onset": {"type": "dateTime", "start": "2025-06"},
        "recorded_date": "2025-02-10",
    }


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param(
            diagnosis(
                code="Bullous pemphigoid",
                verification="entered-in-error",
            ),
            id="entered-in-error",
        ),
        pytest.param(
            diagnosis(
                code=kit.coded(kit.ICD10CM, "M05.79", "Rheumatoid arthritis"),
                verification="refuted",
            ),
            id="refuted",
        ),
    ],
)
def test_void_or_refuted_condition_yields_nothing(resource: dict[str, Any]) -> None:
    """A retracted or ruled-out diagnosis must not exclude anyone or count as a cirAE."""
    assert map_condition(resource, SRC, context(TERMINOLOGY)) == []


def test_icd10_codes_kept_as_written_for_charlson() -> None:
    """Charlson scoring needs every ICD-10(-CM/WHO) code exactly as sent, and nothing else."""
    code = {
        "coding": [
            {"system": kit.ICD10CM, "code": "E11.9", "display": "Type 2 diabetes mellitus"},
            {"system": kit.SNOMED, "code": "44054006", "display": "Diabetes mellitus type 2"},
            {"system": kit.ICD10, "code": "E11.9"},
        ]
    }
    event = _one(diagnosis(code=code))
    assert event.values["icd10"] == ["E11.9", "E11.9"]
    assert event.concepts == ()


@pytest.mark.parametrize(
    ("extra", "is_ae", "grade"),
    [
        pytest.param(
            {"category": [{"coding": [{"code": "adverse-event", "display": "Adverse Event"}]}]},
            True,
            None,
            id="category-code",
        ),
        pytest.param(
            {"category": [{"text": "Adverse event (immune-related)"}]},
            True,
            None,
            id="category-text",
        ),
        pytest.param(
            {
                "extension": [
                    {
                        "url": kit.LEGACY_CTCAE_GRADE,
                        "valueInteger": 3,
                    }
                ]
            },
            True,
            3,
            id="legacy-ctcae-grade-extension",
        ),
        pytest.param(
            {
                "extension": [
                    {
                        "url": kit.AE_GRADE,
                        "valueCodeableConcept": {
                            "coding": [{"system": kit.NCIT, "code": "C41339"}],
                        },
                    }
                ]
            },
            True,
            2,
            id="ae-grade-extension-NCIt-code",
        ),
        pytest.param({}, False, None, id="plain-diagnosis"),
    ],
)
def test_condition_flagged_as_adverse_event(extra: dict[str, Any], is_ae: bool, grade: Any) -> None:
    """Safety tables count Conditions flagged as AEs, graded by the same extensions as AdverseEvent."""
    event = _one(diagnosis(code="Pruritus", **extra))
    assert (event.values["is_adverse_event"], event.values["grade"]) == (is_ae, grade)


def test_onset_with_offset_keeps_the_local_day() -> None:
    """23:30 at -05:00 is still 1 March where it was recorded, not 2 March UTC."""
    event = _one(diagnosis(code="Pruritus", onsetDateTime="2025-03-01T23:30:00-05:00"))
    assert event.date is not None
    assert (event.date.day, event.date.precision) == (dt.date(2025, 3, 1), "time")


@pytest.mark.parametrize(
    ("extra", "date", "end"),
    [
        pytest.param(
            {"onsetPeriod": {"start": "2024-11", "end": "2025-01"}},
            "2024-11",
            None,
            id="onsetPeriod-start",
        ),
        pytest.param(
            {"onsetString": "approximately November 2012"},
            "2025-02-10",
            None,
            id="onsetString-falls-back-to-recordedDate",
        ),
        pytest.param(
            {"onsetAge": {"value": 52, "unit": "years"}, "abatementPeriod": {"end": "2025-05-02"}},
            "2025-02-10",
            "2025-05-02",
            id="abatementPeriod-end",
        ),
        pytest.param(
            {"abatementString": "in remission"},
            "2025-02-10",
            None,
            id="abatementString-is-not-a-date",
        ),
    ],
)
def test_condition_dates(extra: dict[str, Any], date: str, end: str | None) -> None:
    """Only date-typed onset/abatement elements date a condition; anything else uses recordedDate."""
    event = _one(diagnosis(code="Pruritus", **extra))
    assert event.date is not None
    assert event.date.text == date
    assert (event.end.text if event.end else None) == end


def test_identifier_only_subject_resolves_to_the_patient() -> None:
    """Feeds that reference the patient by MRN only must still attach the event to that Patient."""
    stored = kit.patient(id="pat-42", mrn="MRN-0042")
    resource = diagnosis(
        code="Bullous pemphigoid",
        subject={"identifier": {"system": "urn:mrn", "value": "MRN-0042"}},
    )
    assert _one(resource, stored).patient_id == "pat-42"


def test_group_subject_has_no_patient() -> None:
    """A Condition about a Group is no one patient's diagnosis."""
    resource = diagnosis(code="Pruritus", subject={"reference": "Group/g1"})
    assert _one(resource).patient_id is None


def test_official_example_f002_nsclc() -> None:
    """The HL7 NSCLC example (Condition-f002) maps to exactly this event."""
    resource = loads((EXAMPLES / "Condition-f002.json").read_bytes())
    [event] = map_condition(resource, SourceRef("Condition", "f002", 1), context(TERMINOLOGY))
    assert event.to_json() == {
        "kind": "condition",
        "date": day_json("2011-05-05", "day", "2011-05-05"),
        "end": None,
        "values": {
            "code": {
                "coding": [
                    {
                        "system": kit.SNOMED,
                        "code": "254637007",
                        "display": "NSCLC - Non-small cell lung cancer",
                    }
                ]
            },
            "clinical_status": "active",
            "verification_status": "confirmed",
            "categories": ["439401001"],
            "icd10": [],
            "is_adverse_event": False,
            "grade": None,
            "grade_source": None,
            "stage": [
                {"coding": [{"system": kit.SNOMED, "code": "258219007", "display": "stage II"}]}
            ],
            "onset": {"type": "dateTime", "start": "2011-05-05"},
            "recorded_date": "2012-06-03",
        },
        "concepts": [
            {
                "concept": "nsclc",
                "matched_by": "code",
                "system": kit.SNOMED,
                "code": "254637007",
                "text": "NSCLC - Non-small cell lung cancer",
            },
            match_json("lung_cancer", "name", "NSCLC - Non-small cell lung cancer"),
        ],
        "source": source_json("Condition", "f002"),
    }
    assert event.patient_id == "f001"


def test_official_examples_other_than_f002_touch_no_study_value_set() -> None:
    """The other HL7 Condition examples (burns, sepsis, stroke…) must not look like study diagnoses."""
    found: dict[str, tuple[list[Any], str | None]] = {}
    for path in sorted(EXAMPLES.glob("Condition-*.json")):
        resource = loads(Path(path).read_bytes())
        [event] = map_condition(
            resource, SourceRef("Condition", resource["id"], 1), context(TERMINOLOGY)
        )
        found[resource["id"]] = (_concepts(event), event.date.text if event.date else None)
    assert found == {
        "example": ([], "2012-05-24"),
        "example2": ([], None),
        "f001": ([], "2011-08-05"),
        "f002": ([("nsclc", "code", "254637007"), ("lung_cancer", "name", None)], "2011-05-05"),
        "f003": ([], "2012-02-27"),
        "f201": ([], "2013-04-02"),
        "f202": ([], "2012-12-01"),
        "f203": ([], "2013-03-08"),
        "f204": ([], "2013-03-11"),
        "f205": ([], "2013-04-04"),
        "family-history": ([], None),
        "stroke": ([], "2010-07-18"),
    }


def test_malformed_elements_map_to_nothing_not_an_error() -> None:
    """A wrong-shaped element (number for an array) must not crash ingest; it just reads as absent."""
    resource = diagnosis(code="Pruritus", category=1, stage=True, extension={"url": 3})
    values = _one(resource).values
    assert (values["categories"], values["stage"], values["is_adverse_event"]) == ([], [], False)
