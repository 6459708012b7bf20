"""The retrospective cirAE cohort's protocol: groups, matching, covariates, analysis choices."""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from service.protocol.schema import Strict, StudyProtocol


class Calipers(Strict):
    """Matching calipers (**choice**)."""

    age_years: Decimal = Field(ge=0)
    charlson: int = Field(ge=0)
    icb_year: int = Field(ge=0)


class Matching(Strict):
    """1:k matching of cases to controls (**choice**: exact keys, calipers, greedy, no replacement)."""

    ratio: int = Field(ge=1)
    exact: tuple[Literal["sex", "race", "icb_type"], ...]
    calipers: Calipers
    method: Literal["greedy_nearest_neighbour_without_replacement"]


class IcbClasses(Strict):
    """Which value set defines each checkpoint-inhibitor class."""

    pd1: str
    pdl1: str
    ctla4: str


class Glucocorticoid(Strict):
    """Systemic glucocorticoid exposure, a time-varying covariate starting at the first course."""

    valueset: str
    systemic_only: bool
    window_years: int = Field(ge=1)
    # **choice**: a course covers at least this many days (2: a single-day dose, antiemetic or
    # premedication dexamethasone, is not a course).
    min_course_days: int = Field(ge=1)
    # records of days at most this far apart are one course (1: consecutive days).
    course_gap_days: int = Field(ge=1)
    # **choice**: a month- or year-precision record is placed at the start of its period (and
    # flagged), or ignored.
    coarse_dates: Literal["period_start", "ignore"]


ResolutionCategory = Literal["complete", "partial", "none"]


class ResolutionTables(Strict):
    """The latest status of a cirAE episode → its resolution (CLINICAL.md; a status not listed: none)."""

    clinical_status: dict[str, ResolutionCategory]  # Condition.clinicalStatus codes
    adverse_event_outcome: dict[str, ResolutionCategory]  # AdverseEvent.outcome codes


class CohortStudy(Strict):
    """The retrospective cohort: who is in it and how it is analysed."""

    icb_classes: IcbClasses
    cirae_valueset: str
    # skin terms that are never a cirAE (radiation dermatitis, burns, skin infections)
    cirae_exclusion_valueset: str
    cirae_onset_after_icb: bool
    treatment_valueset: str
    groups: tuple[Literal["dupilumab", "control_1", "control_2"], ...]
    matching: Matching
    charlson: Literal["quan_icd10"]
    # **choice**: "charlson" = original Charlson 1987 weights on the Quan 2005 ICD-10 coding.
    charlson_weighting: Literal["charlson", "quan"]
    # **choice**: ICB classes first given within this many days of initiation make it a combination.
    icb_combination_window_days: int = Field(ge=0)
    resolution: ResolutionTables
    glucocorticoid: Glucocorticoid
    adjustment: tuple[
        Literal["sex", "race", "age", "icb_type", "charlson", "cancer_type", "stage"], ...
    ]
    confidence_level: Decimal = Field(gt=0, lt=1)
    # **choice**: fewer deaths than this per estimated Cox parameter → "not estimable".
    min_events_per_parameter: int = Field(ge=1)
    survival_timepoints_months: tuple[int, ...] = Field(min_length=1)


class CohortMembership(Strict):
    """A patient is in the cohort when given or ordered a drug of these value sets."""

    kind: Literal["cohort"]
    cohort_valuesets: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _complete(self) -> CohortMembership:
        if not self.cohort_valuesets:
            raise ValueError("cohort membership needs cohort_valuesets")
        return self


class CohortProtocol(StudyProtocol):
    """A retrospective cohort study built from whatever FHIR data the service holds."""

    # the ICB class fields name value sets without saying "valueset"
    VALUESET_PREFIXES: ClassVar[tuple[str, ...]] = ("cohort.icb_classes.",)

    kind: Literal["cohort"]
    membership: CohortMembership
    cohort: CohortStudy
