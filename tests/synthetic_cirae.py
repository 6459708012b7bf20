"""A seeded synthetic cirAE cohort as FHIR R4 resources, with the truth it was drawn from.

Survival model (so tests can check that the analysis recovers it):

- hazard of death per day = λ before the first systemic glucocorticoid and GC_HR · λ from then on
  (piecewise exponential, drawn by memorylessness: an Exp(λ) time, and if it passes the
  glucocorticoid day g, g + Exp(GC_HR · λ));
- the group (dupilumab / control 1 / control 2) has no effect (true dupilumab HR = 1.0) and neither
  do the covariates, and groups are drawn independently of survival (the cirAE and dupilumab days
  are then placed inside the observed follow-up, so no group carries immortal time);
- administrative censoring at ADMIN_END, plus random loss to follow-up for some patients.

Matching stays feasible: two sexes, two races, two ICB types, ages 60–66, ICB years 2019–2020 and a
Charlson index that differs by at most a few points, so each case has several eligible controls.

Glucocorticoid days fall within the protocol's 2-year window, so the exposure the analysis sees is the
exposure that drove the hazard. A glucocorticoid given on or after the last day of follow-up is not
written (it cannot have changed the hazard), so `Truth.glucocorticoid_start` is the observed start.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.kit import fhir as kit

GC_HR = 2.0
DUPILUMAB_HR = 1.0
BASELINE_HAZARD_PER_DAY = math.log(2) / 1000  # median survival 1000 days without glucocorticoids
ADMIN_END = dt.date(2024, 12, 31)
ICB_FIRST_DAY = dt.date(2019, 1, 1)
ICB_LAST_DAY = dt.date(2020, 12, 31)
GC_LAST_DAY = 700  # days after ICB initiation: inside the protocol's 2-year window


RACES = (("2106-3", "White", 0.8), ("2054-5", "Black or African American", 0.2))
CANCERS: tuple[tuple[str, str, float], ...] = (
    ("C34.90", "Malignant neoplasm of unspecified part of unspecified lung", 0.6),
    ("C43.9", "Malignant melanoma of skin, unspecified", 0.4),
)
STAGES = (("Stage III", 0.4), ("Stage IV", 0.6))
COMORBIDITIES = (
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("I50.9", "Heart failure, unspecified"),
    ("J44.9", "Chronic obstructive pulmonary disease, unspecified"),
)
COMORBIDITY_PROBABILITY = 0.15
CIRAE_TERMS = (
    "Maculopapular rash",
    "Pruritus",
    "Eczematous dermatitis",
    "Lichenoid dermatitis",
    "Bullous pemphigoid",
)
RESOLUTION_STATUSES: tuple[tuple[str, float], ...] = (
    ("resolved", 0.7),
    ("remission", 0.1),
    ("inactive", 0.08),
    ("active", 0.12),
)
GROUPS = (("dupilumab", 0.15), ("control_1", 0.35), ("control_2", 0.5))
GC_PROBABILITY = {"dupilumab": 0.55, "control_1": 0.55, "control_2": 0.4}
LOSS_TO_FOLLOW_UP_PROBABILITY = 0.2


@dataclass(frozen=True, slots=True)
class Truth:
    """What was drawn for one patient (the analysis should rebuild this from the FHIR resources)."""

    patient_id: str
    group: str
    icb_type: str
    icb_start: dt.date
    sex: str
    race: str
    birth_date: dt.date
    cancer_icd10: str
    stage: str
    comorbidities: tuple[str, ...]
    cirae_onset: dt.date | None
    cirae_status: str | None
    dupilumab_start: dt.date | None
    glucocorticoid_start: dt.date | None
    death: dt.date | None
    last_contact: dt.date


@dataclass(frozen=True, slots=True)
class SyntheticCohort:
    """The resources of every patient, in patient order, and the truth they were drawn from."""

    seed: int
    truth: tuple[Truth, ...]
    per_patient: tuple[tuple[dict[str, Any], ...], ...]
    gc_hr: float = GC_HR
    dupilumab_hr: float = DUPILUMAB_HR

    @property
    def resources(self) -> list[dict[str, Any]]:
        """Every resource, each patient's Patient first."""
        return [r for group in self.per_patient for r in group]

    def bundles(self, per_bundle: int = 50) -> list[dict[str, Any]]:
        """Transaction Bundles of `per_bundle` whole patients each (PUT by id: replays are idempotent)."""
        if per_bundle < 1:
            raise ValueError(f"per_bundle must be >= 1, got {per_bundle}")
        out = []
        for i in range(0, len(self.per_patient), per_bundle):
            group = self.per_patient[i : i + per_bundle]
            out.append(kit.bundle(*(kit.put_entry(r) for resources in group for r in resources)))
        return out


