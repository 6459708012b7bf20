"""MedicationRequest / MedicationStatement → drug_exposure: orders and reported use of a drug.

An order or a statement is evidence of exposure over a period (prohibited medication, prior
immunosuppression, glucocorticoid covariate), not of a dose given on a day: that is what
MedicationAdministration maps to.

Exposure is an interval (CLINICAL.md, exclusion 8): a course runs from its start to its end. An
order's end is its boundsPeriod end; a course given as a length (timing.repeat.boundsDuration, else
dispenseRequest.expectedSupplyDuration) is kept as `course_days` and ended by `exposure_span`
once the start's calendar day is known (in the site's time zone, so never here).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_mapping.events.common import (
    as_dict,
    concept_json,
    dose_in_mg,
    drug_matches,
    is_void,
    medication_concept,
    medication_text,
    reasons,
    route_class,
    route_matches,
    status_of,
)
from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.partial_dates import PartialDate, first_date, parse_partial_date, period_bounds
from fhir_mapping.terminology import UCUM

# Orders withdrawn before anything happened, and statements that the drug was not taken.
_NO_EXPOSURE = frozenset({"cancelled", "not-taken", "entered-in-error"})
# An order or statement with no end that is still in force: exposure runs on (until today).
ONGOING_STATUSES = frozenset({"active", "on-hold"})

# UCUM time units in days (mo and a are UCUM's mean Julian month and year), and the unit words
# feeds write without a code.
_UCUM_DAYS: dict[str, Decimal] = {
    "s": Decimal(1) / Decimal(86400),
    "min": Decimal(1) / Decimal(1440),
    "h": Decimal(1) / Decimal(24),
    "d": Decimal(1),
    "wk": Decimal(7),
    "mo": Decimal("30.4375"),
    "a": Decimal("365.25"),
}
_UNIT_WORDS = {
    "second": "s",
    "seconds": "s",
    "minute": "min",
    "minutes": "min",
    "hour": "h",
    "hours": "h",
    "day": "d",
    "days": "d",
    "week": "wk",
    "weeks": "wk",
    "month": "mo",
    "months": "mo",
    "year": "a",
    "years": "a",
}


def _dosages(resource: dict[str, Any], element: str) -> list[dict[str, Any]]:
    """The Dosage elements of the resource (malformed items dropped)."""
    items = resource.get(element)
    return [d for d in items if isinstance(d, dict)] if isinstance(items, list) else []


def _bounds(dosages: list[dict[str, Any]]) -> tuple[PartialDate | None, PartialDate | None]:
    """Earliest start and latest end of the dosages' timing bounds (end None if any is open)."""
    starts: list[PartialDate] = []
    ends: list[PartialDate] = []
    open_ended = False
    for dosage in dosages:
        repeat = as_dict(as_dict(dosage.get("timing")).get("repeat"))
        if not isinstance(repeat.get("boundsPeriod"), dict):
            continue
        start, end = period_bounds(repeat["boundsPeriod"])
        if start is not None:
            starts.append(start)
        if end is None:
            open_ended = True
        else:
            ends.append(end)
    first = min(starts, key=PartialDate.sort_key) if starts else None
    last = None if open_ended or not ends else max(ends, key=lambda d: (d.last, d.sort_key()))
    return first, last


def duration_days(duration: Any) -> int | None:
    """The calendar days a FHIR Duration covers (21 d → 21, 3 wk → 21, 12 h → 1); None if unreadable."""
    if not isinstance(duration, dict):
        return None
    code = duration.get("code")
    system = duration.get("system")
    unit = code if isinstance(code, str) and system in (UCUM, None) else None
    if unit is None and isinstance(duration.get("unit"), str):
        text = duration["unit"].strip().lower()
        unit = text if text in _UCUM_DAYS else _UNIT_WORDS.get(text)
    factor = _UCUM_DAYS.get(unit) if unit else None
    try:
        value = Decimal(str(duration.get("value")))
    except (InvalidOperation, ValueError):
        return None
    if factor is None or not value.is_finite() or value <= 0:
        return None
    return max(1, math.ceil(value * factor))


def _course_days(dosages: list[dict[str, Any]], resource: dict[str, Any]) -> int | None:
    """How long the course runs when it is given as a length rather than an end date.

    Dosages of one `sequence` run together (the longest counts); successive sequences run one
    after the other (a taper written as 7 d + 7 d + 7 d is 21 days). Without any boundsDuration,
    the dispensed supply's expected duration is the course.
    """
    by_sequence: dict[Any, int] = {}
    for dosage in dosages:
        repeat = as_dict(as_dict(dosage.get("timing")).get("repeat"))
        days = duration_days(repeat.get("boundsDuration"))
        if days is not None:
            sequence = dosage.get("sequence") if isinstance(dosage.get("sequence"), int) else None
            by_sequence[sequence] = max(days, by_sequence.get(sequence, 0))
    if by_sequence:
        return sum(by_sequence.values())
    dispense = as_dict(resource.get("dispenseRequest"))
    return duration_days(dispense.get("expectedSupplyDuration"))


