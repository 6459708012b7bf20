"""Known answers for the AdverseEvent mapper: CTCAE grade, MedDRA code, dates, suspects, voids."""

from __future__ import annotations

import datetime as dt
from functools import partial
from typing import Any

import pytest

from fhir_mapping.events.adverse_event import grade_from_text, map_adverse_event
from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.json_codec import loads
from service.protocol.terminology import build_terminology
from tests.conftest import TEST_DATA
from tests.kit import fhir as kit
from tests.kit.expected import day_json, match_json, source_json
from tests.kit.mapping import context, single

TERMINOLOGY = build_terminology()
EXAMPLES = TEST_DATA / "fhir-r4-examples"
ALT_INCREASED = {
    "coding": [
        {"system": kit.MEDDRA, "code": "10001551", "display": "Alanine aminotransferase increased"}
    ],
    "text": "ALT increased to 200",
}
SRC = SourceRef("AdverseEvent", "ae1", 1)  # the source version every fixture event claims
# An actual AdverseEvent of patient p1 on 2025-03-20 (ALT increased, MedDRA coded).
reported = partial(kit.adverse_event, event=ALT_INCREASED, date="2025-03-20")


def _one(resource: dict[str, Any], ctx: MappingContext | None = None) -> TrialEvent:
    """The single adverse event an AdverseEvent must yield."""
    return single(
        map_adverse_event(resource, SRC, ctx or context(TERMINOLOGY)), EventKind.ADVERSE_EVENT
    )


@pytest.mark.parametrize(
    ("extension", "grade"),
    [
        pytest.param(
            {"url": kit.AE_GRADE, "valueCodeableConcept": {"coding": [{"code": "3"}]}},
            3,
            id="ae-grade-code-3",
        ),
        pytest.param(
            {"url": kit.AE_GRADE, "valueCodeableConcept": {"coding": [{"display": "Grade 3"}]}},
            3,
            id="ae-grade-display-Grade-3",
        ),
        pytest.param(
            {
                "url": kit.AE_GRADE,
                "valueCodeableConcept": {
                    "coding": [{"system": kit.NCIT, "code": "C41337"}],
                    "text": "Grade 4 Life Threatening or Disabling Adverse Event",
                },
            },
            4,
            id="ae-grade-NCIt-C41337",
        ),
        pytest.param(
            {
                "url": kit.AE_GRADE,
                "valueCodeableConcept": {"coding": [{"system": kit.NCIT, "code": "C48275"}]},
            },
            5,
            id="ae-grade-NCIt-code-only",
        ),
        pytest.param(
            {"url": kit.LEGACY_CTCAE_GRADE, "valueInteger": 2}, 2, id="ctcae-grade-integer"
        ),
        pytest.param(
            {"url": kit.LEGACY_CTCAE_GRADE, "valueString": "Grade 1"}, 1, id="ctcae-grade-string"
        ),
        pytest.param(
            {"url": kit.LEGACY_CTCAE_GRADE, "valueCodeableConcept": {"text": "CTCAE grade III"}},
            3,
            id="ctcae-grade-roman",
        ),
        pytest.param({"url": kit.LEGACY_CTCAE_GRADE, "valueInteger": 7}, None, id="out-of-range"),
        pytest.param(
            {"url": kit.LEGACY_CTCAE_GRADE, "valueString": "severe"}, None, id="not-a-grade"
        ),
        pytest.param(
            {"url": "http://example.org/fhir/StructureDefinition/grade-note", "valueInteger": 3},
            None,
            id="other-extension-is-not-a-grade",
        ),
    ],
)
def test_grade_from_both_extension_styles(extension: dict[str, Any], grade: int | None) -> None:
    """Grade ≥ 3 rates need the CTCAE grade from the backport IG and the legacy extension alike."""
    assert _one(reported(extension=[extension])).values["grade"] == grade


@pytest.mark.parametrize(
    ("text", "grade"),
    [("3", 3), ("G2", 2), ("Grade 5 Death Related to Adverse Event", 5), ("6", None), ("", None)],
)
def test_grade_from_text(text: str, grade: int | None) -> None:
    """Grades written by hand ('G2', '3') read the same as coded ones; nothing else is a grade."""
    assert grade_from_text(text) == grade


