"""The cirAE cohort from hand-written FHIR through the real mapper: groups, ICB type, covariates."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from typing import Any

import pytest

from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from service.protocol.terminology import build_terminology
from service.studies.cirae.cohort import (
    CohortBuild,
    CohortPatient,
    Exclusion,
    _by_kind,
    _icb_type,
    build_cohort,
    build_cohort_report,
)
from service.studies.cirae.records import CirAESubject
from tests.kit import fhir as kit
from tests.kit.mapping import events_of
from tests.kit.protocols import cohort_protocol

TERMS = build_terminology()


PROTOCOL = cohort_protocol(TERMS)


# -- the seven patients --------------------------------------------------------------------------

RESOURCES: dict[str, list[dict[str, Any]]] = {
    # dupilumab group: PD-1; Charlson from pre-ICB lung cancer (2) + diabetes with complications (2);
    # the post-ICB MI is ignored; Condition.stage IIIA before ICB; resolved cirAE; oral prednisone.
    "p1": [
        kit.patient(
            id="p1",
            gender="female",
            birth_date="1960-03-01",
            extension=[kit.us_core_race(code="2106-3", display="White", text="White")],
        ),
        kit.medication_administration(
            id="p1-pembro",
            patient="p1",
            medication="pembrolizumab 200 MG",
            effective="2021-03-01T10:00:00-05:00",
            route="IV",
        ),
        kit.medication_administration(
            id="p1-pembro2", patient="p1", medication="pembrolizumab 200 MG", effective="2021-03-22"
        ),
        kit.condition(
            id="p1-lung",
            patient="p1",
            code=kit.coded(kit.ICD10CM, "C34.90", text="Lung adenocarcinoma"),
            onset="2020-11-15",
            verification=None,
            stage=[{"summary": {"text": "Stage IIIA"}}],
        ),
        kit.condition(
            id="p1-dm",
            patient="p1",
            code=kit.coded(kit.ICD10CM, "E11.22", text="Type 2 diabetes with CKD"),
            onset="2015-06-01",
            verification=None,
        ),
        kit.condition(
            id="p1-mi",
            patient="p1",
            code=kit.coded(kit.ICD10CM, "I21.4", text="NSTEMI"),
            onset="2022-01-10",
            verification=None,
        ),
        kit.condition(
            id="p1-rash",
            patient="p1",
            code=kit.coded(kit.ICD10CM, "L27.0", text="Maculopapular rash"),
            onset="2021-04-10",
            clinical="resolved",
            verification=None,
        ),
        kit.medication_request(
            id="p1-pred",
            patient="p1",
            medication="prednisone 20 MG Oral Tablet",
            authored="2021-04-12",
            route="oral",
        ),
        kit.medication_administration(
            id="p1-dupi",
            patient="p1",
            medication="Dupixent 300 MG/2ML",
            effective="2021-05-01",
            route="subcutaneous",
        ),
        kit.medication_administration(
            id="p1-dupi2",
            patient="p1",
            medication="Dupixent 300 MG/2ML",
            effective="2021-05-15",
            route="subcutaneous",
        ),
        kit.encounter(id="p1-visit", patient="p1", start="2022-06-01", end="2022-06-01"),
    ],
    # control 1: nivolumab + ipilimumab on one day → combination; an eczema before ICB is not the
    # cirAE; the AE pruritus is (outcome 'recovering' → partial, CLINICAL.md revision 2);
    # (CLINICAL.md revision 2: the 2019 dupilumab this patient had is gone from the fixture: a
    # control never received dupilumab, so it would exclude p2; tests/test_cirae_rev2.py has it);
    # topical hydrocortisone is not systemic; melanoma stage IV before ICB (the later IIIB is
    # ignored); the C78 recorded after ICB does not enter Charlson; race text only → case-folded.
    "p2": [
        kit.patient(
            id="p2",
            gender="male",
            birth_date="1955",
            deceasedDateTime="2021-02-01",
            extension=[kit.us_core_race(text="Asian Indian")],
        ),
        kit.medication_administration(
            id="p2-nivo",
            patient="p2",
            medication="Opdivo (nivolumab) 240 MG",
            effective="2020-06-01",
        ),
        kit.medication_administration(
            id="p2-ipi", patient="p2", medication="Yervoy 50 MG/10ML", effective="2020-06-01"
        ),
        kit.condition(
            id="p2-mel",
            patient="p2",
            code=kit.coded(kit.ICD10CM, "C43.9", text="Melanoma of skin"),
            onset="2020-05-01",
            verification=None,
        ),
        kit.condition(
            id="p2-mets",
            patient="p2",
            code=kit.coded(kit.ICD10CM, "C78.00", text="Secondary malignancy of lung"),
            onset="2020-08-01",
            verification=None,
        ),
        kit.observation(
            id="p2-stage",
            patient="p2",
            code=kit.coded(kit.LOINC, "21908-9"),
            effective="2020-05-20",
            valueCodeableConcept={"text": "Stage IV"},
        ),
        kit.observation(
            id="p2-restage",
            patient="p2",
            code=kit.coded(kit.LOINC, "21908-9"),
            effective="2020-09-01",
            valueCodeableConcept={"text": "Stage IIIB"},
        ),
        kit.condition(
            id="p2-ecz",
            patient="p2",
            code="Eczema",
            onset="2019-01-01",
            clinical="resolved",
            verification=None,
        ),
        kit.adverse_event(
            id="p2-itch", patient="p2", event="Pruritus", date="2020-07-15", outcome="recovering"
        ),
        kit.medication_request(
            id="p2-hc",
            patient="p2",
            medication="hydrocortisone 1 % topical cream",
            authored="2020-07-20",
        ),
    ],
    # control 2: an atezolizumab order starts ICB; the drug eruption before it is not a cirAE;
    # no race; stage only after ICB → unknown; the lung cancer diagnosed 22 days after ICB start is
    # the cancer type (none before; within 90 days); prednisone one day past the 2-year window.
    "p3": [
        kit.patient(id="p3", gender="female", birth_date="1970-05-15"),
        kit.medication_request(
            id="p3-atezo", patient="p3", medication="Tecentriq 1200 MG", authored="2022-01-10"
        ),
        kit.condition(
            id="p3-erupt",
            patient="p3",
            code="Drug eruption",
            onset="2021-12-01",
            clinical="resolved",
            verification=None,
        ),
        kit.condition(
            id="p3-lung",
            patient="p3",
            code=kit.coded(kit.ICD10CM, "C34.1", text="Lung cancer"),
            onset="2022-02-01",
            verification=None,
            stage=[{"summary": {"text": "Stage IIB"}}],
        ),
        kit.medication_administration(
            id="p3-pred",
            patient="p3",
            medication="prednisone 40 MG",
            effective="2024-01-11",
            route="PO",
        ),
    ],
    # control 1: cemiplimab, then ipilimumab 28 days later (outside 21 days) → PD-1;
    # bullous pemphigoid in remission → partial; one IV dexamethasone dose exactly 2 years after
    # start (revision 2: a single-day dose is not a course);
    # no Patient resource → no sex, race or age; no cancer condition → unknown.
    "p4": [
        kit.medication_administration(
            id="p4-cemi", patient="p4", medication="Libtayo 350 MG", effective="2019-02-01"
        ),
        kit.medication_administration(
            id="p4-ipi", patient="p4", medication="ipilimumab 50 MG", effective="2019-03-01"
        ),
        kit.condition(
            id="p4-bp",
            patient="p4",
            code="Bullous pemphigoid",
            onset="2019-05-05",
            clinical="remission",
            verification=None,
        ),
        kit.medication_administration(
            id="p4-dex",
            patient="p4",
            medication="dexamethasone 10 MG",
            effective="2021-02-01",
            route="IV",
        ),
    ],
    # no ICB: not in the cohort, whatever else happened.
    "p5": [
        kit.patient(id="p5", gender="male", birth_date="1980-01-01"),
        kit.condition(
            id="p5-rash", patient="p5", code="Rash", onset="2022-03-01", verification=None
        ),
        kit.medication_administration(
            id="p5-dupi", patient="p5", medication="Dupixent 300 MG", effective="2022-04-01"
        ),
    ],
    # dupilumab group: ipilimumab, then nivolumab exactly 21 days later → combination; an active
    # lichenoid dermatitis → none; a dupilumab order on the onset day counts; coded stage group.
    "p6": [
        kit.patient(
            id="p6",
            gender="male",
            birth_date="1948-12-31",
            extension=[kit.us_core_race(code="2054-5")],
        ),
        kit.medication_administration(
            id="p6-ipi", patient="p6", medication="Yervoy 50 MG", effective="2023-01-05"
        ),
        kit.medication_administration(
            id="p6-nivo", patient="p6", medication="nivolumab 240 MG", effective="2023-01-26"
        ),
        kit.condition(
            id="p6-rcc",
            patient="p6",
            code=kit.coded(kit.ICD10CM, "C64.1", text="Renal cell carcinoma"),
            onset="2022-10-01",
            verification=None,
        ),
        kit.observation(
            id="p6-stage",
            patient="p6",
            code=kit.coded(kit.LOINC, "21908-9"),
            effective="2022-10-15",
            valueCodeableConcept={"text": "3"},
        ),
        kit.condition(
            id="p6-lich",
            patient="p6",
            code="Lichenoid dermatitis",
            onset="2023-03-01",
            clinical="active",
            verification=None,
        ),
        kit.medication_request(
            id="p6-dupi",
            patient="p6",
            medication="dupilumab 300 MG/2ML prefilled syringe",
            authored="2023-03-01",
        ),
    ],
    # control 2, CTLA-4 alone: breast cancer is the primary even though the bone secondary was
    # diagnosed first; a month-precision stage before ICB counts ('Stage 2B' → II).
    "p7": [
        kit.patient(
            id="p7",
            gender="female",
            birth_date="1965-07-20",
            extension=[kit.us_core_race(code="2106-3", display="White")],
        ),
        kit.medication_administration(
            id="p7-ipi", patient="p7", medication="tremelimumab 300 MG", effective="2024-04-02"
        ),
        kit.condition(
            id="p7-bone",
            patient="p7",
            code=kit.coded(kit.ICD10CM, "C79.51", text="Secondary malignancy of bone"),
            onset="2023-12-01",
            verification=None,
        ),
        kit.condition(
            id="p7-breast",
            patient="p7",
            code=kit.coded(kit.ICD10CM, "C50.911", text="Breast cancer"),
            onset="2024-01-15",
            verification=None,
        ),
        kit.observation(
            id="p7-stage",
            patient="p7",
            code=kit.coded(kit.LOINC, "21908-9"),
            effective="2024-03",
            valueCodeableConcept={"text": "Stage 2B"},
        ),
    ],
}


def _events(resources: list[dict[str, Any]]) -> list[TrialEvent]:
    """The events the real mappers derive from one patient's resources."""
    return events_of(TERMS, resources)


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
    """Same-day nivolumab + ipilimumab; a pre-ICB eczema does not count."""
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
        resolution="partial",  # revision 2: AE outcome 'recovering' is a partial resolution
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
    # revision 2: the one IV dexamethasone dose (exactly 2 years after ICB start) is a single-day
    # dose, not a course (tests/test_cirae_rev2.py checks the window edge with courses).
    assert s.glucocorticoid_start is None
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
    # p2's eczema (2019) becomes the cirAE (p2 has no dupilumab since revision 2's fixture); the
    # episode's latest status is the 2020 pruritus, recovering (revision 2: partial).
    assert (cohort["p2"].group, cohort["p2"].cirae_onset, cohort["p2"].resolution) == (
        "control_1",
        D(2019, 1, 1),
        "partial",
    )
    assert cohort["p2"].dupilumab_start is None


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
        kit.patient(id=pid, gender="female", birth_date=birth, **extra),
        kit.medication_administration(
            id=f"{pid}-icb", patient=pid, medication="pembrolizumab 200 MG", effective=icb
        ),
    ]


