"""Known answers for the Patient mapper: demographics (matching covariates) and death (survival)."""

from __future__ import annotations

import json
from collections import Counter
from functools import partial
from typing import Any

import pytest

from fhir_mapping.events.encounter import map_encounter
from fhir_mapping.events.medication_exposure import map_medication_request
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.events.patient import map_patient
from fhir_mapping.events.procedure import map_procedure
from service.protocol.terminology import build_terminology
from tests.conftest import TEST_DATA
from tests.kit.expected import day_json, source_json
from tests.kit.fhir import OMB, US_CORE_BIRTHSEX, US_CORE_ETHNICITY, US_CORE_RACE, patient
from tests.kit.mapping import NSCLC_PATIENT, context, synthea_events

TERMINOLOGY = build_terminology()
SRC = SourceRef("Patient", "pat-1", 1)  # the Patient version the events come from

# A US Core Patient with two OMB race categories, an ethnicity and a month-precision birth date.
us_core_patient = partial(
    patient,
    id="pat-1",
    gender="female",
    birth_date="1958-04",
    extension=[
        {
            "url": US_CORE_RACE,
            "extension": [
                {
                    "url": "ombCategory",
                    "valueCoding": {
                        "system": OMB,
                        "code": "2054-5",
                        "display": "Black or African American",
                    },
                },
                {
                    "url": "ombCategory",
                    "valueCoding": {"system": OMB, "code": "2106-3", "display": "White"},
                },
                {
                    "url": "detailed",
                    "valueCoding": {
                        "system": OMB,
                        "code": "2058-6",
                        "display": "African American",
                    },
                },
                {"url": "text", "valueString": "Black and White"},
            ],
        },
        {
            "url": US_CORE_ETHNICITY,
            "extension": [
                {
                    "url": "ombCategory",
                    "valueCoding": {
                        "system": OMB,
                        "code": "2135-2",
                        "display": "Hispanic or Latino",
                    },
                },
                {"url": "text", "valueString": "Hispanic"},
            ],
        },
        {"url": US_CORE_BIRTHSEX, "valueCode": "F"},
    ],
)


def _kinds(events: list[TrialEvent]) -> list[EventKind]:
    """The kinds of a list of events, in order."""
    return [e.kind for e in events]


def test_demographics_from_us_core_extensions() -> None:
    """Matching uses sex and race exactly: OMB categories and the text must come through as sent."""
    [event] = map_patient(us_core_patient(), SRC, context(TERMINOLOGY))
    assert event.kind is EventKind.DEMOGRAPHICS
    assert event.patient_id == "pat-1"
    assert event.date is not None
    assert event.date.to_json() == day_json("1958-04", "month", "1958-04-01", "1958-04-30")
    assert dict(event.values) == {
        "gender": "female",
        "birth_date": "1958-04",
        "race": [
            {"code": "2054-5", "display": "Black or African American"},
            {"code": "2106-3", "display": "White"},
        ],
        "race_text": "Black and White",
        "ethnicity": [{"code": "2135-2", "display": "Hispanic or Latino"}],
        "ethnicity_text": "Hispanic",
        "deceased": False,
    }
    assert event.concepts == ()


@pytest.mark.parametrize(
    ("deceased", "death_date", "death_source"),
    [
        (
            {"deceasedDateTime": "2025-03-01T23:30:00-05:00"},
            day_json("2025-03-01T23:30:00-05:00", "time", "2025-03-01"),
            "deceasedDateTime",
        ),
        (
            {"deceasedDateTime": "2025-03-02T00:30:00+14:00"},
            day_json("2025-03-02T00:30:00+14:00", "time", "2025-03-02"),
            "deceasedDateTime",
        ),
        (
            {"deceasedDateTime": "2025"},
            day_json("2025", "year", "2025-01-01", "2025-12-31"),
            "deceasedDateTime",
        ),
        ({"deceasedBoolean": True}, None, "deceasedBoolean"),
    ],
    ids=["evening-minus5", "morning-plus14", "year-only", "boolean"],
)
def test_death_event(
    deceased: dict[str, Any], death_date: dict[str, Any] | None, death_source: str
) -> None:
    """Overall survival needs the death date on the local day, or at least the fact of death."""
    events = map_patient(us_core_patient(**deceased), SRC, context(TERMINOLOGY))
    assert _kinds(events) == [EventKind.DEMOGRAPHICS, EventKind.DEATH]
    demographics, death = events
    assert demographics.values["deceased"] is True
    assert death.patient_id == "pat-1"
    assert (death.date.to_json() if death.date else None) == death_date
    assert dict(death.values) == {"source": death_source}


