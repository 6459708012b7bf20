"""Known answers for the Encounter mapper: contacts that took place (follow-up, last data point)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from functools import partial

import pytest

from fhir_mapping.events.encounter import map_encounter
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from service.protocol.terminology import build_terminology
from tests.kit.expected import day_json, source_json
from tests.kit.fhir import ACT_CODE, SNOMED, coded, encounter, patient
from tests.kit.mapping import NSCLC_PATIENT, context, synthea_events

TERMINOLOGY = build_terminology()


SRC = SourceRef("Encounter", "enc1", 1)  # the Encounter version every fixture event claims


def _start(event: TrialEvent) -> tuple[dt.date, dt.datetime]:
    """Sort key of an event's start (every Synthea encounter has one)."""
    assert event.date is not None
    return event.date.sort_key()


# A finished ambulatory post-operative visit of patient p1 on 2025-04-21.
followup = partial(
    encounter,
    klass={"system": ACT_CODE, "code": "AMB", "display": "ambulatory"},
    type=[
        {
            "coding": [
                {"system": SNOMED, "code": "185349003", "display": "Encounter for check up"}
            ],
            "text": "Post-operative follow-up",
        },
        coded(SNOMED, "390906007", "Follow-up encounter"),
    ],
    serviceType={"text": "Thoracic surgery"},
    start="2025-04-21T14:00:00-04:00",
    end="2025-04-21T14:30:00-04:00",
)


def test_finished_encounter_exactly() -> None:
    """A finished visit is a contact: class, type labels, service and period come through."""
    [event] = map_encounter(followup(), SRC, context(TERMINOLOGY))
    assert event.patient_id == "p1"
    assert event.to_json() == {
        "kind": "encounter",
        "date": day_json("2025-04-21T14:00:00-04:00", "time", "2025-04-21"),
        "end": day_json("2025-04-21T14:30:00-04:00", "time", "2025-04-21"),
        "values": {
            "class": "AMB",
            "type": ["Post-operative follow-up", "Follow-up encounter"],
            "status": "finished",
            "service_type": "Thoracic surgery",
        },
        "concepts": [],
        "source": source_json("Encounter", "enc1"),
    }


@pytest.mark.parametrize(
    ("status", "events"),
    [
        ("finished", 1),
        ("in-progress", 1),
        ("arrived", 1),
        ("triaged", 1),
        ("onleave", 1),
        ("planned", 0),
        ("cancelled", 0),
        ("entered-in-error", 0),
        ("unknown", 0),
    ],
)
def test_only_contacts_that_happened(status: str, events: int) -> None:
    """A cancelled or merely planned visit is not the follow-up contact the protocol asks for."""
    found = map_encounter(followup(status=status), SRC, context(TERMINOLOGY))
    assert [(e.kind, e.values["status"]) for e in found] == [(EventKind.ENCOUNTER, status)] * events


@pytest.mark.parametrize(
    ("period", "date", "precision", "end"),
    [
        ({"start": "2025-03-01T23:30:00-05:00"}, "2025-03-01", "time", None),
        ({"start": "2025-03-02T00:30:00+14:00"}, "2025-03-02", "time", None),
        ({"start": "2025-04"}, "2025-04-01", "month", None),
        ({"start": "2025-04-21", "end": "2025-04-25"}, "2025-04-21", "day", "2025-04-25"),
        (None, None, None, None),
    ],
    ids=["evening-minus5", "morning-plus14", "month", "stay", "undated"],
)
def test_encounter_dates(
    period: dict[str, str] | None, date: str | None, precision: str | None, end: str | None
) -> None:
    """The follow-up window is counted in local days: the visit's day and precision must be exact."""
    resource = followup()
    del resource["period"]
    if period is not None:
        resource["period"] = period
    [event] = map_encounter(resource, SRC, context(TERMINOLOGY))
    assert (
        event.date.first.isoformat() if event.date else None,
        event.date.precision if event.date else None,
        event.end.text if event.end else None,
    ) == (date, precision, end)


def test_minimal_encounter() -> None:
    """Absent class, type and service type give None / empty, never a crash."""
    [event] = map_encounter(
        encounter(klass=None),
        SRC,
        context(TERMINOLOGY),
    )
    assert dict(event.values) == {
        "class": None,
        "type": [],
        "status": "finished",
        "service_type": None,
    }


def test_subject_by_identifier_only() -> None:
    """An encounter naming its patient by MRN only must land on the stored Patient id."""
    stored = patient(id="pat-42", mrn="A-77")
    subject = {"identifier": {"system": "urn:mrn", "value": "A-77"}}
    [event] = map_encounter(followup(subject=subject), SRC, context(TERMINOLOGY, stored))
    assert event.patient_id == "pat-42"


def test_synthea_nsclc_patient_encounters() -> None:
    """Synthea's NSCLC patient: 90 finished contacts, the last a death certification visit."""
    events = synthea_events(TERMINOLOGY, "Encounter", map_encounter)
    assert Counter(e.kind for e in events) == {EventKind.ENCOUNTER: 90}
    assert Counter(e.values["class"] for e in events) == {"IMP": 45, "AMB": 41, "EMER": 3, "HH": 1}
    assert {e.patient_id for e in events} == {NSCLC_PATIENT}
    last = max(events, key=_start)
    assert last.to_json() == {
        "kind": "encounter",
        "date": day_json("1989-05-13T23:58:16-04:00", "time", "1989-05-13"),
        "end": day_json("1989-05-14T00:13:16-04:00", "time", "1989-05-14"),
        "values": {
            "class": "AMB",
            "type": ["Death Certification"],
            "status": "finished",
            "service_type": None,
        },
        "concepts": [],
        "source": source_json("Encounter", "443ea916-cdcc-8baa-5cce-c9ca11bb6dba"),
    }