def _weighted(rng: random.Random, options: tuple[tuple[Any, float], ...]) -> Any:
    """One option drawn with its weight."""
    return rng.choices([o[0] for o in options], weights=[o[1] for o in options])[0]


def _day(origin: dt.date, days: int) -> str:
    """An ISO date `days` after `origin`."""
    return (origin + dt.timedelta(days=days)).isoformat()


def _survival_days(rng: random.Random, gc_day: int | None) -> int:
    """Whole days to death under hazard λ, then GC_HR·λ from the glucocorticoid day on."""
    first = rng.expovariate(BASELINE_HAZARD_PER_DAY)
    if gc_day is not None and first > gc_day:
        first = gc_day + rng.expovariate(GC_HR * BASELINE_HAZARD_PER_DAY)
    return max(1, math.ceil(first))


def _censoring_days(rng: random.Random, icb_start: dt.date) -> int:
    """Days to the last contact of a survivor: the data cut-off, or earlier when lost."""
    admin = (ADMIN_END - icb_start).days
    if rng.random() < LOSS_TO_FOLLOW_UP_PROBABILITY:
        return rng.randint(30, admin)
    return admin


@dataclass(frozen=True, slots=True)
class _Baseline:
    """What is drawn first for every patient, before the history (in this order)."""

    sex: str
    race: str
    icb_type: str
    icb_start: dt.date
    birth_date: dt.date
    cancer_icd10: str
    stage: str
    comorbidities: tuple[str, ...]


def _draw_baseline(rng: random.Random) -> _Baseline:
    """Sex, race, ICB type and start, age, cancer, stage and comorbidities (seed contract order)."""
    sex = rng.choice(("female", "male"))
    race = _weighted(rng, tuple((code, w) for code, _, w in RACES))
    icb_type = "combination" if rng.random() < 0.15 else "PD-1"
    icb_start = ICB_FIRST_DAY + dt.timedelta(
        days=rng.randint(0, (ICB_LAST_DAY - ICB_FIRST_DAY).days)
    )
    birth_date = icb_start - dt.timedelta(days=round(rng.uniform(60, 66) * 365.25))
    cancer = _weighted(rng, tuple((code, w) for code, _, w in CANCERS))
    stage = _weighted(rng, STAGES)
    comorbidities = tuple(c for c, _ in COMORBIDITIES if rng.random() < COMORBIDITY_PROBABILITY)
    return _Baseline(sex, race, icb_type, icb_start, birth_date, cancer, stage, comorbidities)


def _truth(
    patient_id: str,
    group: str,
    base: _Baseline,
    days: dict[str, int | None],
    status: str | None,
    death_day: int,
    censor_day: int,
) -> Truth:
    """The Truth of drawn day offsets from ICB initiation (`days`: onset, dupilumab, glucocorticoid,
    None where there is none); a glucocorticoid on or after the last day of follow-up is not seen."""
    end_day = min(death_day, censor_day)

    def on(offset: int | None) -> dt.date | None:
        return base.icb_start + dt.timedelta(days=offset) if offset is not None else None

    gc_day = days["glucocorticoid"]
    return Truth(
        patient_id=patient_id,
        group=group,
        icb_type=base.icb_type,
        icb_start=base.icb_start,
        sex=base.sex,
        race=base.race,
        birth_date=base.birth_date,
        cancer_icd10=base.cancer_icd10,
        stage=base.stage,
        comorbidities=base.comorbidities,
        cirae_onset=on(days["onset"]),
        cirae_status=status,
        dupilumab_start=on(days["dupilumab"]),
        glucocorticoid_start=on(gc_day) if gc_day is not None and gc_day < end_day else None,
        death=on(death_day) if death_day <= censor_day else None,
        last_contact=base.icb_start + dt.timedelta(days=end_day),
    )


