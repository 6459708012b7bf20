"""Known answers for the Specimen mapper: screening stool samples and fresh tissue specimens."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from fhir_mapping.events.model import EventKind, SourceRef
from fhir_mapping.events.specimen import map_specimen
from service.protocol.terminology import build_terminology
from tests.kit.expected import day_json, match_json, source_json
from tests.kit.fhir import SNOMED, V2_0487, coded, patient, specimen
from tests.kit.mapping import concept_matches, context

TERMINOLOGY = build_terminology()
STOOL = {
    "coding": [{"system": V2_0487, "code": "STL", "display": "Stool = Fecal"}],
    "text": "Stool",
}
TISSUE = coded(V2_0487, "TISS", "Tissue")
BLOOD = coded(V2_0487, "BLDV", "Blood venous")


SRC = SourceRef("Specimen", "sp1", 1)  # the Specimen version every fixture event claims
# An available Specimen of patient p1 collected on 2025-02-20.
sample = partial(specimen, status="available", collected="2025-02-20T10:00:00-05:00")


@pytest.mark.parametrize(
    ("specimen_type", "collection", "expected", "concepts"),
    [
        (STOOL, {}, "stool", [("stool_specimen", "name")]),
        ({"text": "Faecal sample for microbiome"}, {}, "stool", [("stool_specimen", "name")]),
        (TISSUE, {}, "tissue", [("tissue_specimen", "name")]),
        ({"text": "Fresh tumour core, RUL"}, {}, "tissue", [("tissue_specimen", "name")]),
        (
            None,
            {"method": {"text": "Core needle biopsy"}},
            "tissue",
            [("tissue_specimen", "name")],
        ),
        (
            {"text": "Specimen"},
            {
                "method": {
                    "coding": [{"system": SNOMED, "code": "78603008", "display": "Biopsy of lung"}]
                }
            },
            "tissue",
            [("tissue_specimen", "name")],
        ),
        (
            None,
            {"bodySite": {"text": "Lung biopsy site, right upper lobe"}},
            "tissue",
            [("tissue_specimen", "name")],
        ),
        (BLOOD, {}, "other", []),
        ({"text": "Liquid biopsy, plasma (ctDNA)"}, {}, "other", []),
        (None, {}, "other", []),
    ],
    ids=[
        "stool-v2",
        "faecal-text",
        "tissue-v2",
        "core-text",
        "method-core-biopsy",
        "method-lung-biopsy",
        "site-biopsy",
        "blood",
        "liquid-biopsy",
        "untyped",
    ],
)
def test_specimen_type(
    specimen_type: dict[str, Any] | None,
    collection: dict[str, Any],
    expected: str,
    concepts: list[tuple[str, str]],
) -> None:
    """Screening needs a stool sample and fresh tissue: the type, else the collection says which."""
    resource = sample(
        type=specimen_type,
        collection={"collectedDateTime": "2025-02-20T10:00:00-05:00", **collection},
    )
    [event] = map_specimen(resource, SRC, context(TERMINOLOGY))
    assert event.kind is EventKind.SPECIMEN_COLLECTION
    assert event.values["specimen_type"] == expected
    assert concept_matches(event) == concepts


def test_stool_specimen_exactly() -> None:
    """The full event of a screening stool sample."""
    [event] = map_specimen(sample(type=STOOL), SRC, context(TERMINOLOGY))
    assert event.patient_id == "p1"
    assert event.to_json() == {
        "kind": "specimen_collection",
        "date": day_json("2025-02-20T10:00:00-05:00", "time", "2025-02-20"),
        "end": None,
        "values": {
            "specimen_type": "stool",
            "type": {
                "coding": [{"system": V2_0487, "code": "STL", "display": "Stool = Fecal"}],
                "text": "Stool",
            },
            "status": "available",
            "parent": [],
            "procedure": None,  # no collecting Procedure named
        },
        "concepts": [match_json("stool_specimen", "name", "Stool")],
        "source": source_json("Specimen", "sp1"),
    }


def test_tissue_aliquot_keeps_its_parent() -> None:
    """Aliquots of one biopsy point at their parent so they are not counted as extra biopsies."""
    [event] = map_specimen(
        sample(type=TISSUE, parent=[{"reference": "Specimen/sp0"}, {"display": "no reference"}]),
        SRC,
        context(TERMINOLOGY),
    )
    assert (event.values["specimen_type"], event.values["parent"]) == ("tissue", ["Specimen/sp0"])


@pytest.mark.parametrize(
    ("status", "events"),
    [("available", 1), ("unavailable", 1), ("unsatisfactory", 1), ("entered-in-error", 0)],
)
def test_only_void_specimens_are_dropped(status: str, events: int) -> None:
    """A used-up or unsatisfactory sample was still collected; only entered-in-error is no fact."""
    found = map_specimen(sample(type=STOOL, status=status), SRC, context(TERMINOLOGY))
    assert len(found) == events
    assert [e.values["status"] for e in found] == [status] * events


@pytest.mark.parametrize(
    ("collection", "date", "precision", "end"),
    [
        ({"collectedDateTime": "2025-03-01T23:30:00-05:00"}, "2025-03-01", "time", None),
        ({"collectedDateTime": "2025-03-02T00:30:00+14:00"}, "2025-03-02", "time", None),
        ({"collectedDateTime": "2025-02"}, "2025-02-01", "month", None),
        ({"collectedDateTime": "2025"}, "2025-01-01", "year", None),
        (
            {"collectedPeriod": {"start": "2025-02-19", "end": "2025-02-20"}},
            "2025-02-19",
            "day",
            "2025-02-20",
        ),
        ({}, None, None, None),
    ],
    ids=["evening-minus5", "morning-plus14", "month", "year", "period", "undated"],
)
def test_collection_dates(
    collection: dict[str, Any], date: str | None, precision: str | None, end: str | None
) -> None:
    """The screening window is counted in local days: collection day and precision must be exact."""
    [event] = map_specimen(sample(type=STOOL, collection=collection), SRC, context(TERMINOLOGY))
    assert (
        event.date.first.isoformat() if event.date else None,
        event.date.precision if event.date else None,
        event.end.text if event.end else None,
    ) == (date, precision, end)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ({"reference": "Patient/p1"}, "p1"),
        ({"identifier": {"system": "urn:mrn", "value": "A-77"}}, "pat-42"),
        ({"type": "Patient", "identifier": {"system": "urn:mrn", "value": "A-77"}}, "pat-42"),
        ({"type": "Group", "identifier": {"system": "urn:mrn", "value": "A-77"}}, None),
        ({"reference": "Group/g1"}, None),
        ({"reference": "Device/d1"}, None),
        ({"reference": "Location/loc1"}, None),
        (None, None),
    ],
    ids=[
        "patient",
        "identifier",
        "typed-identifier",
        "group-identifier",
        "group",
        "device",
        "location",
        "none",
    ],
)
def test_only_patient_subjects_give_a_patient(subject: Any, expected: str | None) -> None:
    """Specimen.subject may be a Group, Device or Location: only a Patient is a trial subject."""
    stored = patient(id="pat-42", mrn="A-77")
    [event] = map_specimen(sample(type=STOOL, subject=subject), SRC, context(TERMINOLOGY, stored))
    assert event.patient_id == expected
