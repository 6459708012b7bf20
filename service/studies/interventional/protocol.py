"""An interventional study's protocol: schedule, eligibility rule kinds, deviation rules, outcomes."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field, model_validator

from service.protocol.schema import CountRange, DayWindow, Strict, StudyProtocol


class StudyDrug(Strict):
    """A drug the protocol gives, how much, how and when."""

    id: str = Field(min_length=1)
    valueset: str
    dose_mg: Decimal = Field(gt=0)
    route: Literal["IV", "SC", "oral"]
    day: int = 1
    note: str | None = None


class Screening(Strict):
    """Screening procedures before Day 1 (the window is a **choice**)."""

    window_days_before_day1: int = Field(ge=1)
    core_biopsies: CountRange
    stool_sample_required: bool


class FollowUp(Strict):
    """The post-operative visit (**choice**: days after surgery ± tolerance)."""

    days_after_surgery: int = Field(ge=1)
    tolerance_days: int = Field(ge=0)


class Schedule(Strict):
    """When things happen, relative to Day 1 = the first study-drug dose on or after enrollment."""

    day1: Literal["first_study_drug_on_or_after_enrollment"]
    # Without an enrollment date: the first day one of these study drugs (ids) is given.
    day1_without_enrollment: tuple[str, ...] = Field(min_length=1)
    study_drugs: tuple[StudyDrug, ...] = Field(min_length=1)
    dose_tolerance_pct: Decimal = Field(ge=0, le=100)
    screening: Screening
    surgery_window: DayWindow
    followup: FollowUp
    ae_window_days: int = Field(ge=1)
    long_term_followup_years: int = Field(ge=1)


Fallback = Literal["unknown", "not_met"]


class _Criterion(Strict):
    id: str = Field(min_length=1)
    number: int = Field(ge=1)
    type: Literal["inclusion", "exclusion"]
    title: str = Field(min_length=1)


class NsclcDiagnosis(_Criterion):
    """Inclusion 1: NSCLC by code or histology (small cell: not met); C34 alone is a **choice**."""

    rule: Literal["nsclc_diagnosis"]
    nsclc_valueset: str
    # small-cell histology with no NSCLC record: not met
    small_cell_valueset: str
    lung_cancer_valueset: str
    lung_cancer_without_histology: Fallback


T_ORDER = ("Tis", "T1mi", "T1a", "T1b", "T1c", "T2a", "T2b", "T3", "T4")


class TCategoryAtLeast(_Criterion):
    """Inclusion 2: primary tumour at least this T category."""

    rule: Literal["t_category_at_least"]
    minimum: Literal["Tis", "T1mi", "T1a", "T1b", "T1c", "T2a", "T2b", "T3", "T4"]
    order: tuple[str, ...] = T_ORDER
    tx: Fallback
    t0: Fallback


class ResectionPlanned(_Criterion):
    """Inclusion 3: a planned or performed lung resection."""

    rule: Literal["resection_planned"]
    procedure_statuses: tuple[str, ...] = Field(min_length=1)
    accept_service_request: bool


class BiopsyPlanned(_Criterion):
    """Inclusion 4: a screening biopsy planned or done."""

    rule: Literal["biopsy_planned"]


class ConditionHistory(_Criterion):
    """Exclusion 5: any condition (active or history) in a value set."""

    rule: Literal["condition_history"]
    valueset: str


class MetastaticDisease(_Criterion):
    """Exclusion 6: M1 category, a distant secondary malignancy, or stage IV of the cancer."""

    rule: Literal["metastatic_disease"]
    m_categories: tuple[str, ...] = Field(min_length=1)
    stage_groups: tuple[str, ...] = Field(min_length=1)
    condition_valueset: str
    # regional lymph nodes (C77): never metastatic, even when named like a secondary malignancy
    nodal_valueset: str
    # the conditions whose Condition.stage is the cancer's stage (a pressure ulcer's is not)
    cancer_valuesets: tuple[str, ...] = Field(min_length=1)


class DriverAlteration(_Criterion):
    """Exclusion 7: a positive result for any listed gene, in tissue or ctDNA."""

    rule: Literal["driver_alteration"]
    genes: tuple[Literal["EGFR", "ALK", "ROS1"], ...] = Field(min_length=1)


class RecentMedication(_Criterion):
    """Exclusion 8: a listed drug within N days before enrollment (Day 1 when not enrolled)."""

    rule: Literal["recent_medication"]
    days_before_enrollment: int = Field(ge=1)
    valuesets: tuple[str, ...] = Field(min_length=1)
    systemic_only: bool


class NeverSmoker(_Criterion):
    """Exclusion 9: no smoking history; an unknown status is unknown."""

    rule: Literal["never_smoker"]


Criterion = Annotated[
    NsclcDiagnosis
    | TCategoryAtLeast
    | ResectionPlanned
    | BiopsyPlanned
    | ConditionHistory
    | MetastaticDisease
    | DriverAlteration
    | RecentMedication
    | NeverSmoker,
    Field(discriminator="rule"),
]


DeviationCode = Literal[
    "ineligible_enrolled",
    "dose_mismatch",
    "dose_missing",
    "dose_extra",
    "surgery_window",
    "screening_biopsy_count",
    "screening_stool_missing",
    "followup_visit",
    "prohibited_medication",
]


class PerioperativeDose(Strict):
    """**Choice**: a single-day dose of this drug on the surgery day (by this route, when given)
    is peri-operative (anaesthesia premedication, PONV prophylaxis), not prohibited medication."""

    valueset: str
    route_valueset: str | None = None


class DeviationRule(Strict):
    """One deviation rule the protocol uses, with its severity (a **choice**).

    `prohibited_medication` also names the irAE value set (`irae_valueset`) and the doses that
    are peri-operative (`perioperative`); no other rule takes them. An AdverseEvent or Condition is
    immune-related when its term or category is in `irae_valueset`, or (an AdverseEvent) when a
    suspect in a study drug's value set is assessed as related (the `causality_related` value
    set). A drug treats it when it names it in `reasonReference`, or starts on or after its onset
    (itself on or after Day 1).
    """

    code: DeviationCode
    severity: Literal["major", "minor"]
    description: str = Field(min_length=1)
    irae_valueset: str | None = None
    perioperative: tuple[PerioperativeDose, ...] = ()

    @model_validator(mode="after")
    def _own_settings(self) -> DeviationRule:
        prohibited = self.code == "prohibited_medication"
        if prohibited and self.irae_valueset is None:
            raise ValueError("prohibited_medication needs `irae_valueset` (what an irAE is)")
        if not prohibited and (self.irae_valueset is not None or self.perioperative):
            raise ValueError(f"{self.code} takes no `irae_valueset` or `perioperative` settings")
        return self


class TrialOutcomes(Strict):
    """Endpoint definitions for the interventional study."""

    time_origin: Literal["day1"]
    mpr_max_viable_pct: Decimal = Field(ge=0, le=100)
    pcr_viable_pct: Decimal = Field(ge=0, le=100)
    pcr_without_nodal_information: Literal["not_evaluable"]
    viable_tumour_valueset: str
    efs_events: tuple[Literal["progression_precluding_surgery", "recurrence", "death"], ...]
    # A Condition in this value set (distant secondary malignancy, C78–C79) with onset after surgery
    # is a recurrence.
    recurrence_condition_valueset: str
    censoring: Literal["last_data_point"]
    high_grade_ae_min: int = Field(ge=1, le=5)
    survival_timepoints_months: tuple[int, ...]
    confidence_level: Decimal = Field(gt=0, lt=1)


class ResearchSubjectMembership(Strict):
    """A patient becomes a subject through a ResearchSubject for the study."""

    kind: Literal["research_subject"]
    research_study_identifiers: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _complete(self) -> ResearchSubjectMembership:
        if not self.research_study_identifiers:
            raise ValueError("research_subject membership needs research_study_identifiers")
        return self


class TrialProtocol(StudyProtocol):
    """An interventional study: schedule, eligibility, deviations, outcomes."""

    kind: Literal["interventional"]
    membership: ResearchSubjectMembership
    schedule: Schedule
    eligibility: tuple[Criterion, ...] = Field(min_length=1)
    deviations: tuple[DeviationRule, ...]
    outcomes: TrialOutcomes

    @model_validator(mode="after")
    def _unique(self) -> TrialProtocol:
        checks: tuple[tuple[str, list[str]], ...] = (
            ("eligibility", [c.id for c in self.eligibility]),
            ("deviations", [str(d.code) for d in self.deviations]),
            ("schedule.study_drugs", [d.id for d in self.schedule.study_drugs]),
        )
        for what, ids in checks:
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"{what}: duplicate id(s) {dupes}")
        drugs = {d.id for d in self.schedule.study_drugs}
        unknown = sorted(set(self.schedule.day1_without_enrollment) - drugs)
        if unknown:
            raise ValueError(f"schedule.day1_without_enrollment: not a study drug id {unknown}")
        return self