def _draw(rng: random.Random, index: int) -> Truth:
    """One patient's characteristics and history (the order of draws is part of the seed contract)."""
    base = _draw_baseline(rng)
    group = _weighted(rng, GROUPS)
    gc_day = rng.randint(1, GC_LAST_DAY) if rng.random() < GC_PROBABILITY[group] else None
    death_day = _survival_days(rng, gc_day)
    censor_day = _censoring_days(rng, base.icb_start)
    end_day = min(death_day, censor_day)
    onset_day = rng.randint(1, min(90, end_day)) if group != "control_2" else None
    dupi_day = (
        rng.randint(onset_day, min(onset_day + 30, end_day))
        if group == "dupilumab" and onset_day is not None
        else None
    )
    status = _weighted(rng, RESOLUTION_STATUSES) if onset_day is not None else None
    days = {"onset": onset_day, "dupilumab": dupi_day, "glucocorticoid": gc_day}
    return _truth(f"syn-cirae-{index:04d}", group, base, days, status, death_day, censor_day)


# -- FHIR resources ---------------------------------------------------------------------------------


def _patient(truth: Truth) -> dict[str, Any]:
    """Patient with gender, birth date, US Core race and (when dead) the date of death."""
    display = {code: name for code, name, _ in RACES}[truth.race]
    death = {"deceasedDateTime": truth.death.isoformat()} if truth.death is not None else {}
    return kit.patient(
        id=truth.patient_id,
        mrn=truth.patient_id,
        mrn_system="urn:synthetic:cirae",
        gender=truth.sex,
        birth_date=truth.birth_date.isoformat(),
        extension=[kit.us_core_race(code=truth.race, display=display, text=display)],
        **death,
    )


def _administration(
    truth: Truth, rid: str, text: str, day: dt.date, route: str, mg: int
) -> dict[str, Any]:
    """A completed MedicationAdministration named by text (real feeds often only have names)."""
    return kit.medication_administration(
        id=f"{truth.patient_id}-{rid}",
        patient=truth.patient_id,
        medication=text,
        effective=day,
        route=route,
        dose=kit.quantity(mg, "mg"),
    )


def _icb(truth: Truth) -> list[dict[str, Any]]:
    """The first ICB dose(s): PD-1 alone, or ipilimumab + nivolumab on the same day."""
    if truth.icb_type == "combination":
        return [
            _administration(truth, "icb-ipi", "ipilimumab 50 MG/10ML", truth.icb_start, "IV", 70),
            _administration(truth, "icb-nivo", "nivolumab 100 MG/10ML", truth.icb_start, "IV", 70),
        ]
    drug = "pembrolizumab 100 MG/4ML" if truth.patient_id[-1] in "02468" else "nivolumab 240 MG"
    return [_administration(truth, "icb", drug, truth.icb_start, "IV", 200)]


def _condition(
    truth: Truth, rid: str, code: dict[str, Any], onset: dt.date, status: str, **extra: Any
) -> dict[str, Any]:
    """A confirmed problem-list Condition with a clinical status and a day-precision onset."""
    return kit.condition(
        id=f"{truth.patient_id}-{rid}",
        patient=truth.patient_id,
        code=code,
        clinical=status,
        category=kit.condition_category("problem-list-item"),
        onset=onset,
        **extra,
    )


