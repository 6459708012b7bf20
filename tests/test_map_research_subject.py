"""Known answers for the ResearchSubject mapper: enrollment in which study, when, in which status."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from fhir_mapping.events.model import EventKind, SourceRef
from fhir_mapping.events.research_subject import map_research_subject
from service.protocol.terminology import build_terminology
from tests.kit.expected import day_json, source_json
from tests.kit.fhir import CT_GOV, patient, research_study, research_subject
from tests.kit.mapping import context

TERMINOLOGY = build_terminology()
NCT = {"system": CT_GOV, "value": "NCT06088771"}
SITE_PROTOCOL = {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.12", "value": "GCO 23-1234"}
STUDY = research_study(id="rs-1", identifier=[NCT, SITE_PROTOCOL])
PATIENT = patient(
    id="pat-7", mrn="MRN0042", mrn_system="urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.0"
)
SRC = SourceRef("ResearchSubject", "sub-1", 3)  # the version every fixture event claims
# An on-study ResearchSubject of Patient/pat-7 with a site subject number and arms.
enrolled = partial(
    research_subject,
    patient="pat-7",
    number="001-004",
    number_system="urn:trial:NCT06088771:subject",
    start="2025-02-24",
    end="2025-09-30",
    assignedArm="Neoadjuvant dupilumab + cemiplimab",
    actualArm="Neoadjuvant dupilumab + cemiplimab",
)


@pytest.mark.parametrize(
    ("study", "stored", "identifiers", "reference", "display"),
    [
        (
            {"reference": "ResearchStudy/rs-1"},
            [STUDY],
            [NCT, SITE_PROTOCOL],
            "ResearchStudy/rs-1",
            None,
        ),
        (
            {
                "type": "ResearchStudy",
                "identifier": NCT,
                "display": "Dupilumab + cemiplimab in NSCLC",
            },
            [],
            [NCT],
            None,
            "Dupilumab + cemiplimab in NSCLC",
        ),
        ({"identifier": NCT}, [STUDY], [NCT, SITE_PROTOCOL], None, None),
        (
            {"reference": "ResearchStudy/rs-404", "display": "NCT06088771"},
            [],
            [],
            "ResearchStudy/rs-404",
            "NCT06088771",
        ),
        (
            {
                "reference": "ResearchStudy/rs-1",
                "identifier": {"system": CT_GOV, "value": "NCT06088771"},
            },
            [STUDY],
            [NCT, SITE_PROTOCOL],
            "ResearchStudy/rs-1",
            None,
        ),
    ],
    ids=[
        "stored-study",
        "reference-identifier",
        "identifier-resolved",
        "unresolved-display",
        "both-deduplicated",
    ],
)
def test_study_is_recognisable_by_any_identifier(
    study: dict[str, Any],
    stored: list[dict[str, Any]],
    identifiers: list[dict[str, str]],
    reference: str | None,
    display: str | None,
) -> None:
    """Sites name the study by NCT number on the ResearchStudy or on the reference: both must count."""
    [event] = map_research_subject(enrolled(study=study), SRC, context(TERMINOLOGY, *stored))
    assert event.values["study_identifiers"] == identifiers
    assert (event.values["study_reference"], event.values["study_display"]) == (reference, display)


def test_enrollment_event_exactly() -> None:
    """The full enrollment event: patient, dates, status, subject number and arms."""
    [event] = map_research_subject(
        enrolled(study={"reference": "ResearchStudy/rs-1"}), SRC, context(TERMINOLOGY, STUDY)
    )
    assert event.kind is EventKind.ENROLLMENT
    assert event.patient_id == "pat-7"
    assert event.to_json() == {
        "kind": "enrollment",
        "date": day_json("2025-02-24", "day", "2025-02-24"),
        "end": day_json("2025-09-30", "day", "2025-09-30"),
        "values": {
            "status": "on-study",
            "study_identifiers": [NCT, SITE_PROTOCOL],
            "study_display": None,
            "study_reference": "ResearchStudy/rs-1",
            "subject_numbers": [{"system": "urn:trial:NCT06088771:subject", "value": "001-004"}],
            "assigned_arm": "Neoadjuvant dupilumab + cemiplimab",
            "actual_arm": "Neoadjuvant dupilumab + cemiplimab",
        },
        "concepts": [],
        "source": source_json("ResearchSubject", "sub-1", 3),
    }


@pytest.mark.parametrize(
    "status",
    [
        "candidate",
        "eligible",
        "follow-up",
        "ineligible",
        "not-registered",
        "off-study",
        "on-study",
        "on-study-intervention",
        "on-study-observation",
        "pending-on-study",
        "potential-candidate",
        "screening",
        "withdrawn",
    ],
)
def test_every_r4_status_maps_and_is_kept(status: str) -> None:
    """The enrollment rule decides what each status means; the mapper must not drop any of them."""
    [event] = map_research_subject(
        enrolled(status=status, study={"identifier": NCT}), SRC, context(TERMINOLOGY)
    )
    assert event.values["status"] == status


def test_individual_by_identifier_only() -> None:
    """A ResearchSubject that names its patient by MRN only must land on the stored Patient id."""
    individual = {
        "identifier": {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.0", "value": "MRN0042"}
    }
    [event] = map_research_subject(
        enrolled(individual=individual, study={"identifier": NCT}),
        SRC,
        context(TERMINOLOGY, PATIENT),
    )
    assert event.patient_id == "pat-7"


@pytest.mark.parametrize(
    ("period", "start", "precision", "end"),
    [
        ({"start": "2025-02"}, "2025-02-01", "month", None),
        ({"start": "2025-03-01T23:30:00-05:00"}, "2025-03-01", "time", None),
        ({"start": "2025-03-02T00:30:00+14:00"}, "2025-03-02", "time", None),
        ({"end": "2025-09-30"}, None, None, "2025-09-30"),
    ],
    ids=["month", "evening-minus5", "morning-plus14", "end-only"],
)
def test_enrollment_dates(
    period: dict[str, str], start: str | None, precision: str | None, end: str | None
) -> None:
    """Enrollment anchors the 56-day look-back: its local day and precision must be exact."""
    [event] = map_research_subject(
        enrolled(period=period, study={"identifier": NCT}), SRC, context(TERMINOLOGY)
    )
    assert (
        event.date.first.isoformat() if event.date else None,
        event.date.precision if event.date else None,
    ) == (
        start,
        precision,
    )
    assert (event.end.text if event.end else None) == end


def test_void_subject_has_no_event() -> None:
    """R4 has no entered-in-error status here, but a feed that sends it means the record is void."""
    assert (
        map_research_subject(
            enrolled(status="entered-in-error", study={"identifier": NCT}),
            SRC,
            context(TERMINOLOGY),
        )
        == []
    )


def test_minimal_subject_without_arms_or_numbers() -> None:
    """Absent optional elements become None or empty lists, never a crash or a guess."""
    [event] = map_research_subject(
        research_subject(status="candidate", patient="pat-7", study_id="rs-1"),
        SRC,
        context(TERMINOLOGY),
    )
    assert (event.date, event.end) == (None, None)
    assert dict(event.values) == {
        "status": "candidate",
        "study_identifiers": [],
        "study_display": None,
        "study_reference": "ResearchStudy/rs-1",
        "subject_numbers": [],
        "assigned_arm": None,
        "actual_arm": None,
    }