@pytest.mark.parametrize(
    "system",
    [kit.MEDDRA, kit.MDR, "http://example.org/fhir/CodeSystem/MDRAE"],
)
def test_meddra_code_from_each_system(system: str) -> None:
    """CLINICAL.md accepts three MedDRA system spellings; each yields the code."""
    event_concept = {"coding": [{"system": system, "code": "10037868", "display": "Rash"}]}
    assert _one(reported(event=event_concept)).values["meddra"] == "10037868"


def test_non_meddra_code_is_not_meddra() -> None:
    """A SNOMED-coded term has no MedDRA code (None, not the SNOMED code)."""
    event_concept = {"coding": [{"system": kit.SNOMED, "code": "271807003", "display": "Eruption"}]}
    assert _one(reported(event=event_concept)).values["meddra"] is None


def test_all_values_of_a_graded_cirae() -> None:
    """A graded, MedDRA-coded rash carries every value safety tables and the cirAE cohort read."""
    stored = kit.medication(id="med-cemi", code="cemiplimab-rwlc 350 MG in 7 ML Injection")
    resource = reported(
        event={
            "coding": [{"system": kit.MDR, "code": "10037868", "display": "Rash maculo-papular"}],
            "text": "Maculopapular rash, trunk",
        },
        date="2025-03-01T23:30:00-05:00",
        seriousness={"coding": [{"system": kit.AE_SERIOUSNESS, "code": "non-serious"}]},
        outcome={"coding": [{"system": kit.AE_OUTCOME, "code": "resolved", "display": "Resolved"}]},
        extension=[
            {
                "url": kit.AE_GRADE,
                "valueCodeableConcept": {"coding": [{"system": kit.NCIT, "code": "C41339"}]},
            },
            {"url": f"{kit.AE_BACKPORT}/resolve-date", "valueDateTime": "2025-04-02"},
        ],
        suspectEntity=[
            {"instance": {"reference": "Medication/med-cemi"}},
            {"instance": {"reference": "Medication/unknown", "display": "Dupixent 300 mg pen"}},
            {"instance": {"reference": "Procedure/biopsy-1", "display": "Core needle biopsy"}},
        ],
    )
    event = _one(resource, context(TERMINOLOGY, stored))
    assert dict(event.values) == {
        "term": {
            "coding": [{"system": kit.MDR, "code": "10037868", "display": "Rash maculo-papular"}],
            "text": "Maculopapular rash, trunk",
        },
        "term_text": "Maculopapular rash, trunk",
        "meddra": "10037868",
        "grade": 2,
        "grade_source": kit.AE_GRADE,
        "severity": None,
        "seriousness": "non-serious",
        "outcome": "resolved",
        "suspect_medications": ["cemiplimab-rwlc 350 MG in 7 ML Injection", "Dupixent 300 mg pen"],
        "related_suspects": [],  # no causality assessed
        "resolution_date": "2025-04-02",
        "recorded_date": None,
    }
    assert [(c.concept, c.matched_by, c.text) for c in event.concepts] == [
        ("cutaneous_irae", "name", "Maculopapular rash, trunk")
    ]
    assert event.date is not None
    assert (event.date.day, event.date.precision) == (dt.date(2025, 3, 1), "time")
    assert event.end is not None
    assert (event.end.text, event.end.precision) == ("2025-04-02", "day")


def test_backport_suspect_entity_extension() -> None:
    """The backport IG moves suspects into an extension; the medicine still names the suspect."""
    administration = kit.medication_administration(
        id="ma-dupi", medication="dupilumab 300 MG/2 ML prefilled syringe", patient=None
    )
    resource = reported(
        extension=[
            {
                "url": f"{kit.AE_BACKPORT}/suspect-entity",
                "extension": [
                    {
                        "url": "instance",
                        "valueReference": {"reference": "MedicationAdministration/ma-dupi"},
                    },
                    {
                        "url": "causality",
                        "extension": [
                            {
                                "url": "entityRelatedness",
                                "valueCodeableConcept": {"text": "Possibly Related"},
                            }
                        ],
                    },
                ],
            }
        ]
    )
    event = _one(resource, context(TERMINOLOGY, administration))
    assert event.values["suspect_medications"] == ["dupilumab 300 MG/2 ML prefilled syringe"]


