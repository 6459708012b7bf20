"""Cohort statistics of the interventional study, aggregated from the per-subject endpoints.

Pure functions: the caller loads each subject's events and Day 1; nothing here reads the store.
Analysis population: dosed subjects (Day 1 known = at least one study-drug administration).
Proportions carry exact (Clopper–Pearson) CIs at the protocol's confidence level; time-to-event
endpoints are Kaplan–Meier estimates from Day 1 (see service.stats.survival). A subject whose time to
event is unknown (death recorded before Day 1, death without a date) stays out of that curve and
is listed, with the reason, under the endpoint's `excluded`. Safety figures count
treatment-emergent AEs (service.studies.interventional.subject_outcomes.treatment_emergent); pre-dose AEs are counted apart.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from fhir_mapping.events.model import EventKind, TrialEvent
from service.stats.figures import SwimmerRow
from service.stats.survival import km_in_months, proportion_ci
from service.studies.interventional.protocol import TrialProtocol
from service.studies.interventional.subject_outcomes import (
    TREATMENT_EMERGENT,
    LastPoint,
    last_data_point,
    subject_outcomes,
)

POPULATION = "dosed subjects (Day 1 known: at least one study-drug administration)"
GRADES = ("1", "2", "3", "4", "5", "unknown")


@dataclass(frozen=True, slots=True)
class CohortInput:
    """One subject as the cohort sees it: identity, ResearchSubject status, Day 1, events."""

    subject_id: str
    status: str
    day1: dt.date | None
    events: Sequence[TrialEvent]


class KmCurve(NamedTuple):
    """One Kaplan–Meier curve's data in days; a tuple, so `plots.km_plot` takes it as is."""

    label: str
    durations: tuple[float, ...]
    events: tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class CohortPlotData:
    """What the figures need: KM curves keyed "efs"/"os", swimmer rows, and the CI level."""

    km: Mapping[str, KmCurve]
    swimmer: tuple[SwimmerRow, ...]
    level: float = 0.95


@dataclass(frozen=True, slots=True)
class _Evaluated:
    """A subject with its per-subject endpoints."""

    subject: CohortInput
    out: dict[str, Any]
    last: LastPoint = None  # the last data point from Day 1 (endpoints and swimmer row share it)

    @property
    def dosed(self) -> bool:
        """In the analysis population (Day 1 known)."""
        return self.subject.day1 is not None


def _evaluate(protocol: TrialProtocol, subjects: Sequence[CohortInput]) -> list[_Evaluated]:
    """Per-subject endpoints once, in subject_id order (deterministic output)."""
    seen = Counter(s.subject_id for s in subjects)  # one pass: `list.count` per id was O(n²)
    dupes = sorted(i for i, n in seen.items() if n > 1)
    if dupes:
        raise ValueError(f"duplicate subject_id(s): {dupes}")
    out = []
    for s in sorted(subjects, key=lambda s: s.subject_id):
        last = last_data_point(s.events, s.day1) if s.day1 is not None else None
        out.append(_Evaluated(s, subject_outcomes(protocol, s.events, s.day1, last=last), last))
    return out


def _level(protocol: TrialProtocol) -> float:
    """The protocol's confidence level as the float scipy and lifelines take."""
    return float(protocol.outcomes.confidence_level)


def _response(dosed: list[_Evaluated], key: str, level: float) -> dict[str, Any]:
    """A response rate over dosed subjects, and over evaluable ones (not_evaluable excluded)."""
    counts = Counter(e.out[key]["result"] for e in dosed)
    met, not_met = counts["met"], counts["not_met"]
    return {
        "met": met,
        "not_met": not_met,
        "not_evaluable": counts["not_evaluable"],
        "denominator": POPULATION + "; not-evaluable subjects stay in the denominator",
        "rate": proportion_ci(met, len(dosed), level),
        "evaluable_denominator": "dosed subjects with an evaluable result (met or not met)",
        "evaluable_rate": proportion_ci(met, met + not_met, level),
    }


def _time_to_surgery(dosed: list[_Evaluated]) -> dict[str, Any]:
    """Median and range of days from Day 1 to surgery, over operated dosed subjects."""
    days = sorted(e.out["time_to_surgery_days"] for e in dosed if e.out["surgery"])
    return {
        "n": len(days),
        "median_days": float(statistics.median(days)) if days else None,
        "min_days": days[0] if days else None,
        "max_days": days[-1] if days else None,
    }


def _grade_of(item: Mapping[str, Any]) -> int | None:
    """The CTCAE grade of one listed AE; anything but an int (e.g. missing) is ungraded."""
    grade = item.get("grade")
    return grade if isinstance(grade, int) and not isinstance(grade, bool) else None


def _worst(items: Sequence[Mapping[str, Any]]) -> str | None:
    """A subject's worst CTCAE grade; "unknown" when every AE is ungraded; None without AEs."""
    if not items:
        return None
    grades = [g for i in items if (g := _grade_of(i)) is not None]
    return str(max(grades)) if grades else "unknown"


