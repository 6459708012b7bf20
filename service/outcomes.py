"""Per-subject endpoints of the interventional study (pure functions over trial events).

Time origin is Day 1. Definitions: CLINICAL.md (Outcomes) and the protocol's `outcomes` settings.
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
from service.deviations import surgery
from service.protocol import TrialProtocol

Response = Literal["met", "not_met", "not_evaluable"]


def _day(event: TrialEvent) -> dt.date | None:
    return event.date.day if event.date else None


def _pct(event: TrialEvent) -> Decimal | None:
    try:
        return Decimal(str(event.values.get("percent")))
    except (InvalidOperation, ValueError):
        return None


def _ref(event: TrialEvent | None) -> dict[str, Any] | None:
    return event.source.to_json() if event else None


@dataclass(frozen=True, slots=True)
class TimeToEvent:
    """Days from Day 1 to the event, or to censoring at the last data point."""

    days: int | None
    event: bool
    event_type: str | None
    date: dt.date | None
    source: TrialEvent | None

    def to_json(self) -> dict[str, Any]:
        """The wire shape."""
        return {
            "days": self.days,
            "event": self.event,
            "censored": not self.event if self.days is not None else None,
            "event_type": self.event_type,
            "date": self.date.isoformat() if self.date else None,
            "evidence": _ref(self.source),
        }


def last_data_point(
    events: Sequence[TrialEvent], day1: dt.date
) -> tuple[dt.date, TrialEvent] | None:
    """The latest dated fact about the subject on or after Day 1 (the censoring day)."""
    dated = [(d, e) for e in events if (d := _day(e)) is not None and d >= day1]
    return max(dated, key=lambda p: (p[0], p[1].source.resource_id)) if dated else None


def _time_to(
    day1: dt.date, hits: list[tuple[dt.date, str, TrialEvent]], events: Sequence[TrialEvent]
) -> TimeToEvent:
    if hits:
        day, kind, source = min(hits, key=lambda h: (h[0], h[1]))
        return TimeToEvent((day - day1).days, True, kind, day, source)
    last = last_data_point(events, day1)
    if last is None:
        return TimeToEvent(0, False, None, day1, None)
    return TimeToEvent((last[0] - day1).days, False, None, last[0], last[1])


def overall_survival(events: Sequence[TrialEvent], day1: dt.date) -> TimeToEvent:
    """Death from Day 1; otherwise censored at the last data point."""
    deaths = [(d, "death", e) for e in events if e.kind is EventKind.DEATH and (d := _day(e))]
    return _time_to(day1, deaths, events)


def event_free_survival(events: Sequence[TrialEvent], day1: dt.date) -> TimeToEvent:
    """Progression or recurrence on or after Day 1, or death; otherwise censored."""
    hits = [(d, "death", e) for e in events if e.kind is EventKind.DEATH and (d := _day(e))]
    for e in events:
        day = _day(e)
        if e.kind is EventKind.DISEASE_STATUS and e.values.get("is_event") and day and day >= day1:
            hits.append((day, "progression_or_recurrence", e))
    return _time_to(day1, hits, events)


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


def safety(protocol: TrialProtocol, events: Sequence[TrialEvent], day1: dt.date) -> dict[str, Any]:
    """Adverse events by CTCAE grade, grade ≥ threshold, and those within the window after dosing."""
    drugs = {d.valueset for d in protocol.schedule.study_drugs}
    doses = [
        d
        for e in events
        if e.kind is EventKind.DRUG_ADMINISTRATION and e.concept_ids & drugs and (d := _day(e))
    ]
    window_end = max(doses, default=day1) + dt.timedelta(days=protocol.schedule.ae_window_days)
    aes = [
        e
        for e in events
        if e.kind is EventKind.ADVERSE_EVENT
        or (e.kind is EventKind.CONDITION and e.values.get("is_adverse_event"))
    ]
    by_grade: Counter[str] = Counter()
    items = []
    for e in sorted(aes, key=lambda e: (_day(e) or dt.date.max, e.source.resource_id)):
        grade = e.values.get("grade")
        by_grade[str(grade) if grade else "unknown"] += 1
        day = _day(e)
        items.append(
            {
                "term": e.values.get("term_text") or e.values.get("text") or _term(e),
                "grade": grade,
                "date": day.isoformat() if day else None,
                "study_day": study_day(day, day1) if day else None,
                "within_window": bool(day and day1 <= day <= window_end),
                "evidence": _ref(e),
            }
        )
    threshold = protocol.outcomes.high_grade_ae_min
    return {
        "adverse_events": items,
        "by_grade": dict(sorted(by_grade.items())),
        "grade_3_or_higher": sum(
            1 for i in items if isinstance(i["grade"], int) and i["grade"] >= threshold
        ),
        "within_window": sum(1 for i in items if i["within_window"]),
        "window_end": window_end.isoformat(),
    }


def _term(event: TrialEvent) -> str | None:
    code = event.values.get("code") or event.values.get("term")
    if isinstance(code, dict):
        if isinstance(code.get("text"), str):
            return str(code["text"])
        for coding in code.get("coding") or ():
            if isinstance(coding, dict) and coding.get("display"):
                return str(coding["display"])
    return None


def subject_outcomes(
    protocol: TrialProtocol, events: Sequence[TrialEvent], day1: dt.date | None
) -> dict[str, Any]:
    """Every per-subject endpoint; without Day 1 only what needs no time origin."""
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
        "efs": event_free_survival(events, day1).to_json(),
        "os": overall_survival(events, day1).to_json(),
        "safety": safety(protocol, events, day1),
    }
