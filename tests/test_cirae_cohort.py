"""The cirAE cohort from hand-written FHIR through the real mapper: groups, ICB type, covariates."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

from fhir_mapping.events.context import MappingContext, MemoryLookup
from fhir_mapping.events.model import SourceRef, TrialEvent
from fhir_mapping.events.registry import map_resource
from fhir_mapping.terminology import ICD10CM, LOINC
from service.cirae_cohort import CohortPatient, build_cohort
from service.cirae_model import CirAESubject
from service.protocol import CohortProtocol, load_protocols
from service.terminology_files import build_terminology

TERMS = build_terminology()
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
OMB = "urn:oid:2.16.840.1.113883.6.238"


def _cirae_protocol() -> CohortProtocol:
    protocol = load_protocols(TERMS)["cirae-dupilumab"]
    assert isinstance(protocol, CohortProtocol)
    return protocol


PROTOCOL = _cirae_protocol()


# -- FHIR builders ---------------------------------------------------------------------------------


def _patient(pid: str, gender: str, birth: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": gender, "birthDate": birth, **extra}


def _race(code: str | None, display: str | None, text: str | None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if code or display:
        parts.append(
            {"url": "ombCategory", "valueCoding": {"system": OMB, "code": code, "display": display}}
        )
    if text:
        parts.append({"url": "text", "valueString": text})
    return {"extension": [{"url": US_CORE_RACE, "extension": parts}]}


def _given(rid: str, pid: str, drug: str, when: str, route: str | None = None) -> dict[str, Any]:
    dosage: dict[str, Any] = {"route": {"text": route}} if route else {}
    return {
        "resourceType": "MedicationAdministration",
        "id": rid,
        "status": "completed",
        "medicationCodeableConcept": {"text": drug},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "dosage": dosage,
    }


def _ordered(
    rid: str, pid: str, drug: str, authored: str, route: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": drug},
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": authored,
    }
    if route:
        out["dosageInstruction"] = [{"route": {"text": route}}]
    return out


def _condition(
    rid: str,
    pid: str,
    text: str,
    onset: str,
    icd10: str | None = None,
    status: str | None = "active",
    stage: str | None = None,
) -> dict[str, Any]:
    code: dict[str, Any] = {"text": text}
    if icd10:
        code["coding"] = [{"system": ICD10CM, "code": icd10}]
    out: dict[str, Any] = {
        "resourceType": "Condition",
        "id": rid,
        "code": code,
        "subject": {"reference": f"Patient/{pid}"},
        "onsetDateTime": onset,
    }
    if status:
        out["clinicalStatus"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": status,
                }
            ]
        }
    if stage:
        out["stage"] = [{"summary": {"text": stage}}]
    return out


def _stage_group(rid: str, pid: str, value: str, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "21908-9"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueCodeableConcept": {"text": value},
    }


def _adverse_event(rid: str, pid: str, term: str, when: str, outcome: str) -> dict[str, Any]:
    return {
        "resourceType": "AdverseEvent",
        "id": rid,
        "actuality": "actual",
        "event": {"text": term},
        "subject": {"reference": f"Patient/{pid}"},
        "date": when,
        "outcome": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/adverse-event-outcome",
                    "code": outcome,
                }
            ]
        },
    }


def _encounter(rid: str, pid: str, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": rid,
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": when, "end": when},
    }


# -- the seven patients --------------------------------------------------------------------------

RESOURCES: dict[str, list[dict[str, Any]]] = {
    # dupilumab group: PD-1; Charlson from pre-ICB lung cancer (2) + diabetes with complications (2);
    # the post-ICB MI is ignored; Condition.stage IIIA before ICB; resolved cirAE; oral prednisone.
    "p1": [
        _patient("p1", "female", "1960-03-01", **_race("2106-3", "White", "White")),
        _given("p1-pembro", "p1", "pembrolizumab 200 MG", "2021-03-01T10:00:00-05:00", "IV"),
        _given("p1-pembro2", "p1", "pembrolizumab 200 MG", "2021-03-22"),
        _condition(
            "p1-lung", "p1", "Lung adenocarcinoma", "2020-11-15", "C34.90", stage="Stage IIIA"
        ),
        _condition("p1-dm", "p1", "Type 2 diabetes with CKD", "2015-06-01", "E11.22"),
        _condition("p1-mi", "p1", "NSTEMI", "2022-01-10", "I21.4"),
        _condition("p1-rash", "p1", "Maculopapular rash", "2021-04-10", "L27.0", status="resolved"),
        _ordered("p1-pred", "p1", "prednisone 20 MG Oral Tablet", "2021-04-12", "oral"),
        _given("p1-dupi", "p1", "Dupixent 300 MG/2ML", "2021-05-01", "subcutaneous"),
        _given("p1-dupi2", "p1", "Dupixent 300 MG/2ML", "2021-05-15", "subcutaneous"),
        _encounter("p1-visit", "p1", "2022-06-01"),
    ],
    # control 1: nivolumab + ipilimumab on one day → combination; an eczema before ICB is not the
    # cirAE; the AE pruritus is (outcome 'recovering' is not in the resolution table → none);
    # dupilumab only before the cirAE; topical hydrocortisone is not systemic; melanoma stage IV
    # before ICB (the later IIIB is ignored); the C78 recorded after ICB does not enter Charlson.
    "p2": [
        _patient(
            "p2", "male", "1955", deceasedDateTime="2021-02-01", **_race(None, None, "Asian Indian")
        ),
        _given("p2-nivo", "p2", "Opdivo (nivolumab) 240 MG", "2020-06-01"),
        _given("p2-ipi", "p2", "Yervoy 50 MG/10ML", "2020-06-01"),
        _condition("p2-mel", "p2", "Melanoma of skin", "2020-05-01", "C43.9"),
        _condition("p2-mets", "p2", "Secondary malignancy of lung", "2020-08-01", "C78.00"),
        _stage_group("p2-stage", "p2", "Stage IV", "2020-05-20"),
        _stage_group("p2-restage", "p2", "Stage IIIB", "2020-09-01"),
        _condition("p2-ecz", "p2", "Eczema", "2019-01-01", status="resolved"),
        _given("p2-dupi", "p2", "dupilumab 300 MG", "2019-06-01"),
        _adverse_event("p2-itch", "p2", "Pruritus", "2020-07-15", "recovering"),
        _ordered("p2-hc", "p2", "hydrocortisone 1 % topical cream", "2020-07-20"),
    ],
    # control 2: an atezolizumab order starts ICB; the drug eruption before it is not a cirAE;
    # no race; stage only after ICB → unknown; prednisone one day past the 2-year window.
    "p3": [
        _patient("p3", "female", "1970-05-15"),
        _ordered("p3-atezo", "p3", "Tecentriq 1200 MG", "2022-01-10"),
        _condition("p3-erupt", "p3", "Drug eruption", "2021-12-01", status="resolved"),
        _condition("p3-lung", "p3", "Lung cancer", "2022-02-01", "C34.1", stage="Stage IIB"),
        _given("p3-pred", "p3", "prednisone 40 MG", "2024-01-11", "PO"),
    ],
    # control 1: cemiplimab, then ipilimumab 28 days later (outside 21 days) → PD-1;
    # bullous pemphigoid in remission → partial; IV dexamethasone exactly 2 years after start counts;
    # no Patient resource → no sex, race or age; no cancer condition → unknown.
    "p4": [
        _given("p4-cemi", "p4", "Libtayo 350 MG", "2019-02-01"),
        _given("p4-ipi", "p4", "ipilimumab 50 MG", "2019-03-01"),
        _condition("p4-bp", "p4", "Bullous pemphigoid", "2019-05-05", status="remission"),
        _given("p4-dex", "p4", "dexamethasone 10 MG", "2021-02-01", "IV"),
    ],
    # no ICB: not in the cohort, whatever else happened.
    "p5": [
        _patient("p5", "male", "1980-01-01"),
        _condition("p5-rash", "p5", "Rash", "2022-03-01"),
        _given("p5-dupi", "p5", "Dupixent 300 MG", "2022-04-01"),
    ],
    # dupilumab group: ipilimumab, then nivolumab exactly 21 days later → combination; an active
    # lichenoid dermatitis → none; a dupilumab order on the onset day counts; coded stage group.
    "p6": [
        _patient("p6", "male", "1948-12-31", **_race("2054-5", None, None)),
        _given("p6-ipi", "p6", "Yervoy 50 MG", "2023-01-05"),
        _given("p6-nivo", "p6", "nivolumab 240 MG", "2023-01-26"),
        _condition("p6-rcc", "p6", "Renal cell carcinoma", "2022-10-01", "C64.1"),
        _stage_group("p6-stage", "p6", "3", "2022-10-15"),
        _condition("p6-lich", "p6", "Lichenoid dermatitis", "2023-03-01", status="active"),
        _ordered("p6-dupi", "p6", "dupilumab 300 MG/2ML prefilled syringe", "2023-03-01"),
    ],
    # control 2, CTLA-4 alone: breast cancer is the primary even though the bone secondary was
    # diagnosed first; a month-precision stage before ICB counts ('Stage 2B' → II).
    "p7": [
        _patient("p7", "female", "1965-07-20", **_race("2106-3", "White", None)),
        _given("p7-ipi", "p7", "tremelimumab 300 MG", "2024-04-02"),
        _condition("p7-bone", "p7", "Secondary malignancy of bone", "2023-12-01", "C79.51"),
        _condition("p7-breast", "p7", "Breast cancer", "2024-01-15", "C50.911"),
        _stage_group("p7-stage", "p7", "Stage 2B", "2024-03"),
    ],
}


def _events(resources: list[dict[str, Any]]) -> list[TrialEvent]:
    ctx = MappingContext(TERMS, MemoryLookup(resources))
    return [
        e
        for r in resources
        for e in map_resource(r["resourceType"], r, SourceRef(r["resourceType"], r["id"], 1), ctx)
    ]


def _patients() -> list[CohortPatient]:
    return [
        CohortPatient(patient_id=pid, subject_id=f"S-{pid[1:]}", events=_events(resources))
        for pid, resources in RESOURCES.items()
    ]


def _ref(resource_type: str, rid: str) -> SourceRef:
    return SourceRef(resource_type, rid, 1)


D = dt.date
COHORT = {s.patient_id: s for s in build_cohort(PROTOCOL, _patients())}


def test_membership_and_order() -> None:
    """Only patients with an ICB are in the cohort, sorted by subject id."""
    cohort = build_cohort(PROTOCOL, _patients())
    assert [s.subject_id for s in cohort] == ["S-1", "S-2", "S-3", "S-4", "S-6", "S-7"]
    assert {s.patient_id: s.group for s in cohort} == {
        "p1": "dupilumab",
        "p2": "control_1",
        "p3": "control_2",
        "p4": "control_1",
        "p6": "dupilumab",
        "p7": "control_2",
    }


def test_dupilumab_subject_in_full() -> None:
    """Every field of the dupilumab-group patient, each from its own resource."""
    assert COHORT["p1"] == CirAESubject(
        patient_id="p1",
        subject_id="S-1",
        group="dupilumab",
        icb_start=D(2021, 3, 1),
        icb_type="PD-1",
        sex="female",
        race="White",
        age_years=(D(2021, 3, 1) - D(1960, 3, 1)).days / 365.25,  # 22280 days
        charlson=4,  # C34 any tumour 2 + E11.2 diabetes with complications 2; post-ICB I21 ignored
        cancer_type="C34",
        stage="III",
        cirae_onset=D(2021, 4, 10),
        resolution="complete",
        dupilumab_start=D(2021, 5, 1),
        glucocorticoid_start=D(2021, 4, 12),
        death=None,
        last_seen=D(2022, 6, 1),
        evidence=(
            _ref("MedicationAdministration", "p1-pembro"),
            _ref("Condition", "p1-rash"),
            _ref("MedicationAdministration", "p1-dupi"),
        ),
    )
    assert COHORT["p1"].age_years == 22280 / 365.25


def test_combination_control_1_in_full() -> None:
    """Same-day nivolumab + ipilimumab; a pre-ICB eczema and pre-cirAE dupilumab do not count."""
    assert COHORT["p2"] == CirAESubject(
        patient_id="p2",
        subject_id="S-2",
        group="control_1",
        icb_start=D(2020, 6, 1),
        icb_type="combination",
        sex="male",
        race="Asian Indian",
        age_years=(D(2020, 6, 1) - D(1955, 7, 2)).days / 365.25,  # year-only birth: mid-year
        charlson=2,  # C43 before ICB; C78 only after ICB, so not metastatic (6)
        cancer_type="C43",
        stage="IV",
        cirae_onset=D(2020, 7, 15),
        resolution="none",
        dupilumab_start=None,
        glucocorticoid_start=None,
        death=D(2021, 2, 1),
        last_seen=D(2021, 2, 1),
        evidence=(
            _ref("MedicationAdministration", "p2-ipi"),
            _ref("AdverseEvent", "p2-itch"),
        ),
    )
    assert COHORT["p2"].os_days == 245
    assert COHORT["p2"].died is True


def test_control_2_from_an_order() -> None:
    """An ICB order starts the clock; a pre-ICB drug eruption is not a cirAE; GC past 2 years is out."""
    s = COHORT["p3"]
    assert (s.group, s.icb_start, s.icb_type) == ("control_2", D(2022, 1, 10), "PD-L1")
    assert (s.sex, s.race) == ("female", None)
    assert (s.cirae_onset, s.resolution, s.dupilumab_start) == (None, None, None)
    assert (s.cancer_type, s.stage, s.charlson) == ("C34", "unknown", 0)
    assert s.glucocorticoid_start is None
    assert s.last_seen == D(2024, 1, 11)
    assert s.evidence == (_ref("MedicationRequest", "p3-atezo"),)


def test_second_class_outside_the_window_is_not_combination() -> None:
    """Ipilimumab 28 days after cemiplimab (window 21) keeps the type PD-1; remission → partial."""
    s = COHORT["p4"]
    assert (s.icb_type, s.group, s.resolution) == ("PD-1", "control_1", "partial")
    assert (s.sex, s.race, s.age_years) == (None, None, None)
    assert (s.cancer_type, s.stage, s.charlson) == ("unknown", "unknown", 0)
    assert s.glucocorticoid_start == D(2021, 2, 1)  # exactly 2 years: inside the window
    assert s.cirae_onset == D(2019, 5, 5)


def test_second_class_on_the_window_edge_is_combination() -> None:
    """Nivolumab 21 days after ipilimumab → combination; dupilumab ordered on the onset day counts."""
    s = COHORT["p6"]
    assert (s.icb_start, s.icb_type, s.group) == (D(2023, 1, 5), "combination", "dupilumab")
    assert (s.cirae_onset, s.dupilumab_start, s.resolution) == (
        D(2023, 3, 1),
        D(2023, 3, 1),
        "none",
    )
    assert (s.race, s.cancer_type, s.stage, s.charlson) == ("2054-5", "C64", "III", 2)
    assert s.evidence == (
        _ref("MedicationAdministration", "p6-ipi"),
        _ref("Condition", "p6-lich"),
        _ref("MedicationRequest", "p6-dupi"),
    )


def test_ctla4_primary_cancer_and_partial_date_stage() -> None:
    """CTLA-4 alone; a secondary malignancy is never the cancer type; a month-dated stage counts."""
    s = COHORT["p7"]
    assert (s.icb_type, s.group, s.cancer_type, s.stage) == ("CTLA-4", "control_2", "C50", "II")
    assert s.charlson == 6  # C79 (metastatic) supersedes C50 with the assign0 hierarchy
    assert s.age_years == (D(2024, 4, 2) - D(1965, 7, 20)).days / 365.25


def test_order_of_patients_and_events_does_not_matter() -> None:
    """Shuffled patients and events give the identical cohort (ties are broken by source)."""
    rng = random.Random(7)
    shuffled = []
    for p in _patients():
        events = list(p.events)
        rng.shuffle(events)
        shuffled.append(CohortPatient(p.patient_id, p.subject_id, events))
    rng.shuffle(shuffled)
    assert build_cohort(PROTOCOL, shuffled) == build_cohort(PROTOCOL, _patients())


def test_quan_weighting_is_one_setting_away() -> None:
    """The protocol's weighting reaches the index: Quan 2011 gives lung cancer 2 + diabetes 1."""
    quan = PROTOCOL.model_copy(
        update={"cohort": PROTOCOL.cohort.model_copy(update={"charlson_weighting": "quan"})}
    )
    cohort = {s.patient_id: s.charlson for s in build_cohort(quan, _patients())}
    assert cohort == {"p1": 3, "p2": 2, "p3": 0, "p4": 0, "p6": 2, "p7": 6}


