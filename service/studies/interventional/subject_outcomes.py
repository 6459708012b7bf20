"""Per-subject endpoints of the interventional study (pure functions over trial events).

Time origin is Day 1. Definitions: CLINICAL.md (Outcomes) and the protocol's `outcomes` settings.

Death dates (OS and EFS):
- a death dated before Day 1 gives no time to event (days None; the death is still an event)
  and says so in `reason` ("death recorded before Day 1 (…)"): the date contradicts the dosing,
  and a negative time cannot enter a Kaplan–Meier curve;
- a partial death date ("2025", "2025-09") is imputed as the first day of its interval that is not
  before the subject's last dated fact (Day 1 at the earliest), clamped to the interval:
  max(first, min(last data point, last)); `imputed_from` keeps the recorded text;
- a death without a date (deceasedBoolean) is an OS event on an unknown day: days None, event
  True, reason "death date unknown". For EFS a dated progression or recurrence still counts (the
  subject was alive when it was observed, so the death came later); without one, EFS is the
  same unknown-day event.

Safety: an AE is treatment-emergent when it starts on or after Day 1. An AE without a date, or
with a partial date whose interval reaches Day 1, counts as treatment-emergent (the usual
conservative convention: an AE is not dropped from the safety figures for lack of a date); only
an AE known to start before Day 1 is pre-dose. Every AE stays listed, flagged.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from fhir_mapping.events.model import EventKind, TrialEvent
from fhir_mapping.partial_dates import study_day
from service.infra.clock import shift_day
from service.studies.interventional.deviation_rules import surgery
from service.studies.interventional.protocol import TrialProtocol

Response = Literal["met", "not_met", "not_evaluable"]


def _day(event: TrialEvent) -> dt.date | None:
    """The event's calendar day; None without a date or at year/month precision."""
    return event.date.day if event.date else None


def _pct(event: TrialEvent) -> Decimal | None:
    """The percent viable tumour; unreadable or non-finite text is no value (NaN cannot compare)."""
    try:
        pct = Decimal(str(event.values.get("percent")))
    except (InvalidOperation, ValueError):
        return None
    return pct if pct.is_finite() else None


def _ref(event: TrialEvent | None) -> dict[str, Any] | None:
    """The evidence reference of a source resource, as the API shows it."""
    return event.source.to_json() if event else None


@dataclass(frozen=True, slots=True)
class TimeToEvent:
    """Days from Day 1 to the event, or to censoring at the last data point; or why neither.

    `days` is None when the subject cannot enter a Kaplan–Meier curve (`reason` says why: a death
    dated before Day 1, or without a date); `event` is then still True, as the death is recorded.
    """

    days: int | None
    event: bool
    event_type: str | None
    date: dt.date | None
    source: TrialEvent | None
    reason: str | None = None
    imputed_from: str | None = None

    @property
    def censored(self) -> bool | None:
        """Censored only when the time is known and no event happened."""
        return None if self.days is None else not self.event

    def to_json(self) -> dict[str, Any]:
        """The wire shape."""
        return {
            "days": self.days,
            "event": self.event,
            "censored": self.censored,
            "event_type": self.event_type,
            "date": self.date.isoformat() if self.date else None,
            "reason": self.reason,
            "imputed_from": self.imputed_from,
            "evidence": _ref(self.source),
        }


@dataclass(frozen=True, slots=True)
class Death:
    """A recorded death: its day (exact or imputed; None without a date) and its source."""

    day: dt.date | None
    imputed_from: str | None
    source: TrialEvent

    @property
    def recorded(self) -> str:
        """The date as recorded, for messages: the day, or the partial date's own text."""
        if self.imputed_from is not None:
            return self.imputed_from
        return self.day.isoformat() if self.day else "no date"


# Procedure statuses of one that took place (started at least); `preparation` is a plan.
PERFORMED_PROCEDURE = frozenset({"completed", "in-progress", "on-hold", "stopped"})


def is_data_point(event: TrialEvent) -> bool:
    """A performed, dated fact (Encounter, Observation, DiagnosticReport, performed Procedure,
    administration, Condition, AdverseEvent …), never a planned one: a ServiceRequest, a
    Procedure in preparation, a medication order (its date may be a planned start) or an
    intended use."""
    values = event.values
    if values.get("planned") or isinstance(values.get("intent"), str):
        return False
    if event.source.resource_type == "Procedure":
        return values.get("status") in PERFORMED_PROCEDURE
    return not (event.kind is EventKind.DRUG_EXPOSURE and values.get("status") == "intended")