def _history(truth: Truth) -> list[dict[str, Any]]:
    """The cancer (ICD-10-CM, with its stage) and comorbidities, diagnosed before ICB initiation."""
    cancer_name = {code: name for code, name, _ in CANCERS}[truth.cancer_icd10]
    diagnosed = truth.icb_start - dt.timedelta(days=60)
    out = [
        _condition(
            truth,
            "cancer",
            kit.coded(kit.ICD10CM, truth.cancer_icd10, cancer_name, text=cancer_name),
            diagnosed,
            "active",
            stage=[{"summary": {"text": truth.stage}}],
        )
    ]
    names = dict(COMORBIDITIES)
    for i, code in enumerate(truth.comorbidities):
        concept = kit.coded(kit.ICD10CM, code, names[code])
        onset = truth.icb_start - dt.timedelta(days=400 + 30 * i)
        out.append(_condition(truth, f"comorbidity-{i}", concept, onset, "active"))
    return out


def _cirae(truth: Truth, index: int) -> list[dict[str, Any]]:
    """The cutaneous irAE after ICB initiation, and dupilumab when the patient got it."""
    if truth.cirae_onset is None or truth.cirae_status is None:
        return []
    term = CIRAE_TERMS[index % len(CIRAE_TERMS)]
    out = [_condition(truth, "cirae", {"text": term}, truth.cirae_onset, truth.cirae_status)]
    if truth.dupilumab_start is not None:
        out.append(
            _administration(
                truth,
                "dupilumab",
                "dupilumab 300 MG/2ML prefilled syringe",
                truth.dupilumab_start,
                "subcutaneous",
                600,
            )
        )
    return out


def _glucocorticoid(truth: Truth, index: int) -> list[dict[str, Any]]:
    """Oral prednisone: daily administrations for most patients, an order for every third one.

    A course, not a single dose (CLINICAL.md revision 2: a single-day dose is not a course): up to
    5 daily doses, none after the last day of follow-up (the start is before it, so at least 2).
    """
    day = truth.glucocorticoid_start
    if day is None:
        return []
    if index % 3:
        days = [day + dt.timedelta(days=k) for k in range(5)]
        return [
            _administration(truth, f"prednisone-{k}", "prednisone 20 MG oral tablet", d, "oral", 40)
            for k, d in enumerate(days)
            if d <= truth.last_contact
        ]
    return [
        kit.medication_request(
            id=f"{truth.patient_id}-prednisone",
            patient=truth.patient_id,
            status="completed",
            medication=kit.coded(kit.RXNORM, "8640", "prednisone", text="prednisone"),
            authored=day,
            dosageInstruction=[
                {
                    "route": kit.ORAL,
                    "timing": {"repeat": {"boundsPeriod": kit.period(day, _day(day, 13))}},
                }
            ],
        )
    ]


def _last_contact(truth: Truth) -> dict[str, Any]:
    """The last outpatient visit (the censoring day of a survivor; the day of death otherwise)."""
    return kit.encounter(
        id=f"{truth.patient_id}-last-contact",
        patient=truth.patient_id,
        klass={"system": kit.ACT_CODE, "code": "AMB", "display": "ambulatory"},
        start=truth.last_contact,
        end=truth.last_contact,
    )


def patient_resources(truth: Truth, index: int) -> tuple[dict[str, Any], ...]:
    """Every FHIR resource of one drawn patient, Patient first."""
    return (
        _patient(truth),
        *_icb(truth),
        *_history(truth),
        *_cirae(truth, index),
        *_glucocorticoid(truth, index),
        _last_contact(truth),
    )