def test_onset_before_icb_counts_when_the_protocol_allows_it() -> None:
    """With cirae_onset_after_icb off, a cirAE before ICB counts (p3 becomes control 1)."""
    loose = PROTOCOL.model_copy(
        update={"cohort": PROTOCOL.cohort.model_copy(update={"cirae_onset_after_icb": False})}
    )
    cohort = {s.patient_id: s for s in build_cohort(loose, _patients())}
    assert (cohort["p3"].group, cohort["p3"].cirae_onset) == ("control_1", D(2021, 12, 1))
    # p2's eczema (2019) becomes the cirAE, so the 2019 dupilumab now follows it.
    assert (cohort["p2"].group, cohort["p2"].cirae_onset, cohort["p2"].resolution) == (
        "dupilumab",
        D(2019, 1, 1),
        "complete",
    )
    assert cohort["p2"].dupilumab_start == D(2019, 6, 1)


def test_membership_must_equal_the_icb_classes() -> None:
    """ICB initiation is membership's Day 1, so a protocol where they differ is refused."""
    odd = PROTOCOL.model_copy(
        update={
            "membership": PROTOCOL.membership.model_copy(
                update={"cohort_valuesets": ("pd1_inhibitor",)}
            )
        }
    )
    with pytest.raises(ValueError, match="must equal the ICB classes"):
        build_cohort(odd, _patients())


def test_duplicate_subject_ids_are_refused() -> None:
    """Subject ids key the Charlson batch and the output: a duplicate is a caller's bug."""
    p = _patients()[0]
    with pytest.raises(ValueError, match=r"duplicate subject ids: \['S-1'\]"):
        build_cohort(PROTOCOL, [p, p])
