"""Protocol files: each study's schedule, criteria, deviation rules, outcomes and choices as data."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fhir_mapping.terminology import Terminology


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DayWindow(_Strict):
    """An inclusive range of study days."""

    start: int
    end: int

    @model_validator(mode="after")
    def _ordered(self) -> DayWindow:
        if self.start > self.end:
            raise ValueError(f"start ({self.start}) must not be after end ({self.end})")
        return self


class CountRange(_Strict):
    """An inclusive range of counts."""

    min: int = Field(ge=0)
    max: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> CountRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class StudyDrug(_Strict):
    """A drug the protocol gives, how much, how and when."""

    id: str = Field(min_length=1)
    valueset: str
    dose_mg: Decimal = Field(gt=0)
    route: Literal["IV", "SC", "oral"]
    day: int = 1
    note: str | None = None


class Screening(_Strict):
    """Screening procedures before Day 1 (the window is a **choice**)."""

    window_days_before_day1: int = Field(ge=1)
    core_biopsies: CountRange
    stool_sample_required: bool


class FollowUp(_Strict):
    """The post-operative visit (**choice**: days after surgery ± tolerance)."""

    days_after_surgery: int = Field(ge=1)
    tolerance_days: int = Field(ge=0)


class Schedule(_Strict):
    """When things happen, relative to Day 1 = the first study-drug administration."""

    day1: Literal["first_study_drug_administration"]
    study_drugs: tuple[StudyDrug, ...] = Field(min_length=1)
    dose_tolerance_pct: Decimal = Field(ge=0, le=100)
    screening: Screening
    surgery_window: DayWindow
    followup: FollowUp
    ae_window_days: int = Field(ge=1)
    long_term_followup_years: int = Field(ge=1)


class Membership(_Strict):
    """How a patient becomes a subject: a ResearchSubject for the study, or the cohort rule."""

    kind: Literal["research_subject", "cohort"]
    research_study_identifiers: tuple[str, ...] = ()
    cohort_valuesets: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _complete(self) -> Membership:
        if self.kind == "research_subject" and not self.research_study_identifiers:
            raise ValueError("research_subject membership needs research_study_identifiers")
        if self.kind == "cohort" and not self.cohort_valuesets:
            raise ValueError("cohort membership needs cohort_valuesets")
        return self


# -- eligibility: a closed set of rule kinds, each with its own parameters ------------------------

Fallback = Literal["unknown", "not_met"]


class _Criterion(_Strict):
    id: str = Field(min_length=1)
    number: int = Field(ge=1)
    type: Literal["inclusion", "exclusion"]
    title: str = Field(min_length=1)


class NsclcDiagnosis(_Criterion):
    """Inclusion 1: NSCLC by code or histology; ICD-10 C34 alone is a **choice**."""

    rule: Literal["nsclc_diagnosis"]
    nsclc_valueset: str
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
    """Exclusion 6: M1 category, a secondary malignancy, or a stage IV group."""

    rule: Literal["metastatic_disease"]
    m_categories: tuple[str, ...] = Field(min_length=1)
    stage_groups: tuple[str, ...] = Field(min_length=1)
    condition_valueset: str


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


class DeviationRule(_Strict):
    """One deviation rule the protocol uses, with its severity (a **choice**)."""

    code: DeviationCode
    severity: Literal["major", "minor"]
    description: str = Field(min_length=1)


class TrialOutcomes(_Strict):
    """Endpoint definitions for the interventional study."""

    time_origin: Literal["day1"]
    mpr_max_viable_pct: Decimal = Field(ge=0, le=100)
    pcr_viable_pct: Decimal = Field(ge=0, le=100)
    pcr_without_nodal_information: Literal["not_evaluable"]
    viable_tumour_valueset: str
    efs_events: tuple[Literal["progression_precluding_surgery", "recurrence", "death"], ...]
    censoring: Literal["last_data_point"]
    high_grade_ae_min: int = Field(ge=1, le=5)
    survival_timepoints_months: tuple[int, ...]
    confidence_level: Decimal = Field(gt=0, lt=1)


class TrialProtocol(_Strict):
    """An interventional study: schedule, eligibility, deviations, outcomes."""

    kind: Literal["interventional"]
    id: str = Field(min_length=1)
    version: str = Field(min_length=1)
    title: str = Field(min_length=1)
    sources: tuple[str, ...] = ()
    membership: Membership
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
        return self


class Calipers(_Strict):
    """Matching calipers (**choice**)."""

    age_years: Decimal = Field(ge=0)
    charlson: int = Field(ge=0)
    icb_year: int = Field(ge=0)


class Matching(_Strict):
    """1:k matching of cases to controls (**choice**: exact keys, calipers, greedy, no replacement)."""

    ratio: int = Field(ge=1)
    exact: tuple[Literal["sex", "race", "icb_type"], ...]
    calipers: Calipers
    method: Literal["greedy_nearest_neighbour_without_replacement"]


class IcbClasses(_Strict):
    """Which value set defines each checkpoint-inhibitor class."""

    pd1: str
    pdl1: str
    ctla4: str


class Glucocorticoid(_Strict):
    """Systemic glucocorticoid exposure, a time-varying covariate."""

    valueset: str
    systemic_only: bool
    window_years: int = Field(ge=1)


class CohortStudy(_Strict):
    """The retrospective cohort: who is in it and how it is analysed."""

    icb_classes: IcbClasses
    cirae_valueset: str
    cirae_onset_after_icb: bool
    treatment_valueset: str
    groups: tuple[Literal["dupilumab", "control_1", "control_2"], ...]
    matching: Matching
    charlson: Literal["quan_icd10"]
    # **choice**: "charlson" = original Charlson 1987 weights on the Quan 2005 ICD-10 coding.
    charlson_weighting: Literal["charlson", "quan"]
    # **choice**: ICB classes first given within this many days of initiation make it a combination.
    icb_combination_window_days: int = Field(ge=0)
    resolution: dict[str, Literal["complete", "partial", "none"]]
    glucocorticoid: Glucocorticoid
    adjustment: tuple[
        Literal["sex", "race", "age", "icb_type", "charlson", "cancer_type", "stage"], ...
    ]
    confidence_level: Decimal = Field(gt=0, lt=1)
    # **choice**: fewer deaths than this per estimated Cox parameter → "not estimable".
    min_events_per_parameter: int = Field(ge=1)
    survival_timepoints_months: tuple[int, ...] = Field(min_length=1)


class CohortProtocol(_Strict):
    """A retrospective cohort study built from whatever FHIR data the service holds."""

    kind: Literal["cohort"]
    id: str = Field(min_length=1)
    version: str = Field(min_length=1)
    title: str = Field(min_length=1)
    sources: tuple[str, ...] = ()
    membership: Membership
    cohort: CohortStudy


Protocol = Annotated[TrialProtocol | CohortProtocol, Field(discriminator="kind")]


class _ProtocolFile(_Strict):
    protocol: Protocol


class ProtocolError(ValueError):
    """A protocol file that cannot be used; the message names the file and the key."""


def _valuesets_named(value: Any, key: str = "") -> Iterable[tuple[str, str]]:
    """(dotted key, value-set id) for every field naming a value set."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _valuesets_named(getattr(value, name), f"{key}.{name}" if key else name)
    elif isinstance(value, tuple):
        for i, item in enumerate(value):
            yield from _valuesets_named(item, f"{key}.{i}")
    elif isinstance(value, str) and (
        key.endswith("valueset")
        or key.rpartition(".")[0].endswith("valuesets")
        or key.startswith("cohort.icb_classes.")
    ):
        yield key, value