@pytest.mark.parametrize(
    "url",
    [
        "http://example.org/fhir/StructureDefinition/resolveDate",
        "http://example.org/fhir/StructureDefinition/resolution-date",
        f"{kit.AE_BACKPORT}/resolve-date",
    ],
)
def test_resolution_date_extension_styles(url: str) -> None:
    """cirAE resolution is dated from whichever resolve-date extension the feed uses."""
    event = _one(reported(extension=[{"url": url, "valueDateTime": "2025-05"}]))
    assert event.values["resolution_date"] == "2025-05"
    assert event.end is not None
    assert event.end.precision == "month"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param({}, "2025-03-20", id="date"),
        pytest.param({"date": None, "detected": "2025-03-18"}, "2025-03-18", id="detected"),
        pytest.param(
            {"date": None, "recordedDate": "2025-03-25T10:00:00Z"},
            "2025-03-25T10:00:00Z",
            id="recordedDate",
        ),
        pytest.param(
            {"date": "2025-03-20", "detected": "2025-03-18"}, "2025-03-20", id="date-wins"
        ),
    ],
)
def test_adverse_event_date_order(extra: dict[str, Any], expected: str) -> None:
    """The AE is dated when it happened, else when detected, else when recorded."""
    event = _one(reported(**extra))
    assert event.date is not None
    assert event.date.text == expected


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param(reported(actuality="potential"), id="potential"),
        pytest.param(
            reported(
                modifierExtension=[
                    {"url": f"{kit.AE_BACKPORT}/status", "valueCode": "entered-in-error"},
                ]
            ),
            id="backport-status-entered-in-error",
        ),
        pytest.param(reported(status="entered-in-error"), id="status-entered-in-error"),
    ],
)
def test_potential_or_void_adverse_event_yields_nothing(resource: dict[str, Any]) -> None:
    """A near miss or a retracted AE is not a safety event."""
    assert map_adverse_event(resource, SRC, context(TERMINOLOGY)) == []


def test_identifier_only_subject_resolves_to_the_patient() -> None:
    """AE feeds from safety systems often carry only the MRN; the event still finds its Patient."""
    stored = kit.patient(id="pat-9", mrn="MRN-9")
    resource = reported(subject={"identifier": {"system": "urn:mrn", "value": "MRN-9"}})
    assert _one(resource, context(TERMINOLOGY, stored)).patient_id == "pat-9"


def test_practitioner_subject_has_no_patient() -> None:
    """R4 allows a Practitioner as AE subject; that is no trial patient's event."""
    resource = reported(subject={"reference": "Practitioner/pr1"})
    assert _one(resource).patient_id is None


def test_official_example() -> None:
    """The HL7 AdverseEvent example (a mild rash) maps to exactly this event."""
    resource = loads((EXAMPLES / "AdverseEvent-example.json").read_bytes())
    [event] = map_adverse_event(
        resource, SourceRef("AdverseEvent", "example", 1), context(TERMINOLOGY)
    )
    assert event.to_json() == {
        "kind": "adverse_event",
        "date": day_json("2017-01-29T12:34:56+00:00", "time", "2017-01-29"),
        "end": None,
        "values": {
            "term": {
                "coding": [
                    {"system": kit.SNOMED, "code": "304386008", "display": "O/E - itchy rash"}
                ],
                "text": "This was a mild rash on the left forearm",
            },
            "term_text": "This was a mild rash on the left forearm",
            "meddra": None,
            "grade": None,
            "grade_source": None,
            "severity": "mild",
            "seriousness": "Non-serious",
            "outcome": None,
            "suspect_medications": [],
            "related_suspects": [],
            "resolution_date": None,
            "recorded_date": None,
        },
        "concepts": [
            match_json("cutaneous_irae", "name", "This was a mild rash on the left forearm")
        ],
        "source": source_json("AdverseEvent", "example"),
    }
    assert event.patient_id == "example"


def test_official_example_suspect_resolved_from_store() -> None:
    """The example's suspect has no display; once Medication/example is held, its name is used."""
    resource = loads((EXAMPLES / "AdverseEvent-example.json").read_bytes())
    stored = kit.medication(
        id="example", code={"coding": [{"display": "Amoxicillin 250 MG Oral Capsule"}]}
    )
    [event] = map_adverse_event(
        resource, SourceRef("AdverseEvent", "example", 1), context(TERMINOLOGY, stored)
    )
    assert event.values["suspect_medications"] == ["Amoxicillin 250 MG Oral Capsule"]


def test_malformed_elements_map_to_nothing_not_an_error() -> None:
    """A wrong-shaped element (number for an array) must not crash ingest; it just reads as absent."""
    resource = reported(extension=True, modifierExtension=1, suspectEntity={"instance": 3})
    values = _one(resource).values
    assert (values["grade"], values["suspect_medications"], values["resolution_date"]) == (
        None,
        [],
        None,
    )
