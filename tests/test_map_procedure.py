"""Known answers for Procedure and ServiceRequest: lung resection, biopsy, generic procedures."""

from __future__ import annotations

import json
from collections import Counter
from functools import partial
from typing import Any

import pytest

from fhir_mapping.events.model import EventKind, SourceRef
from fhir_mapping.events.procedure import map_procedure, map_service_request
from service.protocol.terminology import build_terminology
from tests.conftest import TEST_DATA
from tests.kit import fhir as kit
from tests.kit.expected import day_json, source_json
from tests.kit.mapping import NSCLC_PATIENT, concept_matches, context, synthea_events

TERMINOLOGY = build_terminology()
WEDGE = {"text": "Right upper lobe wedge resection"}
CORE_BIOPSY = {"text": "CT-guided percutaneous core needle biopsy, right upper lobe"}
RUL = {
    "coding": [
        {
            "system": kit.SNOMED,
            "code": "45653009",
            "display": "Structure of upper lobe of right lung",
        }
    ],
    "text": "Right upper lobe",
}


SRC = SourceRef("Procedure", "pr1", 1)  # the source version every fixture event claims
# A completed Procedure of patient p1 performed on 2025-03-17.
performed = partial(kit.procedure, performed="2025-03-17T08:05:00-04:00")
# An active ServiceRequest (order) of patient p1 written on 2025-02-27.
requested = partial(kit.service_request, authored="2025-02-27")
# How a partial lobectomy's code matches, as events and evidence show it.
PARTIAL_LOBECTOMY_MATCHES = [
    {
        "concept": concept,
        "matched_by": "code",
        "system": kit.SNOMED,
        "code": "359615001",
        "text": "Partial lobectomy of lung",
    }
    for concept in ("lung_resection", "partial_lobectomy")
]


def _code_value(code: dict[str, Any]) -> dict[str, Any]:
    """The values shape of a fixture code: its codings (always a list), then its text if any."""
    out: dict[str, Any] = {"coding": code.get("coding", [])}
    if "text" in code:
        out["text"] = code["text"]
    return out


@pytest.mark.parametrize(
    ("code", "kind", "specific", "concepts"),
    [
        (
            kit.LOBECTOMY,
            EventKind.LUNG_RESECTION,
            {"resection_type": "lobectomy"},
            [("lung_resection", "code"), ("lobectomy", "code")],
        ),
        (
            kit.PARTIAL_LOBECTOMY,
            EventKind.LUNG_RESECTION,
            {"resection_type": "partial_lobectomy"},
            [("lung_resection", "code"), ("partial_lobectomy", "code")],
        ),
        (
            {"text": "Partial lobectomy, left lower lobe"},
            EventKind.LUNG_RESECTION,
            {"resection_type": "partial_lobectomy"},
            [("lung_resection", "name"), ("partial_lobectomy", "name")],
        ),
        (
            WEDGE,
            EventKind.LUNG_RESECTION,
            {"resection_type": "wedge_resection"},
            [("lung_resection", "name"), ("wedge_resection", "name")],
        ),
        (
            {"coding": [{"system": kit.SNOMED, "code": "49795001", "display": "Pneumonectomy"}]},
            EventKind.LUNG_RESECTION,
            {"resection_type": "pneumonectomy"},
            [("lung_resection", "code"), ("pneumonectomy", "code")],
        ),
        (
            {"text": "VATS anatomic segmentectomy"},
            EventKind.LUNG_RESECTION,
            {"resection_type": "segmentectomy"},
            [("lung_resection", "name"), ("segmentectomy", "name")],
        ),
        (
            {"text": "Robotic-assisted pulmonary resection"},
            EventKind.LUNG_RESECTION,
            {"resection_type": "other"},
            [("lung_resection", "name")],
        ),
        (
            CORE_BIOPSY,
            EventKind.BIOPSY,
            {"core_needle": True, "site": None},
            [("core_needle_biopsy", "name")],
        ),
        (
            kit.LUNG_BIOPSY,
            EventKind.BIOPSY,
            {"core_needle": False, "site": None},
            [("lung_biopsy", "code")],
        ),
        (
            {"text": "Core needle biopsy of lung"},
            EventKind.BIOPSY,
            {"core_needle": True, "site": None},
            [("core_needle_biopsy", "name"), ("lung_biopsy", "name")],
        ),
        ({"text": "Thyroid lobectomy"}, EventKind.PROCEDURE, {}, []),
        (
            {
                "coding": [
                    {
                        "system": kit.SNOMED,
                        "code": "122548005",
                        "display": "Biopsy of breast (procedure)",
                    }
                ]
            },
            EventKind.PROCEDURE,
            {},
            [],
        ),
        ({"text": "Plain chest X-ray"}, EventKind.PROCEDURE, {}, []),
    ],
    ids=[
        "lobectomy-code",
        "partial-lobectomy-code",
        "partial-lobectomy-name",
        "wedge-name",
        "pneumonectomy-code",
        "segmentectomy-name",
        "resection-other",
        "core-needle-name",
        "lung-biopsy-code",
        "core-needle-lung",
        "thyroid-excluded",
        "breast-biopsy",
        "generic",
    ],
)
def test_procedure_kind_by_code_or_name(
    code: dict[str, Any], kind: EventKind, specific: dict[str, Any], concepts: list[tuple[str, str]]
) -> None:
    """Surgery and screening biopsies are found by code or by name; partial before plain lobectomy."""
    [event] = map_procedure(performed(code=code), SRC, context(TERMINOLOGY))
    assert event.kind is kind
    assert dict(event.values) == {
        "code": _code_value(code),
        "status": "completed",
        "planned": False,
        "body_site": [],
        **specific,
    }
    assert concept_matches(event) == concepts
    assert event.patient_id == "p1"


