"""Known answers for the drug mappers: MedicationAdministration, MedicationRequest, MedicationStatement."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from functools import partial
from typing import Any

import pytest

from fhir_mapping.events.medication_administration import map_medication_administration
from fhir_mapping.events.medication_exposure import (
    map_medication_request,
    map_medication_statement,
)
from fhir_mapping.events.model import EventKind, SourceRef
from fhir_mapping.json_codec import LexicalDecimal, loads
from service.protocol.terminology import build_terminology
from tests.kit.expected import day_json, match_json, source_json
from tests.kit.fhir import (
    ATC,
    RXNORM,
    SNOMED,
    UCUM,
    coded,
    medication,
    medication_administration,
    medication_request,
    medication_statement,
    patient,
    quantity,
)
from tests.kit.mapping import NSCLC_PATIENT, concept_matches, context, synthea_events

TERMINOLOGY = build_terminology()

# A clinical-drug (SCD) coding as feeds send it. The code is a stand-in (CLINICAL.md: the dupilumab
# RxNorm codes are unverified); it is in no value set, so only the display can match.
DUPILUMAB_SCD = {
    "coding": [
        {
            "system": RXNORM,
            "code": "1876387",
            "display": "dupilumab 300 MG in 2 ML Prefilled Syringe",
        }
    ]
}
DUPILUMAB_ATC = coded(ATC, "D11AH05", "Dupilumab")
PREDNISONE_TABLET = coded(
    RXNORM, "312617", "Prednisone 5 MG Oral Tablet", text="Prednisone 5 MG Oral Tablet"
)
ROUTE_IV = coded(SNOMED, "47625008", "Intravenous route")
ROUTE_TOPICAL = coded(SNOMED, "6064005", "Topical route")


def _src(resource_type: str, resource_id: str = "r1") -> SourceRef:
    """The source version every fixture event claims to come from."""
    return SourceRef(resource_type, resource_id, 1)


# Patient p1's drugs: given on 2025-03-03, ordered on 2025-02-20, reported without a date.
administered = partial(medication_administration, effective="2025-03-03T09:15:00-05:00")
prescribed = partial(medication_request, authored="2025-02-20")
reported = medication_statement


@pytest.mark.parametrize(
    ("drug", "expected"),
    [
        (DUPILUMAB_SCD, [("dupilumab", "name"), ("route_systemic", "name")]),
        (DUPILUMAB_ATC, [("dupilumab", "code")]),
        ({"text": "Libtayo"}, [("cemiplimab", "name"), ("pd1_inhibitor", "name")]),
        (
            {"coding": [{"system": ATC, "code": "L01FF06", "display": "cemiplimab"}]},
            [("cemiplimab", "code"), ("pd1_inhibitor", "name")],
        ),
        (
            {"coding": [{"system": RXNORM, "code": "8640", "display": "prednisone"}]},
            [("systemic_glucocorticoid", "code")],
        ),
        (PREDNISONE_TABLET, [("systemic_glucocorticoid", "name"), ("route_systemic", "name")]),
        ({"text": "Keytruda 100 mg/4 mL"}, [("pd1_inhibitor", "name")]),
        ({"text": "PACLitaxel 100 MG Injection"}, [("route_systemic", "name")]),
    ],
    ids=[
        "scd-name",
        "atc-code",
        "brand-only",
        "atc-cemiplimab",
        "rxnorm-in",
        "dose-form",
        "icb",
        "other",
    ],
)
def test_request_concepts_by_code_and_by_name(
    drug: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    """Real feeds code drugs as SCDs or brands: each must land in its value set, saying how."""
    [event] = map_medication_request(
        prescribed(medicationCodeableConcept=drug),
        _src("MedicationRequest"),
        context(TERMINOLOGY),
    )
    assert event.kind is EventKind.DRUG_EXPOSURE
    assert concept_matches(event) == expected


def test_scd_match_records_the_display_it_matched() -> None:
    """Evidence must show which text matched when no code did (a reviewer checks it)."""
    [event] = map_medication_request(
        prescribed(medicationCodeableConcept=DUPILUMAB_SCD),
        _src("MedicationRequest"),
        context(TERMINOLOGY),
    )
    assert event.concepts[0].to_json() == match_json(
        "dupilumab", "name", "dupilumab 300 MG in 2 ML Prefilled Syringe"
    )


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        (
            quantity(LexicalDecimal("0.35"), "g"),
            {"value": "0.35", "unit": "g", "code": "g", "mg": "350", "flag": None},
        ),
        (
            quantity(600000, "ug"),
            {"value": "600000", "unit": "ug", "code": "ug", "mg": "600", "flag": None},
        ),
        (
            quantity(300, "mg"),
            {"value": "300", "unit": "mg", "code": "mg", "mg": "300", "flag": None},
        ),
        (
            {"value": 300, "unit": "mg"},
            {
                "value": "300",
                "unit": "mg",
                "code": None,
                "mg": None,
                "flag": "not a UCUM unit: kept as sent, not converted",
            },
        ),
        (
            quantity(2, "mL"),
            {
                "value": "2",
                "unit": "mL",
                "code": "mL",
                "mg": None,
                "flag": "UCUM unit 'mL' is not a mass: not converted",
            },
        ),
    ],
    ids=["g", "ug", "mg", "mg-no-system", "volume"],
)
def test_administered_dose_in_mg(quantity: dict[str, Any], expected: dict[str, Any]) -> None:
    """Dose checks compare mg; units that cannot be converted are flagged, never guessed."""
    resource = administered(
        medicationCodeableConcept={"text": "Libtayo"}, dosage={"dose": quantity}
    )
    [event] = map_medication_administration(
        resource, _src("MedicationAdministration"), context(TERMINOLOGY)
    )
    assert event.values["dose"] == expected


def test_dose_parsed_from_json_keeps_its_text() -> None:
    """Decimals arrive as a Decimal subclass from the lossless parser; the mg is still exact."""
    resource = loads(
        b'{"resourceType":"MedicationAdministration","status":"completed",'
        b'"subject":{"reference":"Patient/p1"},"effectiveDateTime":"2025-03-03",'
        b'"medicationCodeableConcept":{"text":"cemiplimab-rwlc"},'
        b'"dosage":{"dose":{"value":350.0,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"}}}'
    )
    [event] = map_medication_administration(
        resource, _src("MedicationAdministration"), context(TERMINOLOGY)
    )
    assert event.values["dose"] == {
        "value": "350.0",
        "unit": "mg",
        "code": "mg",
        "mg": "350",
        "flag": None,
    }


def test_two_syringes_of_dupilumab_on_day_one() -> None:
    """600 mg is usually recorded as 2 × 300 mg: both administrations map, same day, mg each."""
    ctx = context(TERMINOLOGY)
    dose = quantity(300, "mg")
    events = [
        event
        for i, when in enumerate(["2025-03-03T09:15:00-05:00", "2025-03-03T09:20:00-05:00"])
        for event in map_medication_administration(
            administered(
                medicationCodeableConcept=DUPILUMAB_SCD,
                effectiveDateTime=when,
                dosage={"dose": dose, "route": {"text": "Subcutaneous"}},
            ),
            _src("MedicationAdministration", f"ma{i}"),
            ctx,
        )
    ]
    assert [e.kind for e in events] == [EventKind.DRUG_ADMINISTRATION] * 2
    assert [e.date.day.isoformat() if e.date and e.date.day else None for e in events] == [
        "2025-03-03",
        "2025-03-03",
    ]
    assert sum(Decimal(e.values["dose"]["mg"]) for e in events) == Decimal(600)
    assert [concept_matches(e) for e in events] == [
        [("dupilumab", "name"), ("route_systemic", "name")]
    ] * 2
    assert [e.values["route_class"] for e in events] == ["systemic", "systemic"]
    assert [e.patient_id for e in events] == ["p1", "p1"]


@pytest.mark.parametrize(
    ("route", "drug", "expected"),
    [
        (ROUTE_IV, {"text": "Libtayo"}, ("systemic", ("route_systemic", "name"))),
        (
            ROUTE_TOPICAL,
            {"text": "hydrocortisone 1 % Topical Cream"},
            ("local", ("route_local", "name")),
        ),
        (None, {"text": "Hydrocortisone 2.5 % Topical Cream"}, ("local", ("route_local", "name"))),
        (None, PREDNISONE_TABLET, ("systemic", ("route_systemic", "name"))),
        (None, {"text": "dexamethasone"}, (None, None)),
    ],
    ids=["iv", "topical-route", "cream-form", "tablet-form", "unknown"],
)
def test_route_class_from_route_else_dose_form(
    route: dict[str, Any] | None, drug: dict[str, Any], expected: tuple[str | None, Any]
) -> None:
    """Glucocorticoid exposure counts only when systemic: the route says so, else the dose form."""
    dosage: dict[str, Any] = {"route": route} if route else {}
    ctx = context(TERMINOLOGY)
    [given] = map_medication_administration(
        administered(medicationCodeableConcept=drug, dosage=dosage),
        _src("MedicationAdministration"),
        ctx,
    )
    [ordered] = map_medication_request(
        prescribed(medicationCodeableConcept=drug, dosageInstruction=[dosage]),
        _src("MedicationRequest"),
        ctx,
    )
    [stated] = map_medication_statement(
        reported(medicationCodeableConcept=drug, dosage=[dosage]),
        _src("MedicationStatement"),
        ctx,
    )
    for event in (given, ordered, stated):
        route_concepts = [m for m in concept_matches(event) if m[0].startswith("route_")]
        assert (
            event.values["route_class"],
            route_concepts[0] if route_concepts else None,
        ) == expected


@pytest.mark.parametrize(
    ("mapper", "resource"),
    [
        (
            map_medication_administration,
            administered(status="not-done", medicationCodeableConcept=DUPILUMAB_SCD),
        ),
        (
            map_medication_administration,
            administered(status="entered-in-error", medicationCodeableConcept=DUPILUMAB_SCD),
        ),
        (
            map_medication_request,
            prescribed(status="cancelled", medicationCodeableConcept=PREDNISONE_TABLET),
        ),
        (
            map_medication_request,
            prescribed(status="entered-in-error", medicationCodeableConcept=PREDNISONE_TABLET),
        ),
        (
            map_medication_request,
            prescribed(doNotPerform=True, medicationCodeableConcept=PREDNISONE_TABLET),
        ),
        (
            map_medication_statement,
            reported(status="not-taken", medicationCodeableConcept=PREDNISONE_TABLET),
        ),
        (
            map_medication_statement,
            reported(status="entered-in-error", medicationCodeableConcept=PREDNISONE_TABLET),
        ),
    ],
    ids=[
        "ma-not-done",
        "ma-void",
        "mr-cancelled",
        "mr-void",
        "mr-do-not-perform",
        "ms-not-taken",
        "ms-void",
    ],
)
def test_no_exposure_no_event(mapper: Any, resource: dict[str, Any]) -> None:
    """Drugs not given, not taken, withdrawn or entered in error must not count as exposure."""
    assert mapper(resource, _src(resource["resourceType"]), context(TERMINOLOGY)) == []


@pytest.mark.parametrize("intent", ["order", "plan", "proposal"])
def test_request_intent_is_kept(intent: str) -> None:
    """Plans and proposals still map (the rule decides), but they must be told apart from orders."""
    [event] = map_medication_request(
        prescribed(intent=intent, medicationCodeableConcept=PREDNISONE_TABLET),
        _src("MedicationRequest"),
        context(TERMINOLOGY),
    )
    assert (event.values["intent"], event.values["status"]) == (intent, "active")


def test_request_values_exactly() -> None:
    """The full values shape of an order with dosing bounds, route and a dose in g."""
    resource = prescribed(
        medicationCodeableConcept=PREDNISONE_TABLET,
        dosageInstruction=[
            {
                "timing": {
                    "repeat": {"boundsPeriod": {"start": "2025-03-05", "end": "2025-03-09"}}
                },
                "route": {"text": "Oral"},
                "doseAndRate": [
                    {
                        "doseQuantity": {
                            "value": LexicalDecimal("0.04"),
                            "system": UCUM,
                            "code": "g",
                            "unit": "g",
                        }
                    }
                ],
            }
        ],
    )
    [event] = map_medication_request(resource, _src("MedicationRequest"), context(TERMINOLOGY))
    assert event.to_json() == {
        "kind": "drug_exposure",
        "date": day_json("2025-03-05", "day", "2025-03-05"),
        "end": day_json("2025-03-09", "day", "2025-03-09"),
        "values": {
            "resource_type": "MedicationRequest",
            "medication": "Prednisone 5 MG Oral Tablet",
            "medication_code": {
                "coding": [
                    {"system": RXNORM, "code": "312617", "display": "Prednisone 5 MG Oral Tablet"}
                ],
                "text": "Prednisone 5 MG Oral Tablet",
            },
            "status": "active",
            "intent": "order",
            "route_class": "systemic",
            "dose": {"value": "0.04", "unit": "g", "code": "g", "mg": "40", "flag": None},
            "course_days": None,  # the course has an end date
            "reasons": [],
        },
        "concepts": [
            match_json("systemic_glucocorticoid", "name", "Prednisone 5 MG Oral Tablet"),
            match_json("route_systemic", "name", "Oral"),
        ],
        "source": source_json("MedicationRequest", "r1"),
    }
    assert event.patient_id == "p1"


@pytest.mark.parametrize(
    ("dosages", "start", "end"),
    [
        ([], "2025-02-20", None),
        ([{"text": "as needed"}], "2025-02-20", None),
        (
            [
                {
                    "timing": {
                        "repeat": {"boundsPeriod": {"start": "2025-03-10", "end": "2025-03-14"}}
                    }
                },
                {
                    "timing": {
                        "repeat": {"boundsPeriod": {"start": "2025-03-05", "end": "2025-03-09"}}
                    }
                },
            ],
            "2025-03-05",
            "2025-03-14",
        ),
        (
            [
                {
                    "timing": {
                        "repeat": {"boundsPeriod": {"start": "2025-03-05", "end": "2025-03-09"}}
                    }
                },
                {"timing": {"repeat": {"boundsPeriod": {"start": "2025-03-10"}}}},
            ],
            "2025-03-05",
            None,
        ),
        ([{"timing": {"repeat": {"boundsPeriod": {"start": "2025-06"}}}}], "2025-06", None),
    ],
    ids=["authored", "no-bounds", "taper", "open-ended", "month"],
)
def test_request_dates_from_bounds_else_authored(
    dosages: list[dict[str, Any]], start: str, end: str | None
) -> None:
    """Exposure starts when dosing starts (earliest bound) and ends only if every bound ends."""
    [event] = map_medication_request(
        prescribed(medicationCodeableConcept=PREDNISONE_TABLET, dosageInstruction=dosages),
        _src("MedicationRequest"),
        context(TERMINOLOGY),
    )
    assert event.date is not None
    assert (event.date.text, event.end.text if event.end else None) == (start, end)


@pytest.mark.parametrize(
    ("effective", "text", "precision", "first", "last", "end"),
    [
        ({"effectiveDateTime": "2025"}, "2025", "year", "2025-01-01", "2025-12-31", None),
        ({"effectiveDateTime": "2025-06"}, "2025-06", "month", "2025-06-01", "2025-06-30", None),
        (
            {"effectiveDateTime": "2025-03-01T23:30:00-05:00"},
            "2025-03-01T23:30:00-05:00",
            "time",
            "2025-03-01",
            "2025-03-01",
            None,
        ),
        (
            {"effectiveDateTime": "2025-03-02T00:30:00+14:00"},
            "2025-03-02T00:30:00+14:00",
            "time",
            "2025-03-02",
            "2025-03-02",
            None,
        ),
        (
            {"effectivePeriod": {"start": "2024-11", "end": "2025-02-14"}},
            "2024-11",
            "month",
            "2024-11-01",
            "2024-11-30",
            "2025-02-14",
        ),
    ],
    ids=["year", "month", "late-evening-minus5", "early-morning-plus14", "period"],
)
def test_statement_dates_keep_precision_and_local_day(
    effective: dict[str, Any], text: str, precision: str, first: str, last: str, end: str | None
) -> None:
    """Reported use is often 'since 2025': keep the precision, and the day where it was recorded."""
    [event] = map_medication_statement(
        reported(
            medicationCodeableConcept={"text": "methotrexate 2.5 MG Oral Tablet"}, **effective
        ),
        _src("MedicationStatement"),
        context(TERMINOLOGY),
    )
    assert event.date is not None
    assert (
        event.date.text,
        event.date.precision,
        event.date.first.isoformat(),
        event.date.last.isoformat(),
    ) == (
        text,
        precision,
        first,
        last,
    )
    assert (event.end.text if event.end else None) == end
    assert (event.values["resource_type"], event.values["intent"]) == ("MedicationStatement", None)
    assert concept_matches(event) == [("immunosuppressant", "name"), ("route_systemic", "name")]


def test_medication_reference_to_contained_medication() -> None:
    """Feeds often put the Medication in `contained`; its code decides the drug."""
    resource = prescribed(
        contained=[medication(id="med1", code=DUPILUMAB_ATC)],
        medicationReference={"reference": "#med1"},
    )
    [event] = map_medication_request(resource, _src("MedicationRequest"), context(TERMINOLOGY))
    assert (event.values["medication"], concept_matches(event)) == (
        "Dupilumab",
        [("dupilumab", "code")],
    )


def test_medication_reference_to_stored_medication() -> None:
    """A reference to a stored Medication is followed through the lookup."""
    stored = medication(id="med-9", code="Libtayo 350 MG/7 ML Injection")
    for mapper, resource in (
        (
            map_medication_administration,
            administered(medicationReference={"reference": "Medication/med-9"}),
        ),
        (map_medication_statement, reported(medicationReference={"reference": "Medication/med-9"})),
    ):
        [event] = mapper(resource, _src(resource["resourceType"]), context(TERMINOLOGY, stored))
        assert (event.values["medication"], concept_matches(event)) == (
            "Libtayo 350 MG/7 ML Injection",
            [("cemiplimab", "name"), ("pd1_inhibitor", "name"), ("route_systemic", "name")],
        )


def test_unresolvable_medication_reference_falls_back_to_display() -> None:
    """When the Medication is not held, the reference display is the only name there is."""
    resource = reported(
        medicationReference={"reference": "Medication/absent", "display": "Dupixent"}
    )
    [event] = map_medication_statement(resource, _src("MedicationStatement"), context(TERMINOLOGY))
    assert (event.values["medication"], concept_matches(event)) == (
        "Dupixent",
        [("dupilumab", "name")],
    )


def test_subject_by_identifier_only() -> None:
    """Feeds that reference the patient by MRN only must still land on the stored Patient id."""
    stored = patient(id="pat-42", mrn="A-77")
    subject = {"type": "Patient", "identifier": {"system": "urn:mrn", "value": "A-77"}}
    ctx = context(TERMINOLOGY, stored)
    for mapper, resource in (
        (
            map_medication_administration,
            administered(subject=subject, medicationCodeableConcept=DUPILUMAB_ATC),
        ),
        (
            map_medication_request,
            prescribed(subject=subject, medicationCodeableConcept=DUPILUMAB_ATC),
        ),
        (
            map_medication_statement,
            reported(subject=subject, medicationCodeableConcept=DUPILUMAB_ATC),
        ),
    ):
        [event] = mapper(resource, _src(resource["resourceType"]), ctx)
        assert event.patient_id == "pat-42"
    [unknown] = map_medication_request(
        prescribed(
            subject={"identifier": {"system": "urn:mrn", "value": "nobody"}},
            medicationCodeableConcept=DUPILUMAB_ATC,
        ),
        _src("MedicationRequest"),
        ctx,
    )
    assert unknown.patient_id is None


def test_synthea_nsclc_patient_medication_requests() -> None:
    """Synthea's NSCLC patient: chemotherapy orders are exposures but match no study drug set."""
    events = synthea_events(TERMINOLOGY, "MedicationRequest", map_medication_request)
    assert Counter(e.kind for e in events) == {EventKind.DRUG_EXPOSURE: 447}
    assert {e.patient_id for e in events} == {NSCLC_PATIENT}
    drug_sets = {
        "dupilumab",
        "cemiplimab",
        "pd1_inhibitor",
        "pdl1_inhibitor",
        "ctla4_inhibitor",
        "systemic_glucocorticoid",
        "immunosuppressant",
        "biologic_immunomodulator",
    }
    assert sum(1 for e in events if e.concept_ids & drug_sets) == 0
    assert Counter(e.values["route_class"] for e in events) == {"systemic": 446, None: 1}
    assert Counter(e.values["medication"] for e in events) == {
        "PACLitaxel 100 MG Injection": 221,
        "Cisplatin 50 MG Injection": 221,
        "Acetaminophen 325 MG Oral Tablet": 2,
        "Nitrofurantoin 5 MG/ML Oral Suspension": 1,
        "Nitroglycerin 0.4 MG/ACTUAT Mucosal Spray": 1,
        "Phenazopyridine hydrochloride 100 MG Oral Tablet": 1,
    }
    [active] = [e for e in events if e.values["status"] == "active"]
    assert json.loads(json.dumps(active.to_json())) == {
        "kind": "drug_exposure",
        "date": day_json("1977-05-28T23:58:16-04:00", "time", "1977-05-28"),
        "end": None,
        "values": {
            "resource_type": "MedicationRequest",
            "medication": "Nitroglycerin 0.4 MG/ACTUAT Mucosal Spray",
            "medication_code": {
                "coding": [
                    {
                        "system": RXNORM,
                        "code": "705129",
                        "display": "Nitroglycerin 0.4 MG/ACTUAT Mucosal Spray",
                    }
                ],
                "text": "Nitroglycerin 0.4 MG/ACTUAT Mucosal Spray",
            },
            "status": "active",
            "intent": "order",
            "route_class": None,
            "dose": None,
            "course_days": None,
            "reasons": [],
        },
        "concepts": [],
        "source": source_json("MedicationRequest", "45ff735c-2ad8-a96c-a1fa-79a5ea4a9a59"),
    }