EDGE_RESOURCES: dict[str, list[dict[str, Any]]] = {
    # deaths: a year-only date is imputed at the last fact inside the year.
    "d1": [
        *_base("d1", deceasedDateTime="2022"),
        kit.encounter(id="d1-visit", patient="d1", start="2022-05-10", end="2022-05-10"),
    ],
    # a month-only death after the last fact: the month's first day.
    "d2": [
        *_base("d2", deceasedDateTime="2022-05"),
        kit.encounter(id="d2-visit", patient="d2", start="2021-12-01", end="2021-12-01"),
    ],
    # a month-only death before a (later) fact: the last day of the month.
    "d3": [
        *_base("d3", deceasedDateTime="2022-05"),
        kit.encounter(id="d3-visit", patient="d3", start="2022-07-01", end="2022-07-01"),
    ],
    # deceasedBoolean without a date: not alive, not analysable.
    "d4": [
        *_base("d4", deceasedBoolean=True),
        kit.encounter(id="d4-visit", patient="d4", start="2021-06-01", end="2021-06-01"),
    ],
    # deaths before ICB start, to the day and to the year.
    "d5": _base("d5", deceasedDateTime="2020-12-01"),
    "d6": _base("d6", deceasedDateTime="2020"),
    # a death year containing ICB start, with no later fact: ICB start itself (OS 0).
    "d7": _base("d7", deceasedDateTime="2021"),
    # cirAE onset known to the month only, the month starting on the ICB start day → after.
    "c1": [
        *_base("c1"),
        kit.condition(
            id="c1-rash",
            patient="c1",
            code="Maculopapular rash",
            onset="2021-03",
            verification=None,
        ),
    ],
    # a cirAE month wholly before ICB start → not the cirAE (control 2).
    "c2": [
        *_base("c2"),
        kit.condition(
            id="c2-rash",
            patient="c2",
            code="Maculopapular rash",
            onset="2021-02",
            verification=None,
        ),
    ],
    # a cirAE month containing ICB start (15 March) → group indeterminate.
    "c3": [
        *_base("c3", icb="2021-03-15"),
        kit.condition(
            id="c3-rash",
            patient="c3",
            code="Maculopapular rash",
            onset="2021-03",
            verification=None,
        ),
    ],
    # a cirAE year containing ICB start, but a dated cirAE after it: the dated one is the index.
    "c4": [
        *_base("c4"),
        kit.condition(
            id="c4-rash", patient="c4", code="Maculopapular rash", onset="2021", verification=None
        ),
        kit.condition(
            id="c4-itch", patient="c4", code="Pruritus", onset="2021-05-01", verification=None
        ),
    ],
    # a cirAE without any date → group indeterminate.
    "c5": [
        *_base("c5"),
        kit.condition(id="c5-rash", patient="c5", code="Maculopapular rash", verification=None),
    ],
    # a cirAE year wholly after ICB start: onset on 1 January.
    "c6": [
        *_base("c6"),
        kit.condition(
            id="c6-rash", patient="c6", code="Maculopapular rash", onset="2022", verification=None
        ),
    ],
    # dupilumab only between ICB start and the cirAE → excluded.
    "e1": [
        *_base("e1"),
        kit.medication_administration(
            id="e1-dupi", patient="e1", medication="Dupixent 300 MG", effective="2021-03-20"
        ),
        kit.condition(
            id="e1-rash",
            patient="e1",
            code="Maculopapular rash",
            onset="2021-04-10",
            verification=None,
        ),
    ],
    # dupilumab taken from before ICB start until after the cirAE → excluded (revision 2).
    "e2": [
        *_base("e2"),
        kit.medication_statement(
            id="e2-dupi",
            patient="e2",
            medication="dupilumab 300 MG",
            status="completed",
            effectivePeriod=kit.period("2021-01-01", "2021-06-30"),
        ),
        kit.condition(
            id="e2-rash",
            patient="e2",
            code="Maculopapular rash",
            onset="2021-04-10",
            verification=None,
        ),
    ],
    # dupilumab before the cirAE and again after it → excluded (revision 2: first given before).
    "e3": [
        *_base("e3"),
        kit.medication_administration(
            id="e3-dupi", patient="e3", medication="Dupixent 300 MG", effective="2021-03-20"
        ),
        kit.medication_administration(
            id="e3-dupi2", patient="e3", medication="Dupixent 300 MG", effective="2021-05-01"
        ),
        kit.condition(
            id="e3-rash",
            patient="e3",
            code="Maculopapular rash",
            onset="2021-04-10",
            verification=None,
        ),
    ],
    # dupilumab that ended before ICB start → excluded (revision 2: controls never had any).
    "e4": [
        *_base("e4"),
        kit.medication_statement(
            id="e4-dupi",
            patient="e4",
            medication="dupilumab 300 MG",
            status="completed",
            effectivePeriod=kit.period("2020-10-01", "2021-02-28"),
        ),
        kit.condition(
            id="e4-rash",
            patient="e4",
            code="Maculopapular rash",
            onset="2021-04-10",
            verification=None,
        ),
    ],
    # a dupilumab administration without any date, and no dated one after the cirAE → excluded.
    "e5": [
        *_base("e5"),
        kit.medication_administration(id="e5-dupi", patient="e5", medication="Dupixent 300 MG"),
        kit.condition(
            id="e5-rash",
            patient="e5",
            code="Maculopapular rash",
            onset="2021-04-10",
            verification=None,
        ),
    ],
    # prednisone started before ICB start and still taken on it → exposed from ICB start.
    "g1": [
        *_base("g1"),
        kit.medication_statement(
            id="g1-pred",
            patient="g1",
            medication="prednisone 10 MG",
            status="completed",
            route="oral",
            effectivePeriod=kit.period("2020-12-01", "2021-03-10"),
        ),
    ],
    # an open-ended order before ICB start and a course ended the day before ICB start → not
    # exposure; a month-only statement → placed on the 1st of its month, flagged (revision 2).
    "g2": [
        *_base("g2"),
        kit.medication_request(
            id="g2-pred",
            patient="g2",
            medication="prednisone 20 MG",
            authored="2021-01-15",
            route="oral",
        ),
        kit.medication_statement(
            id="g2-pred2",
            patient="g2",
            medication="prednisone 10 MG",
            status="completed",
            route="oral",
            effectivePeriod=kit.period("2020-11-01", "2021-02-28"),
        ),
        kit.medication_statement(
            id="g2-pred3",
            patient="g2",
            medication="prednisone 10 MG",
            status="active",
            route="oral",
            effectivePeriod=kit.period("2021-05"),
        ),
    ],
    # an open-ended order inside the window counts from its start.
    "g3": [
        *_base("g3"),
        kit.medication_request(
            id="g3-pred",
            patient="g3",
            medication="prednisone 20 MG",
            authored="2021-06-01",
            route="oral",
        ),
    ],
    # race: the code, a display in lower case, and a text in upper case are one category.
    "r1": _base("r1", extension=[kit.us_core_race(code="2106-3", display="White", text="White")]),
    "r2": _base("r2", extension=[kit.us_core_race(display="white")]),
    "r3": _base("r3", extension=[kit.us_core_race(text="WHITE ")]),
    "r4": _base("r4", extension=[kit.us_core_race(text="Asian  Indian")]),
    # cancer type: the latest primary by ICB start; C44 (skin), C78 and post-ICB C50 do not count.
    "k1": [
        *_base("k1"),
        kit.condition(
            id="k1-mel",
            patient="k1",
            code=kit.coded(kit.ICD10CM, "C43.9", text="Melanoma"),
            onset="2015-01-01",
            verification=None,
        ),
        kit.condition(
            id="k1-lung",
            patient="k1",
            code=kit.coded(kit.ICD10CM, "C34.90", text="Lung cancer"),
            onset="2020-06-01",
            verification=None,
        ),
        kit.condition(
            id="k1-bcc",
            patient="k1",
            code=kit.coded(kit.ICD10CM, "C44.91", text="Basal cell carcinoma"),
            onset="2021-01-10",
            verification=None,
        ),
        kit.condition(
            id="k1-mets",
            patient="k1",
            code=kit.coded(kit.ICD10CM, "C78.00", text="Secondary malignancy of lung"),
            onset="2021-02-01",
            verification=None,
        ),
        kit.condition(
            id="k1-breast",
            patient="k1",
            code=kit.coded(kit.ICD10CM, "C50.911", text="Breast cancer"),
            onset="2021-04-01",
            verification=None,
        ),
    ],
    # none by ICB start: the earliest within 90 days after (61 days), not the later one.
    "k2": [
        *_base("k2"),
        kit.condition(
            id="k2-colon",
            patient="k2",
            code=kit.coded(kit.ICD10CM, "C18.9", text="Colon cancer"),
            onset="2021-05-20",
            verification=None,
        ),
        kit.condition(
            id="k2-prostate",
            patient="k2",
            code=kit.coded(kit.ICD10CM, "C61", text="Prostate cancer"),
            onset="2021-05-01",
            verification=None,
        ),
    ],
    # only C44 before and a cancer 96 days after → unknown.
    "k3": [
        *_base("k3"),
        kit.condition(
            id="k3-bcc",
            patient="k3",
            code=kit.coded(kit.ICD10CM, "C44.91", text="Basal cell carcinoma"),
            onset="2020-01-01",
            verification=None,
        ),
        kit.condition(
            id="k3-prostate",
            patient="k3",
            code=kit.coded(kit.ICD10CM, "C61", text="Prostate cancer"),
            onset="2021-06-05",
            verification=None,
        ),
    ],
    # a birth date after ICB start, and a planned ICB order after the last visit.
    "a1": [
        *_base("a1", birth="2023-01-01"),
        kit.encounter(id="a1-visit", patient="a1", start="2022-06-01", end="2022-06-01"),
        kit.medication_request(
            id="a1-plan",
            patient="a1",
            medication="pembrolizumab 200 MG",
            authored="2022-09-01",
            intent="plan",
        ),
    ],
    # ICB known only to the month: no time origin.
    "m1": [
        kit.patient(id="m1", gender="male", birth_date="1950-01-01"),
        kit.medication_administration(
            id="m1-icb", patient="m1", medication="pembrolizumab 200 MG", effective="2021-03"
        ),
    ],
    # no ICB: neither a subject nor an exclusion.
    "n1": [
        kit.patient(id="n1", gender="male", birth_date="1950-01-01"),
        kit.condition(
            id="n1-rash",
            patient="n1",
            code="Maculopapular rash",
            onset="2021-04-10",
            verification=None,
        ),
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
        # CLINICAL.md revision 2: dupilumab first given before the cirAE fits no group
        Exclusion("E-e2", "dupilumab before cirAE onset"),
        Exclusion("E-e3", "dupilumab before cirAE onset"),
        Exclusion("E-e4", "dupilumab before cirAE onset"),
        Exclusion("E-e5", "dupilumab without a date: group indeterminate"),
        Exclusion("E-m1", "ICB without a day-precision date: no time origin"),
    )
    assert [s.subject_id for s in EDGE.subjects] == [
        "E-a1", "E-c1", "E-c2", "E-c4", "E-c6", "E-d1", "E-d2", "E-d3", "E-d7",
        "E-g1", "E-g2", "E-g3", "E-k1", "E-k2", "E-k3", "E-r1", "E-r2", "E-r3", "E-r4",
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


def test_dupilumab_before_the_cirae_fits_no_group() -> None:
    """Revision 2: a course running across onset, an earlier dose, or one before ICB → excluded."""
    assert {"e2", "e3", "e4"}.isdisjoint(EDGES)


def test_glucocorticoid_running_at_icb_start_counts() -> None:
    """A course overlapping the window counts from max(start, ICB start); open-ended: if inside."""
    assert EDGES["g1"].glucocorticoid_start == D(2021, 3, 1)
    assert EDGES["g2"].glucocorticoid_start == D(2021, 5, 1)  # revision 2: was ignored
    assert (
        EDGES["g2"].glucocorticoid_flag
        == "a month-precision record placed at the start of its period"
    )
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


def test_each_rule_reads_the_kinds_it_needs_in_canonical_order() -> None:
    """Splitting a patient's events by kind once (then sorting each part) gives each rule the
    same events in the same order as filtering the whole list sorted by source, kind and date."""
    kinds = {
        "drugs": {EventKind.DRUG_ADMINISTRATION, EventKind.DRUG_EXPOSURE},
        "skin": {EventKind.CONDITION, EventKind.ADVERSE_EVENT},
        "conditions": {EventKind.CONDITION},
        "staged": {EventKind.TNM_CATEGORY, EventKind.CONDITION},
        "deaths": {EventKind.DEATH},
        "demographics": {EventKind.DEMOGRAPHICS},
    }
    rng = random.Random(7)
    checked: Counter[str] = Counter()
    for patient in _patients() + _edge_patients():
        events = list(patient.events)
        rng.shuffle(events)
        whole = sorted(
            events,
            key=lambda e: (
                e.source.resource_type,
                e.source.resource_id,
                e.source.version_id,
                e.kind.value,
                e.date.text if e.date else "",
            ),
        )
        parts = _by_kind(events)
        for name, wanted in kinds.items():
            expected = [e for e in whole if e.kind in wanted]
            assert getattr(parts, name) == expected, (patient.patient_id, name)
            checked[name] += len(expected)
    assert all(checked[name] > 0 for name in kinds)  # every part held events somewhere