def _grade_key(item: Mapping[str, Any]) -> str:
    """The AE table row an event falls in."""
    grade = _grade_of(item)
    return str(grade) if grade is not None else "unknown"


def _emergent(e: _Evaluated) -> list[Mapping[str, Any]]:
    """A dosed subject's treatment-emergent AEs (the ones the safety figures count)."""
    return [i for i in e.out["safety"]["adverse_events"] if i["treatment_emergent"]]


def _pre_dose(e: _Evaluated) -> int:
    """How many of a dosed subject's AEs started before Day 1."""
    return int(e.out["safety"]["pre_dose"])


def _safety(protocol: TrialProtocol, dosed: list[_Evaluated], level: float) -> dict[str, Any]:
    """Treatment-emergent AE table by CTCAE grade, the grade ≥ N rate, pre-dose AEs apart."""
    per_subject = [_emergent(e) for e in dosed]
    worst = Counter(w for items in per_subject if (w := _worst(items)) is not None)
    events = Counter(_grade_key(i) for items in per_subject for i in items)
    in_window = Counter(_grade_key(i) for items in per_subject for i in items if i["within_window"])
    threshold = protocol.outcomes.high_grade_ae_min
    high = sum(1 for items in per_subject if any((_grade_of(i) or 0) >= threshold for i in items))
    return {
        "population": POPULATION,
        "treatment_emergent_definition": TREATMENT_EMERGENT,
        "note": "treatment-emergent AEs only; worst grade per subject; a subject with graded and "
        "ungraded AEs counts by the worst known grade",
        "by_grade": [
            {
                "grade": g,
                "subjects_worst_grade": worst[g],
                "events": events[g],
                "events_within_window": in_window[g],
            }
            for g in GRADES
        ],
        "subjects_with_any_ae": proportion_ci(sum(1 for i in per_subject if i), len(dosed), level),
        "events": sum(events.values()),
        "events_within_window": sum(in_window.values()),
        "window_days_after_last_dose": protocol.schedule.ae_window_days,
        "high_grade_min": threshold,
        "subjects_high_grade": proportion_ci(high, len(dosed), level),
        "pre_dose_events": sum(_pre_dose(e) for e in dosed),
        "subjects_with_pre_dose_ae": sum(1 for e in dosed if _pre_dose(e)),
    }


def _timed(tte: Mapping[str, Any]) -> bool:
    """A time to event a KM curve can take: the days are known (a death's may not be)."""
    return tte["days"] is not None


def _curve(dosed: list[_Evaluated], key: str, label: str) -> KmCurve:
    """Durations and event flags of one endpoint, in subject order, timed subjects only."""
    timed = [e.out[key] for e in dosed if _timed(e.out[key])]
    durations = tuple(float(t["days"]) for t in timed)
    return KmCurve(label, durations, tuple(bool(t["event"]) for t in timed))


def _curves(dosed: list[_Evaluated]) -> dict[str, KmCurve]:
    """Both time-to-event endpoints, so the summary and the figure use the same data."""
    return {
        "efs": _curve(dosed, "efs", "Event-free survival"),
        "os": _curve(dosed, "os", "Overall survival"),
    }


def _excluded(dosed: list[_Evaluated], key: str) -> list[dict[str, Any]]:
    """Dosed subjects left out of one KM curve, each with the reason."""
    return [
        {"subject_id": e.subject.subject_id, "reason": e.out[key]["reason"]}
        for e in dosed
        if not _timed(e.out[key])
    ]


def _km_section(
    dosed: list[_Evaluated], key: str, curve: KmCurve, months: Sequence[int], level: float
) -> dict[str, Any]:
    """One endpoint's KM summary, with the subjects it could not include."""
    return {
        **km_in_months(*curve, months=months, level=level),
        "excluded": _excluded(dosed, key),
    }


def _dose_days(protocol: TrialProtocol, events: Sequence[TrialEvent], day1: dt.date) -> list[int]:
    """Distinct days (since Day 1) with a study-drug administration."""
    drugs = {d.valueset for d in protocol.schedule.study_drugs}
    return sorted(
        {
            (day - day1).days
            for e in events
            if e.kind is EventKind.DRUG_ADMINISTRATION
            and e.concept_ids & drugs
            and e.date
            and (day := e.date.day) is not None
            and day >= day1
        }
    )


def _problem(efs: Mapping[str, Any], os_: Mapping[str, Any]) -> str | None:
    """Why a subject's timeline lacks an EFS or OS time (the two reasons, once if the same)."""
    reasons = dict.fromkeys(r for t in (efs, os_) if not _timed(t) and (r := t["reason"]))
    return "; ".join(reasons) or None