def _first_dose(dosages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first dosage's first dose quantity, normalised to mg when its unit allows."""
    if not dosages:
        return None
    dose_and_rate = dosages[0].get("doseAndRate")
    if not isinstance(dose_and_rate, list) or not dose_and_rate:
        return None
    return dose_in_mg(as_dict(dose_and_rate[0]).get("doseQuantity"))


def _exposure(
    resource: dict[str, Any],
    source: SourceRef,
    ctx: MappingContext,
    *,
    dosages: list[dict[str, Any]],
    date: PartialDate | None,
    end: PartialDate | None,
    intent: str | None,
    course_days: int | None = None,
) -> list[TrialEvent]:
    """The single drug_exposure event both resource types share once dates are known."""
    medication = medication_concept(resource, ctx)
    route = dosages[0].get("route") if dosages else None
    route_cls, route_match = route_class(route, medication, ctx)
    matches = drug_matches(medication, ctx)
    if route_match:
        matches.append(route_match)
    matches += route_matches(route, ctx)
    values: dict[str, Any] = {
        "resource_type": source.resource_type,
        "medication": medication_text(medication),
        "medication_code": concept_json(medication),
        "status": status_of(resource),
        "intent": intent,
        "route_class": route_cls,
        "dose": _first_dose(dosages),
        "course_days": course_days if end is None else None,
        "reasons": reasons(resource, ctx),
    }
    return [
        TrialEvent(
            kind=EventKind.DRUG_EXPOSURE,
            patient_id=ctx.patient_id(resource.get("subject"), resource),
            source=source,
            date=date,
            end=end,
            values=values,
            concepts=tuple(matches),
        )
    ]


def _excluded(resource: dict[str, Any]) -> bool:
    """Void records, exposures that did not happen, and requests not to give the drug."""
    return (
        is_void(resource)
        or status_of(resource) in _NO_EXPOSURE
        or resource.get("doNotPerform") is True
    )


def map_medication_request(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """An order is exposure from its dosing bounds (else from when it was written)."""
    if _excluded(resource):
        return []
    dosages = _dosages(resource, "dosageInstruction")
    start, end = _bounds(dosages)
    intent = resource.get("intent")
    return _exposure(
        resource,
        source,
        ctx,
        dosages=dosages,
        date=start or parse_partial_date(resource.get("authoredOn")),
        end=end,
        intent=intent if isinstance(intent, str) else None,
        course_days=_course_days(dosages, resource),
    )


def map_medication_statement(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """A statement is exposure at its effective time or over its effective period."""
    if _excluded(resource):
        return []
    start, end = period_bounds(resource.get("effectivePeriod"))
    when = first_date(resource.get("effectiveDateTime")) or start
    return _exposure(
        resource,
        source,
        ctx,
        dosages=_dosages(resource, "dosage"),
        date=when,
        end=end if when is start else None,
        intent=None,
    )


# -- exposure as an interval of days ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExposureSpan:
    """The days a drug record covers; a partial date makes each end a range of possible days.

    The course starts on a day in [earliest_start, latest_start] and ends on a day in
    [earliest_end, latest_end]; `ongoing` (an active record without an end) runs on past any day.
    """

    earliest_start: dt.date
    latest_start: dt.date
    earliest_end: dt.date
    latest_end: dt.date
    ongoing: bool

    def surely_overlaps(self, first: dt.date, last: dt.date) -> bool:
        """Exposed on some day of [first, last] whichever days the partial dates stand for."""
        return self.latest_start <= last and (self.ongoing or self.earliest_end >= first)

    def may_overlap(self, first: dt.date, last: dt.date) -> bool:
        """Exposed on some day of [first, last] for at least one reading of the partial dates."""
        return self.earliest_start <= last and (self.ongoing or self.latest_end >= first)

    def first_sure_day(self, first: dt.date) -> dt.date:
        """The first day on or after `first` that is exposed whichever reading holds."""
        return max(self.latest_start, first)


def _plus_days(day: dt.date, days: int) -> dt.date:
    """`day` moved by `days`, held at the calendar's ends (an open window, never an error)."""
    try:
        return day + dt.timedelta(days=days)
    except OverflowError:
        return dt.date.max if days > 0 else dt.date.min


def exposure_span(event: TrialEvent) -> ExposureSpan | None:
    """The interval a drug event stands for: its date to its end, its course length, or one day.

    Call it on events whose dates are already the site's calendar days. None when undated.
    """
    start = event.date
    if start is None:
        return None
    end = event.end
    course = event.values.get("course_days")
    if end is not None:
        earliest_end, latest_end = max(end.first, start.first), max(end.last, start.last)
    elif isinstance(course, int) and not isinstance(course, bool) and course >= 1:
        earliest_end = _plus_days(start.first, course - 1)
        latest_end = _plus_days(start.last, course - 1)
    else:
        earliest_end, latest_end = start.first, start.last
    ongoing = (
        event.kind is EventKind.DRUG_EXPOSURE
        and end is None
        and course is None
        and event.values.get("status") in ONGOING_STATUSES
    )
    return ExposureSpan(start.first, start.last, earliest_end, latest_end, ongoing)