def test_biopsy_site_from_body_site() -> None:
    """The biopsy site is read from bodySite so the rule can tell a lung biopsy from another."""
    [event] = map_procedure(performed(code=CORE_BIOPSY, bodySite=[RUL]), SRC, context(TERMINOLOGY))
    assert (event.values["site"], event.values["body_site"], event.values["core_needle"]) == (
        "Right upper lobe",
        ["Right upper lobe"],
        True,
    )


@pytest.mark.parametrize(
    ("status", "planned"),
    [
        ("preparation", True),
        ("in-progress", True),
        ("completed", False),
        ("on-hold", False),
        ("stopped", False),
        ("unknown", False),
    ],
)
def test_procedure_planned_flag(status: str, planned: bool) -> None:
    """A resection in preparation is evidence of surgical candidacy, not of surgery on that day."""
    [event] = map_procedure(performed(code=kit.LOBECTOMY, status=status), SRC, context(TERMINOLOGY))
    assert (event.kind, event.values["status"], event.values["planned"]) == (
        EventKind.LUNG_RESECTION,
        status,
        planned,
    )


@pytest.mark.parametrize("status", ["not-done", "entered-in-error"])
def test_procedure_not_done_or_void(status: str) -> None:
    """A resection that did not happen must neither count as surgery nor as surgical candidacy."""
    assert (
        map_procedure(performed(code=kit.LOBECTOMY, status=status), SRC, context(TERMINOLOGY)) == []
    )


@pytest.mark.parametrize(
    ("timing", "date", "precision", "end"),
    [
        ({"performedDateTime": "2025-03-01T23:30:00-05:00"}, "2025-03-01", "time", None),
        ({"performedDateTime": "2025-03-02T00:30:00+14:00"}, "2025-03-02", "time", None),
        ({"performedDateTime": "2025-03"}, "2025-03-01", "month", None),
        ({"performedDateTime": "2025"}, "2025-01-01", "year", None),
        (
            {
                "performedPeriod": {
                    "start": "2025-03-17T08:05:00-04:00",
                    "end": "2025-03-17T11:40:00-04:00",
                }
            },
            "2025-03-17",
            "time",
            "2025-03-17T11:40:00-04:00",
        ),
    ],
    ids=["evening-minus5", "morning-plus14", "month", "year", "period"],
)
def test_procedure_dates(
    timing: dict[str, Any], date: str, precision: str, end: str | None
) -> None:
    """The surgery window is counted in local days: the day and precision must be the recorded ones."""
    resource = performed(code=kit.LOBECTOMY)
    del resource["performedDateTime"]
    [event] = map_procedure({**resource, **timing}, SRC, context(TERMINOLOGY))
    assert event.date is not None
    assert (event.date.first.isoformat(), event.date.precision) == (date, precision)
    assert (event.end.text if event.end else None) == end


def test_subject_by_identifier_only() -> None:
    """A procedure naming its patient by MRN only must land on the stored Patient id."""
    stored = kit.patient(id="pat-42", mrn="A-77")
    subject = {"identifier": {"system": "urn:mrn", "value": "A-77"}}
    ctx = context(TERMINOLOGY, stored)
    [done] = map_procedure(performed(code=WEDGE, subject=subject), SRC, ctx)
    [asked] = map_service_request(
        requested(code=WEDGE, subject=subject), SourceRef("ServiceRequest", "pr1", 1), ctx
    )
    assert (done.patient_id, asked.patient_id) == ("pat-42", "pat-42")


def test_service_request_for_resection_exactly() -> None:
    """A surgery order is evidence the resection is planned, dated when it is to occur."""
    resource = requested(
        code=kit.PARTIAL_LOBECTOMY, occurrenceDateTime="2025-03-18", bodySite=[RUL]
    )
    [event] = map_service_request(
        resource, SourceRef("ServiceRequest", "sr1", 1), context(TERMINOLOGY)
    )
    assert event.to_json() == {
        "kind": "lung_resection",
        "date": day_json("2025-03-18", "day", "2025-03-18"),
        "end": None,
        "values": {
            "code": kit.PARTIAL_LOBECTOMY,
            "status": "active",
            "planned": True,
            "body_site": ["Right upper lobe"],
            "intent": "order",
            "authored_on": "2025-02-27",
            "resection_type": "partial_lobectomy",
        },
        "concepts": PARTIAL_LOBECTOMY_MATCHES,
        "source": source_json("ServiceRequest", "sr1"),
    }