def _swimmer_row(protocol: TrialProtocol, e: _Evaluated, day1: dt.date) -> SwimmerRow:
    """One dosed subject's timeline, from the endpoints already computed."""
    efs, os_ = e.out["efs"], e.out["os"]
    last = e.last
    return SwimmerRow(
        subject_id=e.subject.subject_id,
        dose_days=tuple(_dose_days(protocol, e.subject.events, day1)),
        surgery_day=e.out["time_to_surgery_days"],
        last_followup_day=(last[0] - day1).days if last else 0,
        efs_event_day=efs["days"] if efs["event"] else None,
        efs_event_type=efs["event_type"],
        efs_censored=efs["censored"] is True,
        death_day=os_["days"] if os_["event"] else None,
        os_censored=os_["censored"] is True,
        mpr=e.out["mpr"]["result"],
        problem=_problem(efs, os_),
    )


def _swimmer(protocol: TrialProtocol, dosed: list[_Evaluated]) -> tuple[SwimmerRow, ...]:
    """One timeline per dosed subject (Day 1 known, so the row has an origin)."""
    return tuple(
        _swimmer_row(protocol, e, day1) for e in dosed if (day1 := e.subject.day1) is not None
    )


def _subject_row(e: _Evaluated) -> dict[str, Any]:
    """A listing row: the endpoints a reviewer checks the cohort figures against."""
    out = e.out
    safety = out["safety"]
    return {
        "subject_id": e.subject.subject_id,
        "status": e.subject.status,
        "day1": out["day1"],
        "dosed": e.dosed,
        "time_to_surgery_days": out["time_to_surgery_days"],
        "surgery_study_day": out["surgery"]["study_day"] if out["surgery"] else None,
        "on_time_surgery": out["on_time_surgery"],
        "mpr": out["mpr"]["result"],
        "pcr": out["pcr"]["result"],
        "viable_pct": out["mpr"]["viable_pct"],
        "efs": _tte(out["efs"]),
        "os": _tte(out["os"]),
        "adverse_events": safety["treatment_emergent"] if safety else None,
        "pre_dose_adverse_events": safety["pre_dose"] if safety else None,
        "worst_ae_grade": _worst(_emergent(e)) if safety else None,
    }


def _tte(tte: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A time-to-event result without its evidence (the subject endpoint has that)."""
    if tte is None:
        return None
    return {k: tte[k] for k in ("days", "event", "event_type", "date", "reason", "imputed_from")}


def cohort_outcomes(protocol: TrialProtocol, subjects: Sequence[CohortInput]) -> dict[str, Any]:
    """Every cohort figure of the trial (counts, rates with CIs, AE table, KM) plus listings."""
    return cohort_report(protocol, subjects)[0]


def cohort_report(
    protocol: TrialProtocol, subjects: Sequence[CohortInput]
) -> tuple[dict[str, Any], CohortPlotData]:
    """The figures and the plot inputs from one pass over the per-subject endpoints."""
    evaluated = _evaluate(protocol, subjects)
    dosed = [e for e in evaluated if e.dosed]
    swimmer = _swimmer(protocol, dosed)
    level = _level(protocol)
    window = protocol.schedule.surgery_window
    on_time = sum(1 for e in dosed if e.out["on_time_surgery"] is True)
    months = protocol.outcomes.survival_timepoints_months
    curves = _curves(dosed)
    figures = {
        "study": protocol.id,
        "protocol_version": protocol.version,
        "level": level,
        "population": POPULATION,
        "counts": {
            "subjects": len(evaluated),
            "by_status": dict(sorted(Counter(e.subject.status for e in evaluated).items())),
            "dosed": len(dosed),
            "operated": sum(1 for e in dosed if e.out["surgery"]),
            "with_response_assessment": sum(
                1 for e in dosed if e.out["mpr"]["result"] != "not_evaluable"
            ),
            "definitions": {
                "dosed": "Day 1 known (at least one study-drug administration)",
                "operated": "dosed, with a performed lung resection on or after Day 1",
                "with_response_assessment": "dosed, with MPR evaluable (percent viable tumour "
                "of the resected primary recorded)",
            },
        },
        "mpr": {
            "definition": f"≤ {protocol.outcomes.mpr_max_viable_pct} % viable tumour in the "
            "resected primary",
            **_response(dosed, "mpr", level),
        },
        "pcr": {
            "definition": f"{protocol.outcomes.pcr_viable_pct} % viable tumour in primary and "
            "lymph nodes",
            **_response(dosed, "pcr", level),
        },
        "time_to_surgery": _time_to_surgery(dosed),
        "feasibility": {
            "definition": f"operated on study Day {window.start}–{window.end}",
            "denominator": POPULATION,
            **proportion_ci(on_time, len(dosed), level),
        },
        "safety": _safety(protocol, dosed, level),
        "efs": _km_section(dosed, "efs", curves["efs"], months, level),
        "os": _km_section(dosed, "os", curves["os"], months, level),
        "subjects": [_subject_row(e) for e in evaluated],
        "swimmer": [row.to_json() for row in swimmer],
    }
    return figures, CohortPlotData(km=curves, swimmer=swimmer, level=level)


def cohort_plot_data(protocol: TrialProtocol, subjects: Sequence[CohortInput]) -> CohortPlotData:
    """The inputs of the KM and swimmer figures, from the same per-subject endpoints."""
    return cohort_report(protocol, subjects)[1]