def _cohort(
    n: int, seed: int, draw: Callable[[random.Random, int], Truth], **hrs: float
) -> SyntheticCohort:
    """`n` patients drawn one after the other from one generator seeded with `seed`."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    truth = tuple(draw(rng, i) for i in range(n))
    per_patient = tuple(patient_resources(t, i) for i, t in enumerate(truth))
    return SyntheticCohort(seed=seed, truth=truth, per_patient=per_patient, **hrs)


def generate(n: int = 600, seed: int = 20250612) -> SyntheticCohort:
    """`n` patients drawn from one seeded generator: the same (n, seed) always gives the same data."""
    return _cohort(n, seed, _draw)


# -- time-varying dupilumab: a planted dupilumab HR, exposure only for patients alive then -------

PLANTED_DUPILUMAB_HR = 0.74
CIRAE_PROBABILITY = 0.5  # a cirAE is planned for half the patients …
DUPILUMAB_PROBABILITY = 0.3  # … and dupilumab for 30 % of those
CIRAE_ONSET_DAYS = (1, 120)
DUPILUMAB_DELAY_DAYS = (0, 60)  # dupilumab this many days after cirAE onset
GC_PLANNED_PROBABILITY = 0.5


def _piecewise_days(rng: random.Random, changes: list[tuple[int, float]]) -> int:
    """Whole days to death when the hazard is multiplied by each factor from its day on.

    Memorylessness: in each stretch between change days draw an exponential time at that
    stretch's rate; a draw past the stretch's end continues at the next rate from there.
    """
    rate, start = BASELINE_HAZARD_PER_DAY, 0.0
    for day, factor in sorted(changes):
        draw = rng.expovariate(rate)
        if start + draw <= day:
            return max(1, math.ceil(start + draw))
        rate, start = rate * factor, float(day)
    return max(1, math.ceil(start + rng.expovariate(rate)))


def _draw_time_varying(rng: random.Random, index: int, dupilumab_hr: float, gc_hr: float) -> Truth:
    """One patient: a planned cirAE and dupilumab that happen only while the patient is alive.

    Hazard λ · gc_hr (after the first glucocorticoid day) · dupilumab_hr (after the first
    dupilumab dose, given only to a patient alive on its planned day). A patient dying before the
    planned cirAE has none (control 2); one dying before the planned dupilumab has a cirAE but
    no dupilumab (control 1). So the groups are defined by later events, as in real data.
    """
    base = _draw_baseline(rng)
    onset_plan = rng.randint(*CIRAE_ONSET_DAYS) if rng.random() < CIRAE_PROBABILITY else None
    dupi_plan = (
        onset_plan + rng.randint(*DUPILUMAB_DELAY_DAYS)
        if onset_plan is not None and rng.random() < DUPILUMAB_PROBABILITY
        else None
    )
    gc_plan = rng.randint(1, GC_LAST_DAY) if rng.random() < GC_PLANNED_PROBABILITY else None
    changes = [(gc_plan, gc_hr)] if gc_plan is not None else []
    if dupi_plan is not None:
        changes.append((dupi_plan, dupilumab_hr))  # applies only if alive then (memoryless)
    death_day = _piecewise_days(rng, changes)
    censor_day = _censoring_days(rng, base.icb_start)
    end_day = min(death_day, censor_day)
    onset_day = onset_plan if onset_plan is not None and onset_plan < end_day else None
    dupi_day = (
        dupi_plan
        if dupi_plan is not None and onset_day is not None and dupi_plan < end_day
        else None
    )
    group = (
        "dupilumab"
        if dupi_day is not None
        else "control_1"
        if onset_day is not None
        else "control_2"
    )
    status = _weighted(rng, RESOLUTION_STATUSES) if onset_day is not None else None
    days = {"onset": onset_day, "dupilumab": dupi_day, "glucocorticoid": gc_plan}
    return _truth(f"syn-tv-{index:04d}", group, base, days, status, death_day, censor_day)


def generate_time_varying(
    n: int = 2000,
    seed: int = 0,
    *,
    dupilumab_hr: float = PLANTED_DUPILUMAB_HR,
    gc_hr: float = GC_HR,
) -> SyntheticCohort:
    """`n` patients with a planted time-varying dupilumab HR and glucocorticoid HR (seeded)."""

    def draw(rng: random.Random, index: int) -> Truth:
        return _draw_time_varying(rng, index, dupilumab_hr, gc_hr)

    return _cohort(n, seed, draw, gc_hr=gc_hr, dupilumab_hr=dupilumab_hr)