@pytest.mark.parametrize(
    ("timing", "date", "end"),
    [
        ({}, "2025-02-27", None),
        ({"occurrenceDateTime": "2025-03"}, "2025-03", None),
        (
            {"occurrencePeriod": {"start": "2025-03-10", "end": "2025-03-14"}},
            "2025-03-10",
            "2025-03-14",
        ),
    ],
    ids=["authored", "occurrence", "period"],
)
def test_service_request_dates(timing: dict[str, Any], date: str, end: str | None) -> None:
    """When it is to occur wins over when it was written."""
    [event] = map_service_request(
        requested(code=CORE_BIOPSY, **timing),
        SourceRef("ServiceRequest", "pr1", 1),
        context(TERMINOLOGY),
    )
    assert event.date is not None
    assert (event.date.text, event.end.text if event.end else None) == (date, end)
    assert (event.kind, event.values["core_needle"], event.values["planned"]) == (
        EventKind.BIOPSY,
        True,
        True,
    )


@pytest.mark.parametrize(
    "resource",
    [
        requested(code={"text": "CT chest with contrast"}),
        requested(code=kit.LOBECTOMY, status="revoked"),
        requested(code=kit.LOBECTOMY, status="entered-in-error"),
        requested(code=kit.LOBECTOMY, doNotPerform=True),
    ],
    ids=["generic", "revoked", "void", "do-not-perform"],
)
def test_service_request_without_event(resource: dict[str, Any]) -> None:
    """Generic, withdrawn, void or 'do not perform' requests are no evidence of a planned resection."""
    assert (
        map_service_request(resource, SourceRef("ServiceRequest", "pr1", 1), context(TERMINOLOGY))
        == []
    )


@pytest.mark.parametrize("intent", ["proposal", "plan", "order"])
def test_service_request_intent_is_kept(intent: str) -> None:
    """A proposal is weaker evidence than an order; the rule sees which it was."""
    [event] = map_service_request(
        requested(code=WEDGE, intent=intent),
        SourceRef("ServiceRequest", "pr1", 1),
        context(TERMINOLOGY),
    )
    assert (event.kind, event.values["intent"], event.values["resection_type"]) == (
        EventKind.LUNG_RESECTION,
        intent,
        "wedge_resection",
    )


def test_official_example_procedure_f002() -> None:
    """The HL7 NSCLC case: partial lobectomy of f001 on 2013-03-08 (+01:00), by SNOMED code."""
    resource = json.loads((TEST_DATA / "fhir-r4-examples" / "Procedure-f002.json").read_bytes())
    events = map_procedure(resource, SourceRef("Procedure", "f002", 1), context(TERMINOLOGY))
    assert [e.to_json() for e in events] == [
        {
            "kind": "lung_resection",
            "date": day_json("2013-03-08T09:00:10+01:00", "time", "2013-03-08"),
            "end": day_json("2013-03-08T09:30:10+01:00", "time", "2013-03-08"),
            "values": {
                "code": kit.PARTIAL_LOBECTOMY,
                "status": "completed",
                "planned": False,
                "body_site": ["Lung structure"],
                "resection_type": "partial_lobectomy",
            },
            "concepts": PARTIAL_LOBECTOMY_MATCHES,
            "source": source_json("Procedure", "f002"),
        }
    ]
    assert events[0].patient_id == "f001"


def test_synthea_nsclc_patient_procedures() -> None:
    """Synthea's NSCLC patient had chemoradiation, no resection: every procedure stays generic."""
    events = synthea_events(TERMINOLOGY, "Procedure", map_procedure)
    assert Counter(e.kind for e in events) == {EventKind.PROCEDURE: 587}
    assert sum(1 for e in events if e.concepts) == 0
    assert {e.patient_id for e in events} == {NSCLC_PATIENT}
    [breast_biopsy] = [
        e for e in events if e.values["code"]["text"] == "Biopsy of breast (procedure)"
    ]
    assert breast_biopsy.to_json() == {
        "kind": "procedure",
        "date": day_json("1989-04-10T00:49:59-04:00", "time", "1989-04-10"),
        "end": day_json("1989-04-10T01:18:07-04:00", "time", "1989-04-10"),
        "values": {
            "code": {
                "coding": [
                    {
                        "system": kit.SNOMED,
                        "code": "122548005",
                        "display": "Biopsy of breast (procedure)",
                    }
                ],
                "text": "Biopsy of breast (procedure)",
            },
            "status": "completed",
            "planned": False,
            "body_site": [],
        },
        "concepts": [],
        "source": source_json("Procedure", "515a5d84-6a39-452a-aac9-7b955188dca6"),
    }