def _data_point_day(event: TrialEvent) -> dt.date | None:
    """The latest day a fact covers: a finished stay's last day, else its date's day."""
    day = _day(event)
    if (
        day is not None
        and event.kind is EventKind.ENCOUNTER
        and event.values.get("status") == "finished"
        and event.end is not None
        and event.end.day is not None
    ):
        return max(day, event.end.day)
    return day


# The last data point of a subject (its day and event), None when there is none.
LastPoint = tuple[dt.date, TrialEvent] | None
# `last` not given: the callee finds it (a subject's endpoints share one search).
_UNKNOWN: Any = object()


def last_data_point(events: Sequence[TrialEvent], day1: dt.date) -> LastPoint:
    """The latest performed, dated fact about the subject on or after Day 1 (the censoring day)."""
    dated = [
        (d, e)
        for e in events
        if is_data_point(e) and (d := _data_point_day(e)) is not None and d >= day1
    ]
    return max(dated, key=lambda p: (p[0], p[1].source.resource_id)) if dated else None


def _death(event: TrialEvent, alive_on: dt.date) -> Death:
    """One death event's day: exact, imputed from a partial date, or unknown."""
    date = event.date
    if date is None:
        return Death(None, None, event)
    if date.day is not None:
        return Death(date.day, None, event)
    return Death(date.day_not_before(alive_on), date.text, event)


def first_death(
    events: Sequence[TrialEvent], day1: dt.date, *, last: LastPoint = _UNKNOWN
) -> Death | None:
    """The earliest dated death; an undated one only when no death has a date (`last`: the
    last data point, when the caller has it already)."""
    if last is _UNKNOWN:
        last = last_data_point(events, day1)
    alive_on = last[0] if last else day1
    deaths = sorted(
        (_death(e, alive_on) for e in events if e.kind is EventKind.DEATH),
        key=lambda d: (d.day is None, d.day or dt.date.max, d.source.source.resource_id),
    )
    return deaths[0] if deaths else None


def _death_outcome(death: Death, day1: dt.date) -> TimeToEvent:
    """A death as a time to event, or the reason it cannot be one."""
    if death.day is None:
        return TimeToEvent(None, True, "death", None, death.source, "death date unknown")
    if death.day < day1:
        why = f"death recorded before Day 1 ({death.recorded})"
        return TimeToEvent(None, True, "death", death.day, death.source, why, death.imputed_from)
    days = (death.day - day1).days
    return TimeToEvent(days, True, "death", death.day, death.source, None, death.imputed_from)


def _censored(
    events: Sequence[TrialEvent], day1: dt.date, last: LastPoint = _UNKNOWN
) -> TimeToEvent:
    """No event: censored at the last data point (Day 1 itself when there is none)."""
    if last is _UNKNOWN:
        last = last_data_point(events, day1)
    if last is None:
        return TimeToEvent(0, False, None, day1, None)
    return TimeToEvent((last[0] - day1).days, False, None, last[0], last[1])


def overall_survival(
    events: Sequence[TrialEvent], day1: dt.date, *, last: LastPoint = _UNKNOWN
) -> TimeToEvent:
    """Death from Day 1; otherwise censored at the last data point."""
    if last is _UNKNOWN:
        last = last_data_point(events, day1)
    death = first_death(events, day1, last=last)
    return _death_outcome(death, day1) if death else _censored(events, day1, last)


def _progression(
    events: Sequence[TrialEvent], day1: dt.date, recurrence_valueset: str | None
) -> TimeToEvent | None:
    """The first progression or recurrence on or after Day 1, as an EFS event: a disease-status
    Observation saying so, or a distant metastasis Condition (C78–C79) with onset after surgery."""
    op = surgery(events, day1)
    op_day = _day(op) if op else None
    hits = [
        (day, e.source.resource_id, e)
        for e in events
        if e.kind is EventKind.DISEASE_STATUS
        and e.values.get("is_event")
        and (day := _day(e)) is not None
        and day >= day1
    ]
    if recurrence_valueset is not None and op_day is not None:
        hits += [
            (day, e.source.resource_id, e)
            for e in events
            if e.kind is EventKind.CONDITION
            and recurrence_valueset in e.concept_ids
            and (day := _day(e)) is not None
            and day > op_day
        ]
    if not hits:
        return None
    day, _, source = min(hits, key=lambda h: (h[0], h[1]))
    return TimeToEvent((day - day1).days, True, "progression_or_recurrence", day, source)