def parse_protocol(
    text: str, where: str, terminology: Terminology
) -> TrialProtocol | CohortProtocol:
    """Validate one protocol file; every error names the file and the offending key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"{where}: not valid TOML: {exc}") from exc
    try:
        protocol = _ProtocolFile.model_validate({"protocol": raw}).protocol
    except ValidationError as exc:
        lines = []
        for err in exc.errors()[:5]:
            loc = [str(p) for p in err["loc"][2:]]  # past ("protocol", <kind tag>)
            lines.append(f"{'.'.join(loc) or '(top level)'}: {err['msg']}")
        raise ProtocolError(f"{where}: " + "; ".join(lines)) from exc
    for key, valueset in _valuesets_named(protocol):
        if valueset not in terminology:
            raise ProtocolError(f"{where}: {key}: unknown value set {valueset!r}")
    return protocol


def load_protocols(
    terminology: Terminology, directory: Path | None = None
) -> dict[str, TrialProtocol | CohortProtocol]:
    """The packaged protocols, then a site's files (same id replaces, new id adds)."""
    found: dict[str, TrialProtocol | CohortProtocol] = {}
    package = resources.files("service.protocols")
    for item in sorted(package.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".toml"):
            p = parse_protocol(
                item.read_text("utf-8"), f"service/protocols/{item.name}", terminology
            )
            found[p.id] = p
    if directory is not None:
        if not directory.is_dir():
            raise ProtocolError(f"{directory}: protocol directory does not exist")
        for path in sorted(directory.glob("*.toml")):
            p = parse_protocol(path.read_text("utf-8"), str(path), terminology)
            found[p.id] = p
    return found
