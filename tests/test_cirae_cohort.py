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
from service.protocol.terminology import build_terminology
from service.studies.cirae.cohort import (
    CohortBuild,
    CohortPatient,
    Exclusion,
    _icb_type,
    build_cohort,
    build_cohort_report,
)
from service.studies.cirae.protocol import CohortProtocol
from service.studies.cirae.records import CirAESubject
from service.studies.registry import load_protocols

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
    rid: str, pid: str, drug: str, authored: str, route: str | None = None, intent: str = "order"
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "active",
        "intent": intent,
        "medicationCodeableConcept": {"text": drug},
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": authored,
    }
    if route:
        out["dosageInstruction"] = [{"route": {"text": route}}]
    return out


def _statement(
    rid: str, pid: str, drug: str, start: str, end: str | None = None, route: str | None = None
) -> dict[str, Any]:
    """A MedicationStatement over a period (no end: open-ended)."""
    period = {"start": start, "end": end} if end else {"start": start}
    out: dict[str, Any] = {
        "resourceType": "MedicationStatement",
        "id": rid,
        "status": "completed" if end else "active",
        "medicationCodeableConcept": {"text": drug},
        "subject": {"reference": f"Patient/{pid}"},
        "effectivePeriod": period,
    }
    if route:
        out["dosage"] = [{"route": {"text": route}}]
    return out