def event_free_survival(
    events: Sequence[TrialEvent],
    day1: dt.date,
    *,
    recurrence_valueset: str | None = None,
    last: LastPoint = _UNKNOWN,
) -> TimeToEvent:
    """Progression or recurrence on or after Day 1 (a recurrence Condition in
    `recurrence_valueset` with onset after surgery counts), or death; otherwise censored."""
    if last is _UNKNOWN:
        last = last_data_point(events, day1)
    death = first_death(events, day1, last=last)
    if death is not None and death.day is not None and death.day < day1:
        return _death_outcome(death, day1)  # dead before Day 1 per the record: no EFS time either
    died = _death_outcome(death, day1) if death else None
    progressed = _progression(events, day1, recurrence_valueset)
    timed = [t for t in (died, progressed) if t is not None and t.days is not None]
    if timed:
        return min(timed, key=lambda t: (t.days, t.event_type or ""))
    return died or _censored(events, day1, last)


def pathological_response(
    protocol: TrialProtocol, events: Sequence[TrialEvent], surgery_day: dt.date | None
) -> dict[str, Any]:
    """MPR (≤ threshold viable tumour in the primary) and pCR (0 % in primary and nodes)."""
    after = [
        e
        for e in events
        if e.kind is EventKind.VIABLE_TUMOUR
        and (surgery_day is None or (_day(e) or surgery_day) >= surgery_day)
        and _pct(e) is not None
    ]
    primary = [e for e in after if e.values.get("site") == "primary"]
    nodal = [e for e in after if e.values.get("site") == "nodal"]
    yp_n = [
        e
        for e in events
        if e.kind is EventKind.TNM_CATEGORY
        and e.values.get("axis") == "N"
        and e.values.get("setting") == "pathological"
        and (surgery_day is None or (_day(e) or surgery_day) >= surgery_day)
    ]
    latest = max(primary, key=lambda e: _day(e) or dt.date.min) if primary else None
    outcomes = protocol.outcomes
    if latest is None:
        reason = "no percent viable tumour of the resected primary"
        return {
            "mpr": {
                "result": "not_evaluable",
                "reason": reason,
                "viable_pct": None,
                "evidence": None,
            },
            "pcr": {"result": "not_evaluable", "reason": reason, "evidence": []},
        }
    pct = _pct(latest)
    assert pct is not None
    mpr: Response = "met" if pct <= outcomes.mpr_max_viable_pct else "not_met"
    pcr: Response
    evidence = [_ref(latest)]
    if pct > outcomes.pcr_viable_pct:
        pcr, why = "not_met", f"{pct} % viable tumour in the primary"
    else:
        node = max(nodal, key=lambda e: _day(e) or dt.date.min) if nodal else None
        n_cat = max(yp_n, key=lambda e: _day(e) or dt.date.min) if yp_n else None
        if node is not None:
            node_pct = _pct(node)
            evidence.append(_ref(node))
            pcr = (
                "met" if node_pct is not None and node_pct <= outcomes.pcr_viable_pct else "not_met"
            )
            why = f"primary {pct} %, lymph nodes {node_pct} % viable tumour"
        elif n_cat is not None and n_cat.values.get("category"):
            evidence.append(_ref(n_cat))
            category = str(n_cat.values["category"])
            pcr = "met" if category == "N0" else "not_met"
            why = f"primary {pct} % viable tumour, nodes {category}"
        else:
            pcr, why = "not_evaluable", "no nodal information (ypN or nodal viable tumour)"
    return {
        "mpr": {
            "result": mpr,
            "reason": f"{pct} % viable tumour (MPR ≤ {outcomes.mpr_max_viable_pct} %)",
            "viable_pct": str(pct),
            "evidence": _ref(latest),
        },
        "pcr": {"result": pcr, "reason": why, "evidence": evidence},
    }


TREATMENT_EMERGENT = (
    "starts on or after Day 1; an AE without a date, or whose partial date may fall on or after "
    "Day 1, counts as treatment-emergent (conservative); before Day 1 = pre-dose"
)


def treatment_emergent(event: TrialEvent, day1: dt.date) -> bool:
    """Not known to start before Day 1: a missing or partial date is not a reason to drop an AE."""
    return event.date is None or event.date.last >= day1


