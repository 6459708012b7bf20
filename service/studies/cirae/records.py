"""The analysis record of one cirAE-cohort patient, shared by cohort building, matching and models."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from fhir_mapping.events.model import SourceRef

Group = Literal["dupilumab", "control_1", "control_2"]
IcbType = Literal["PD-1", "PD-L1", "CTLA-4", "combination"]
Resolution = Literal["complete", "partial", "none"]


@dataclass(frozen=True, slots=True)
class CirAESubject:
    """Everything the cirAE analysis needs about one ICB-treated patient (time origin: ICB start)."""

    patient_id: str
    subject_id: str
    group: Group
    icb_start: dt.date
    icb_type: IcbType
    sex: str | None
    race: str | None
    age_years: float | None
    charlson: int
    cancer_type: str
    stage: str
    cirae_onset: dt.date | None
    resolution: Resolution | None
    dupilumab_start: dt.date | None
    glucocorticoid_start: dt.date | None
    death: dt.date | None
    last_seen: dt.date
    evidence: tuple[SourceRef, ...] = ()
    # when the cirAE resolved (complete or partial): the deciding record's abatement/resolution date
    resolution_date: dt.date | None = None
    # why glucocorticoid_start is less sure than a day (a month-precision record placed at its start)
    glucocorticoid_flag: str | None = None

    @property
    def icb_year(self) -> int:
        """Calendar year of ICB initiation (a matching key)."""
        return self.icb_start.year

    @property
    def os_days(self) -> int:
        """Days from ICB initiation to death, or to the last data point when alive."""
        end = self.death if self.death is not None else self.last_seen
        return max((end - self.icb_start).days, 0)

    @property
    def died(self) -> bool:
        """Whether OS is an event (death) rather than censored."""
        return self.death is not None


@dataclass(frozen=True, slots=True)
class MatchedSet:
    """One dupilumab case and the controls matched to it (fewer than the ratio when none were left)."""

    case: str
    controls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MatchResult:
    """Cases matched to one control group: the sets, and the cases that found no control at all."""

    control_group: Group
    ratio: int
    sets: tuple[MatchedSet, ...]
    unmatched_cases: tuple[str, ...]

    @property
    def partially_matched(self) -> tuple[str, ...]:
        """Cases with at least one but fewer than `ratio` controls."""
        return tuple(s.case for s in self.sets if 0 < len(s.controls) < self.ratio)