@pytest.mark.parametrize("deceased", [{}, {"deceasedBoolean": False}], ids=["absent", "false"])
def test_alive_patient_has_no_death_event(deceased: dict[str, Any]) -> None:
    """No death element (or an explicit false) must not censor or end anyone's survival."""
    events = map_patient(us_core_patient(**deceased), SRC, context(TERMINOLOGY))
    assert _kinds(events) == [EventKind.DEMOGRAPHICS]
    assert events[0].values["deceased"] is False


def test_inactive_patient_still_maps() -> None:
    """Patient.active false means the record is not in use, not that the facts are wrong."""
    events = map_patient(us_core_patient(active=False), SRC, context(TERMINOLOGY))
    assert _kinds(events) == [EventKind.DEMOGRAPHICS]


def test_patient_id_comes_from_the_source_version() -> None:
    """The stored id (assigned on ingest) is authoritative, not whatever id the body carries."""
    [event] = map_patient(
        us_core_patient(id="client-side-id"),
        SourceRef("Patient", "server-id", 1),
        context(TERMINOLOGY),
    )
    assert event.patient_id == "server-id"


def test_patient_without_us_core_data() -> None:
    """A bare Patient still yields demographics, with empty race/ethnicity rather than guesses."""
    [event] = map_patient(patient(), SRC, context(TERMINOLOGY))
    assert event.date is None
    assert dict(event.values) == {
        "gender": None,
        "birth_date": None,
        "race": [],
        "race_text": None,
        "ethnicity": [],
        "ethnicity_text": None,
        "deceased": False,
    }


def test_official_example_patient_f001() -> None:
    """The HL7 NSCLC case patient (f001): alive, male, born 1944-11-17, no US Core race data."""
    resource = json.loads((TEST_DATA / "fhir-r4-examples" / "Patient-f001.json").read_bytes())
    events = map_patient(resource, SourceRef("Patient", "f001", 1), context(TERMINOLOGY))
    assert [e.to_json() for e in events] == [
        {
            "kind": "demographics",
            "date": day_json("1944-11-17", "day", "1944-11-17"),
            "end": None,
            "values": {
                "gender": "male",
                "birth_date": "1944-11-17",
                "race": [],
                "race_text": None,
                "ethnicity": [],
                "ethnicity_text": None,
                "deceased": False,
            },
            "concepts": [],
            "source": source_json("Patient", "f001"),
        }
    ]
    assert events[0].patient_id == "f001"


def test_synthea_nsclc_patient_all_events() -> None:
    """The whole Synthea NSCLC patient maps to exactly these event counts, all on one patient."""
    events = [
        event
        for resource_type, mapper in (
            ("Patient", map_patient),
            ("Procedure", map_procedure),
            ("MedicationRequest", map_medication_request),
            ("Encounter", map_encounter),
        )
        for event in synthea_events(TERMINOLOGY, resource_type, mapper)
    ]
    assert Counter(e.kind for e in events) == {
        EventKind.DEMOGRAPHICS: 1,
        EventKind.DEATH: 1,
        EventKind.PROCEDURE: 587,
        EventKind.DRUG_EXPOSURE: 447,
        EventKind.ENCOUNTER: 90,
    }
    assert {e.patient_id for e in events} == {NSCLC_PATIENT}


def test_synthea_nsclc_patient_demographics_and_death() -> None:
    """Synthea's NSCLC patient: white, not Hispanic, female, died 1989-05-09 (local day)."""
    events = synthea_events(TERMINOLOGY, "Patient", map_patient)
    source = {
        "resource_type": "Patient",
        "id": NSCLC_PATIENT,
        "version": "1",
        "reference": f"Patient/{NSCLC_PATIENT}/_history/1",
    }
    assert [e.to_json() for e in events] == [
        {
            "kind": "demographics",
            "date": day_json("1927-05-21", "day", "1927-05-21"),
            "end": None,
            "values": {
                "gender": "female",
                "birth_date": "1927-05-21",
                "race": [{"code": "2106-3", "display": "White"}],
                "race_text": "White",
                "ethnicity": [{"code": "2186-5", "display": "Not Hispanic or Latino"}],
                "ethnicity_text": "Not Hispanic or Latino",
                "deceased": True,
            },
            "concepts": [],
            "source": source,
        },
        {
            "kind": "death",
            "date": day_json("1989-05-09T20:35:22-04:00", "time", "1989-05-09"),
            "end": None,
            "values": {"source": "deceasedDateTime"},
            "concepts": [],
            "source": source,
        },
    ]