def _grade_count(grade: Any) -> str:
    """The by-grade key of one AE grade (ungraded: "unknown")."""
    return str(grade) if grade else "unknown"


def safety(protocol: TrialProtocol, events: Sequence[TrialEvent], day1: dt.date) -> dict[str, Any]:
    """Treatment-emergent AEs by CTCAE grade, grade ≥ threshold, and those in the dosing window.

    Every AE is listed, with its `treatment_emergent` flag; the counts are over treatment-emergent
    AEs only (a condition present before dosing is not toxicity), pre-dose ones counted apart.
    """
    drugs = {d.valueset for d in protocol.schedule.study_drugs}
    doses = [
        d
        for e in events
        if e.kind is EventKind.DRUG_ADMINISTRATION and e.concept_ids & drugs and (d := _day(e))
    ]
    window_end = shift_day(max(doses, default=day1), protocol.schedule.ae_window_days)
    aes = [
        e
        for e in events
        if e.kind is EventKind.ADVERSE_EVENT
        or (e.kind is EventKind.CONDITION and e.values.get("is_adverse_event"))
    ]
    items = []
    for e in sorted(aes, key=lambda e: (_day(e) or dt.date.max, e.source.resource_id)):
        day = _day(e)
        items.append(
            {
                "term": e.values.get("term_text") or e.values.get("text") or _term(e),
                "grade": e.values.get("grade"),
                "date": day.isoformat() if day else None,
                "study_day": study_day(day, day1) if day else None,
                "treatment_emergent": treatment_emergent(e, day1),
                "within_window": bool(day and day1 <= day <= window_end),
                "evidence": _ref(e),
            }
        )
    emergent = [i for i in items if i["treatment_emergent"]]
    by_grade = Counter(_grade_count(i["grade"]) for i in emergent)
    threshold = protocol.outcomes.high_grade_ae_min
    return {
        "adverse_events": items,
        "treatment_emergent_definition": TREATMENT_EMERGENT,
        "treatment_emergent": len(emergent),
        "pre_dose": len(items) - len(emergent),
        "by_grade": dict(sorted(by_grade.items())),
        "grade_3_or_higher": sum(
            1 for i in emergent if isinstance(i["grade"], int) and i["grade"] >= threshold
        ),
        "within_window": sum(1 for i in items if i["within_window"]),
        "window_end": window_end.isoformat(),
    }


def _term(event: TrialEvent) -> str | None:
    """The AE term from its code's text or first display, when no term text was mapped."""
    code = event.values.get("code") or event.values.get("term")
    if isinstance(code, dict):
        if isinstance(code.get("text"), str):
            return str(code["text"])
        for coding in code.get("coding") or ():
            if isinstance(coding, dict) and coding.get("display"):
                return str(coding["display"])
    return None


def subject_outcomes(
    protocol: TrialProtocol,
    events: Sequence[TrialEvent],
    day1: dt.date | None,
    *,
    last: LastPoint = _UNKNOWN,
) -> dict[str, Any]:
    """Every per-subject endpoint; without Day 1 only what needs no time origin (`last`: the
    last data point from Day 1, when the caller has it already)."""
    op = surgery(events, day1)
    op_day = _day(op) if op else None
    response = pathological_response(protocol, events, op_day)
    if day1 is None:
        return {
            "day1": None,
            "time_to_surgery_days": None,
            "surgery": None,
            "on_time_surgery": None,
            **response,
            "efs": None,
            "os": None,
            "safety": None,
            "reason": "no study-drug administration: Day 1 is unknown",
        }
    window = protocol.schedule.surgery_window
    surgery_day = study_day(op_day, day1) if op_day else None
    if last is _UNKNOWN:  # both survival endpoints censor at it: found once
        last = last_data_point(events, day1)
    return {
        "day1": day1.isoformat(),
        "time_to_surgery_days": (op_day - day1).days if op_day else None,
        "surgery": {"date": op_day.isoformat(), "study_day": surgery_day, "evidence": _ref(op)}
        if op_day
        else None,
        "on_time_surgery": (window.start <= surgery_day <= window.end)
        if surgery_day is not None
        else None,
        **response,
        "efs": event_free_survival(
            events,
            day1,
            recurrence_valueset=protocol.outcomes.recurrence_condition_valueset,
            last=last,
        ).to_json(),
        "os": overall_survival(events, day1, last=last).to_json(),
        "safety": safety(protocol, events, day1),
    }