def _condition(
    rid: str,
    pid: str,
    text: str,
    onset: str | None,
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
    }
    if onset:
        out["onsetDateTime"] = onset
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
    # dupilumab only before ICB start (history, not exposure from ICB start on: no exclusion);
    # topical hydrocortisone is not systemic; melanoma stage IV before ICB (the later IIIB is
    # ignored); the C78 recorded after ICB does not enter Charlson; race text only → case-folded.
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
    # no race; stage only after ICB → unknown; the lung cancer diagnosed 22 days after ICB start is
    # the cancer type (none before; within 90 days); prednisone one day past the 2-year window.
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
        race="2106-3",  # the OMB code, not the display
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
    """Same-day nivolumab + ipilimumab; a pre-ICB eczema and pre-ICB dupilumab do not count."""
    assert COHORT["p2"] == CirAESubject(
        patient_id="p2",
        subject_id="S-2",
        group="control_1",
        icb_start=D(2020, 6, 1),
        icb_type="combination",
        sex="male",
        race="asian indian",  # no OMB code: the text, case-folded
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
    assert s.race == "2106-3"
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


# -- review findings: edge patients, each a known answer ------------------------------------------


def _base(pid: str, icb: str = "2021-03-01", birth: str = "1960-01-01", **extra: Any) -> list[Any]:
    """A Patient and a first pembrolizumab dose (ICB start), the start of every edge patient."""
    return [
        _patient(pid, "female", birth, **extra),
        _given(f"{pid}-icb", pid, "pembrolizumab 200 MG", icb),
    ]


EDGE_RESOURCES: dict[str, list[dict[str, Any]]] = {
    # deaths: a year-only date is imputed at the last fact inside the year.
    "d1": [
        *_base("d1", deceasedDateTime="2022"),
        _encounter("d1-visit", "d1", "2022-05-10"),
    ],
    # a month-only death after the last fact: the month's first day.
    "d2": [
        *_base("d2", deceasedDateTime="2022-05"),
        _encounter("d2-visit", "d2", "2021-12-01"),
    ],
    # a month-only death before a (later) fact: the last day of the month.
    "d3": [
        *_base("d3", deceasedDateTime="2022-05"),
        _encounter("d3-visit", "d3", "2022-07-01"),
    ],
    # deceasedBoolean without a date: not alive, not analysable.
    "d4": [*_base("d4", deceasedBoolean=True), _encounter("d4-visit", "d4", "2021-06-01")],
    # deaths before ICB start, to the day and to the year.
    "d5": _base("d5", deceasedDateTime="2020-12-01"),
    "d6": _base("d6", deceasedDateTime="2020"),
    # a death year containing ICB start, with no later fact: ICB start itself (OS 0).
    "d7": _base("d7", deceasedDateTime="2021"),
    # cirAE onset known to the month only, the month starting on the ICB start day → after.
    "c1": [*_base("c1"), _condition("c1-rash", "c1", "Maculopapular rash", "2021-03")],
    # a cirAE month wholly before ICB start → not the cirAE (control 2).
    "c2": [*_base("c2"), _condition("c2-rash", "c2", "Maculopapular rash", "2021-02")],
    # a cirAE month containing ICB start (15 March) → group indeterminate.
    "c3": [
        *_base("c3", icb="2021-03-15"),
        _condition("c3-rash", "c3", "Maculopapular rash", "2021-03"),
    ],
    # a cirAE year containing ICB start, but a dated cirAE after it: the dated one is the index.
    "c4": [
        *_base("c4"),
        _condition("c4-rash", "c4", "Maculopapular rash", "2021"),
        _condition("c4-itch", "c4", "Pruritus", "2021-05-01"),
    ],
    # a cirAE without any date → group indeterminate.
    "c5": [*_base("c5"), _condition("c5-rash", "c5", "Maculopapular rash", None)],
    # a cirAE year wholly after ICB start: onset on 1 January.
    "c6": [*_base("c6"), _condition("c6-rash", "c6", "Maculopapular rash", "2022")],
    # dupilumab only between ICB start and the cirAE → excluded.
    "e1": [
        *_base("e1"),
        _given("e1-dupi", "e1", "Dupixent 300 MG", "2021-03-20"),
        _condition("e1-rash", "e1", "Maculopapular rash", "2021-04-10"),
    ],
    # dupilumab taken from before ICB start until after the cirAE → dupilumab from onset.
    "e2": [
        *_base("e2"),
        _statement("e2-dupi", "e2", "dupilumab 300 MG", "2021-01-01", "2021-06-30"),
        _condition("e2-rash", "e2", "Maculopapular rash", "2021-04-10"),
    ],
    # dupilumab before the cirAE and again after it → dupilumab group, from the later dose.
    "e3": [
        *_base("e3"),
        _given("e3-dupi", "e3", "Dupixent 300 MG", "2021-03-20"),
        _given("e3-dupi2", "e3", "Dupixent 300 MG", "2021-05-01"),
        _condition("e3-rash", "e3", "Maculopapular rash", "2021-04-10"),
    ],
    # dupilumab that ended before ICB start → control 1 (no exposure from ICB start on).
    "e4": [
        *_base("e4"),
        _statement("e4-dupi", "e4", "dupilumab 300 MG", "2020-10-01", "2021-02-28"),
        _condition("e4-rash", "e4", "Maculopapular rash", "2021-04-10"),
    ],
    # a dupilumab administration without any date, and no dated one after the cirAE → excluded.
    "e5": [
        *_base("e5"),
        {
            k: v
            for k, v in _given("e5-dupi", "e5", "Dupixent 300 MG", "").items()
            if k != "effectiveDateTime"
        },
        _condition("e5-rash", "e5", "Maculopapular rash", "2021-04-10"),
    ],
    # prednisone started before ICB start and still taken on it → exposed from ICB start.
    "g1": [
        *_base("g1"),
        _statement("g1-pred", "g1", "prednisone 10 MG", "2020-12-01", "2021-03-10", "oral"),
    ],
    # an open-ended order before ICB start, a course ended the day before ICB start, and a
    # month-only statement (cannot time the covariate) → unexposed.
    "g2": [
        *_base("g2"),
        _ordered("g2-pred", "g2", "prednisone 20 MG", "2021-01-15", "oral"),
        _statement("g2-pred2", "g2", "prednisone 10 MG", "2020-11-01", "2021-02-28", "oral"),
        _statement("g2-pred3", "g2", "prednisone 10 MG", "2021-05", None, "oral"),
    ],
    # an open-ended order inside the window counts from its start.
    "g3": [*_base("g3"), _ordered("g3-pred", "g3", "prednisone 20 MG", "2021-06-01", "oral")],
    # race: the code, a display in lower case, and a text in upper case are one category.
    "r1": _base("r1", **_race("2106-3", "White", "White")),
    "r2": _base("r2", **_race(None, "white", None)),
    "r3": _base("r3", **_race(None, None, "WHITE ")),
    "r4": _base("r4", **_race(None, None, "Asian  Indian")),
    # cancer type: the latest primary by ICB start; C44 (skin), C78 and post-ICB C50 do not count.
    "k1": [
        *_base("k1"),
        _condition("k1-mel", "k1", "Melanoma", "2015-01-01", "C43.9"),
        _condition("k1-lung", "k1", "Lung cancer", "2020-06-01", "C34.90"),
        _condition("k1-bcc", "k1", "Basal cell carcinoma", "2021-01-10", "C44.91"),
        _condition("k1-mets", "k1", "Secondary malignancy of lung", "2021-02-01", "C78.00"),
        _condition("k1-breast", "k1", "Breast cancer", "2021-04-01", "C50.911"),
    ],
    # none by ICB start: the earliest within 90 days after (61 days), not the later one.
    "k2": [
        *_base("k2"),
        _condition("k2-colon", "k2", "Colon cancer", "2021-05-20", "C18.9"),
        _condition("k2-prostate", "k2", "Prostate cancer", "2021-05-01", "C61"),
    ],
    # only C44 before and a cancer 96 days after → unknown.
    "k3": [
        *_base("k3"),
        _condition("k3-bcc", "k3", "Basal cell carcinoma", "2020-01-01", "C44.91"),
        _condition("k3-prostate", "k3", "Prostate cancer", "2021-06-05", "C61"),
    ],
    # a birth date after ICB start, and a planned ICB order after the last visit.
    "a1": [
        *_base("a1", birth="2023-01-01"),
        _encounter("a1-visit", "a1", "2022-06-01"),
        _ordered("a1-plan", "a1", "pembrolizumab 200 MG", "2022-09-01", intent="plan"),
    ],
    # ICB known only to the month: no time origin.
    "m1": [
        _patient("m1", "male", "1950-01-01"),
        _given("m1-icb", "m1", "pembrolizumab 200 MG", "2021-03"),
    ],
    # no ICB: neither a subject nor an exclusion.
    "n1": [
        _patient("n1", "male", "1950-01-01"),
        _condition("n1-rash", "n1", "Maculopapular rash", "2021-04-10"),
    ],
}


def _edge_patients() -> list[CohortPatient]:
    return [
        CohortPatient(patient_id=pid, subject_id=f"E-{pid}", events=_events(resources))
        for pid, resources in EDGE_RESOURCES.items()
    ]


EDGE = build_cohort_report(PROTOCOL, _edge_patients())
EDGES = {s.patient_id: s for s in EDGE.subjects}


def test_exclusions_are_reported_with_reasons() -> None:
    """Every ICB-treated patient is a subject or an exclusion; a patient without ICB is neither."""
    assert EDGE.excluded == (
        Exclusion(
            "E-c3", "cirAE dated only to a month or year containing ICB start: group indeterminate"
        ),
        Exclusion("E-c5", "cirAE without a date: group indeterminate"),
        Exclusion("E-d4", "death recorded without a date"),
        Exclusion("E-d5", "death before ICB start"),
        Exclusion("E-d6", "death before ICB start"),
        Exclusion("E-e1", "dupilumab before cirAE onset"),
        Exclusion("E-e5", "dupilumab without a date: group indeterminate"),
        Exclusion("E-m1", "ICB without a day-precision date: no time origin"),
    )
    assert [s.subject_id for s in EDGE.subjects] == [
        "E-a1", "E-c1", "E-c2", "E-c4", "E-c6", "E-d1", "E-d2", "E-d3", "E-d7", "E-e2", "E-e3",
        "E-e4", "E-g1", "E-g2", "E-g3", "E-k1", "E-k2", "E-k3", "E-r1", "E-r2", "E-r3", "E-r4",
    ]  # fmt: skip


def test_report_does_not_depend_on_order() -> None:
    """Shuffled edge patients and events give the identical report, exclusions included."""
    rng = random.Random(11)
    shuffled = []
    for p in _edge_patients():
        events = list(p.events)
        rng.shuffle(events)
        shuffled.append(CohortPatient(p.patient_id, p.subject_id, events))
    rng.shuffle(shuffled)
    assert build_cohort_report(PROTOCOL, shuffled) == EDGE


def test_build_cohort_is_the_report_subjects() -> None:
    """build_cohort keeps its list for existing callers; the main patients exclude nobody."""
    report = build_cohort_report(PROTOCOL, _patients())
    assert isinstance(report, CohortBuild)
    assert report.excluded == ()
    assert list(report.subjects) == build_cohort(PROTOCOL, _patients())
    assert build_cohort(PROTOCOL, _edge_patients()) == list(EDGE.subjects)


def test_partial_death_dates_are_imputed_not_dropped() -> None:
    """max(first, min(last fact, last)): the first day of the interval not before the last fact."""
    assert (EDGES["d1"].death, EDGES["d1"].last_seen, EDGES["d1"].os_days) == (
        D(2022, 5, 10),
        D(2022, 5, 10),
        435,
    )
    assert (EDGES["d2"].death, EDGES["d2"].last_seen, EDGES["d2"].died) == (
        D(2022, 5, 1),
        D(2022, 5, 1),
        True,
    )
    assert (EDGES["d3"].death, EDGES["d3"].last_seen) == (D(2022, 5, 31), D(2022, 7, 1))
    assert (EDGES["d7"].death, EDGES["d7"].os_days, EDGES["d7"].died) == (D(2021, 3, 1), 0, True)


def test_cirae_onset_known_to_the_month_or_year() -> None:
    """Wholly on/after ICB start → after (onset = first day); wholly before → no cirAE."""
    assert (EDGES["c1"].group, EDGES["c1"].cirae_onset) == ("control_1", D(2021, 3, 1))
    assert (EDGES["c2"].group, EDGES["c2"].cirae_onset, EDGES["c2"].resolution) == (
        "control_2",
        None,
        None,
    )
    assert (EDGES["c4"].group, EDGES["c4"].cirae_onset) == ("control_1", D(2021, 5, 1))
    assert EDGES["c4"].evidence[1] == _ref("Condition", "c4-itch")
    assert (EDGES["c6"].group, EDGES["c6"].cirae_onset) == ("control_1", D(2022, 1, 1))


def test_dupilumab_exposure_intervals() -> None:
    """Exposure reaching onset → dupilumab from max(start, onset); ended before ICB → control 1."""
    e2, e3, e4 = EDGES["e2"], EDGES["e3"], EDGES["e4"]
    assert (e2.group, e2.cirae_onset, e2.dupilumab_start) == (
        "dupilumab",
        D(2021, 4, 10),
        D(2021, 4, 10),
    )
    assert e2.evidence == (
        _ref("MedicationAdministration", "e2-icb"),
        _ref("Condition", "e2-rash"),
        _ref("MedicationStatement", "e2-dupi"),
    )
    assert (e3.group, e3.dupilumab_start) == ("dupilumab", D(2021, 5, 1))
    assert e3.evidence[2] == _ref("MedicationAdministration", "e3-dupi2")
    assert (e4.group, e4.dupilumab_start) == ("control_1", None)


def test_glucocorticoid_running_at_icb_start_counts() -> None:
    """A course overlapping the window counts from max(start, ICB start); open-ended: if inside."""
    assert EDGES["g1"].glucocorticoid_start == D(2021, 3, 1)
    assert EDGES["g2"].glucocorticoid_start is None
    assert EDGES["g3"].glucocorticoid_start == D(2021, 6, 1)


def test_race_keys_on_the_omb_code() -> None:
    """'2106-3', 'white' and 'WHITE ' are one category; other text is case-folded."""
    assert [EDGES[p].race for p in ("r1", "r2", "r3", "r4")] == [
        "2106-3",
        "2106-3",
        "2106-3",
        "asian indian",
    ]


def test_cancer_type_is_the_cancer_at_icb_start() -> None:
    """Latest primary by ICB start (not C44/C78, not after ICB); else the first ≤ 90 days after."""
    assert [EDGES[p].cancer_type for p in ("k1", "k2", "k3")] == ["C34", "C61", "unknown"]


def test_negative_age_and_last_seen_without_plans_or_birth() -> None:
    """A birth after ICB start → age None; neither it nor a planned order moves last_seen."""
    s = EDGES["a1"]
    assert (s.age_years, s.last_seen, s.icb_type) == (None, D(2022, 6, 1), "PD-1")


def test_icb_type_without_an_icb_class_is_an_error() -> None:
    """Membership guarantees an ICB class; if that breaks it is an explicit error, not an assert."""
    with pytest.raises(
        ValueError, match="ICB started on 2021-03-01 but no ICB class starts by 2021-03-22"
    ):
        _icb_type(PROTOCOL, [], D(2021, 3, 1))
