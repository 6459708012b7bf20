"""Protocol deviations of one subject, detected from its events as of a day (pure functions).

Each finding carries a stable cause key: the same cause gives the same deviation id on every
recomputation, so staff annotations survive and a corrected record resolves it.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_mapping.events.medication_exposure import ExposureSpan, exposure_span
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.partial_dates import study_day
from service.infra.clock import shift_day
from service.studies.interventional.protocol import DeviationCode, DeviationRule, TrialProtocol

# ResearchSubject statuses that mean the patient was actually enrolled.
ENROLLED_STATUSES = frozenset(
    {"on-study", "on-study-intervention", "on-study-observation", "follow-up", "off-study"}
)
IMMUNOSUPPRESSION = ("systemic_glucocorticoid", "immunosuppressant", "biologic_immunomodulator")


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected deviation: rule, cause, when, a message a monitor understands, evidence."""

    rule: DeviationCode
    cause: str
    message: str
    study_day: int | None
    occurred_on: dt.date | None
    evidence: tuple[SourceRef, ...]

    def evidence_json(self) -> list[dict[str, Any]]:
        """The evidence as wire references."""
        return [s.to_json() for s in self.evidence]


@dataclass(frozen=True, slots=True)
class SubjectContext:
    """What the rules need besides events: Day 1, enrollment, eligibility on that day."""

    day1: dt.date | None
    enrolled_on: dt.date | None
    status: str | None
    eligible_at_enrollment: str | None
    enrollment_source: SourceRef | None


def _day(event: TrialEvent) -> dt.date | None:
    return event.date.day if event.date else None


_UNDATED = (dt.date.min, dt.datetime.min.replace(tzinfo=dt.UTC))


def _chronological(event: TrialEvent) -> tuple[Any, ...]:
    when = event.date.sort_key() if event.date else _UNDATED
    src = event.source
    return (when, src.resource_type, src.resource_id, src.version_id)


def _sd(day: dt.date, day1: dt.date) -> int:
    return study_day(day, day1)


def _mg(event: TrialEvent) -> Decimal | None:
    dose = event.values.get("dose")
    if not isinstance(dose, dict) or dose.get("mg") is None:
        return None
    try:
        return Decimal(str(dose["mg"]))
    except InvalidOperation:
        return None


def _fmt(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _performed(event: TrialEvent) -> bool:
    return event.source.resource_type == "Procedure" and event.values.get("status") in (
        "completed",
        "in-progress",
    )


def surgery(events: Sequence[TrialEvent], day1: dt.date | None = None) -> TrialEvent | None:
    """The first performed lung resection (on or after Day 1: an earlier one is history)."""
    done = [
        e
        for e in events
        if e.kind is EventKind.LUNG_RESECTION
        and _performed(e)
        and (d := _day(e)) is not None
        and (day1 is None or d >= day1)
    ]
    return min(done, key=lambda e: (_day(e), e.source.resource_id)) if done else None


# -- the rules ---------------------------------------------------------------------------------------


def _ineligible_enrolled(ctx: SubjectContext) -> list[Finding]:
    if ctx.status not in ENROLLED_STATUSES or ctx.eligible_at_enrollment != "ineligible":
        return []
    day = _sd(ctx.enrolled_on, ctx.day1) if ctx.enrolled_on and ctx.day1 else None
    when = ctx.enrolled_on.isoformat() if ctx.enrolled_on else "an unknown date"
    return [
        Finding(
            "ineligible_enrolled",
            "enrollment",
            f"enrolled on {when} while ineligible on that day",
            day,
            ctx.enrolled_on,
            (ctx.enrollment_source,) if ctx.enrollment_source else (),
        )
    ]


def _doses(
    protocol: TrialProtocol, events: Sequence[TrialEvent], ctx: SubjectContext
) -> list[Finding]:
    """dose_mismatch, dose_missing, dose_extra: Day-1 totals per drug after unit normalisation."""
    if ctx.day1 is None:
        return []
    day1 = ctx.day1
    out: list[Finding] = []
    tolerance = protocol.schedule.dose_tolerance_pct / Decimal(100)
    for drug in protocol.schedule.study_drugs:
        given = [
            e
            for e in events
            if e.kind is EventKind.DRUG_ADMINISTRATION
            and drug.valueset in e.concept_ids
            and _day(e)
        ]
        by_day: dict[int, list[TrialEvent]] = defaultdict(list)
        for e in given:
            day = _day(e)
            assert day is not None
            by_day[_sd(day, day1)].append(e)
        planned = by_day.get(drug.day, [])
        if not planned:
            others = sorted(by_day)
            detail = f"first given on Day {others[0]}" if others else "never given"
            out.append(
                Finding(
                    "dose_missing",
                    f"{drug.id}",
                    f"{drug.id} not given on Day {drug.day} ({detail}); plan {_fmt(drug.dose_mg)} mg {drug.route}",
                    drug.day,
                    shift_day(day1, drug.day - 1),
                    tuple(e.source for e in given),
                )
            )
        else:
            amounts = [_mg(e) for e in planned]
            low, high = drug.dose_mg * (1 - tolerance), drug.dose_mg * (1 + tolerance)
            if any(a is None for a in amounts):
                out.append(
                    Finding(
                        "dose_mismatch",
                        f"{drug.id}",
                        f"{drug.id} Day-{drug.day} dose not in a mass unit; plan {_fmt(drug.dose_mg)} mg",
                        drug.day,
                        _day(planned[0]),
                        tuple(e.source for e in planned),
                    )
                )
            else:
                total = sum((a for a in amounts if a is not None), Decimal(0))
                if not low <= total <= high:
                    parts = " + ".join(_fmt(a) for a in amounts if a is not None)
                    out.append(
                        Finding(
                            "dose_mismatch",
                            f"{drug.id}",
                            f"{drug.id} Day-{drug.day} total {_fmt(total)} mg ({parts}); plan "
                            f"{_fmt(drug.dose_mg)} mg ± {_fmt(protocol.schedule.dose_tolerance_pct)} % "
                            f"({_fmt(low)}–{_fmt(high)} mg)",
                            drug.day,
                            _day(planned[0]),
                            tuple(e.source for e in planned),
                        )
                    )
        for sday, extra in sorted(by_day.items()):
            if sday > drug.day and planned:  # a late first dose is dose_missing instead
                out.append(
                    Finding(
                        "dose_extra",
                        f"{drug.id}:day{sday}",
                        f"{drug.id} given again on Day {sday}; the protocol gives it on Day {drug.day} only",
                        sday,
                        _day(extra[0]),
                        tuple(e.source for e in extra),
                    )
                )
    return out


def _surgery_window(
    protocol: TrialProtocol, events: Sequence[TrialEvent], ctx: SubjectContext, as_of: dt.date
) -> list[Finding]:
    if ctx.day1 is None:
        return []
    window = protocol.schedule.surgery_window
    label = f"window Day {window.start}–{window.end}"
    op = surgery(events, ctx.day1)
    if op is not None:
        day = _day(op)
        assert day is not None
        sd = _sd(day, ctx.day1)
        if window.start <= sd <= window.end:
            return []
        return [
            Finding(
                "surgery_window", "surgery", f"surgery on Day {sd}; {label}", sd, day, (op.source,)
            )
        ]
    if _sd(as_of, ctx.day1) > window.end:
        last = shift_day(ctx.day1, window.end - 1)
        # No as-of day in the message: it would change every day the rules run (a new version,
        # an "updated" history entry and a stale ETag daily) while the cause stays the same.
        return [
            Finding(
                "surgery_window",
                "surgery",
                f"no surgery by Day {window.end}; {label}",
                window.end,
                last,
                (),
            )
        ]
    return []


def _screening(
    protocol: TrialProtocol, events: Sequence[TrialEvent], ctx: SubjectContext
) -> list[Finding]:
    if ctx.day1 is None:
        return []
    screening = protocol.schedule.screening
    first = -screening.window_days_before_day1
    label = f"screening window Day {first} to Day -1"

    def in_window(e: TrialEvent) -> bool:
        day = _day(e)
        return day is not None and first <= _sd(day, ctx.day1) <= -1  # type: ignore[arg-type]

    biopsies = [
        e
        for e in events
        if e.kind is EventKind.BIOPSY
        and e.values.get("core_needle")
        and _performed(e)
        and in_window(e)
    ]
    cores = biopsy_cores(biopsies, events)
    count = sum(max(1, len(cores[b.source.resource_id])) for b in biopsies)
    out: list[Finding] = []
    rng = screening.core_biopsies
    if not rng.min <= count <= rng.max:
        out.append(
            Finding(
                "screening_biopsy_count",
                "screening",
                f"{count} core needle {'biopsy' if count == 1 else 'biopsies'} "
                f"in the {label}; plan {rng.min}–{rng.max}",
                None,
                shift_day(ctx.day1, -1),
                tuple(
                    source
                    for b in biopsies
                    for source in (b.source, *(c.source for c in cores[b.source.resource_id]))
                ),
            )
        )
    stool = [
        e
        for e in events
        if e.kind is EventKind.SPECIMEN_COLLECTION
        and e.values.get("specimen_type") == "stool"
        and in_window(e)
    ]
    if screening.stool_sample_required and not stool:
        out.append(
            Finding(
                "screening_stool_missing",
                "screening",
                f"no stool sample in the {label}",
                None,
                shift_day(ctx.day1, -1),
                (),
            )
        )
    return out


def biopsy_cores(
    biopsies: Sequence[TrialEvent], events: Sequence[TrialEvent]
) -> dict[str, list[TrialEvent]]:
    """The cores each biopsy Procedure yielded: the Specimens it collected (by id), aliquots
    (specimens with a parent) left out. A biopsy with none counts as one core."""
    wanted = {b.source.resource_id for b in biopsies}
    cores: dict[str, list[TrialEvent]] = {rid: [] for rid in wanted}
    for e in events:
        procedure = e.values.get("procedure")
        if (
            e.kind is EventKind.SPECIMEN_COLLECTION
            and procedure in wanted
            and not e.values.get("parent")
        ):
            cores[procedure].append(e)
    return cores


def _followup(
    protocol: TrialProtocol, events: Sequence[TrialEvent], ctx: SubjectContext, as_of: dt.date
) -> list[Finding]:
    op = surgery(events, ctx.day1)
    if op is None:
        return []
    op_day = _day(op)
    assert op_day is not None
    plan = protocol.schedule.followup
    lo = shift_day(op_day, plan.days_after_surgery - plan.tolerance_days)
    hi = shift_day(op_day, plan.days_after_surgery + plan.tolerance_days)
    label = (
        f"post-operative window {lo.isoformat()} to {hi.isoformat()} "
        f"({plan.days_after_surgery} ± {plan.tolerance_days} days after surgery)"
    )
    contacts = [
        e
        for e in events
        if e.kind is EventKind.ENCOUNTER and (d := _day(e)) is not None and d > op_day
    ]
    inside = [e for e in contacts if lo <= (_day(e) or lo) <= hi]
    if inside or as_of <= hi:
        return []
    sd = _sd(hi, ctx.day1) if ctx.day1 else None
    if contacts:
        days = ", ".join(sorted({(_day(e) or op_day).isoformat() for e in contacts}))
        message = f"post-operative contact on {days}, outside the {label}"
    else:
        message = f"no contact in the {label}"
    return [
        Finding(
            "followup_visit",
            "followup",
            message,
            sd,
            hi,
            (*(e.source for e in contacts), op.source),
        )
    ]


def _immune_related(event: TrialEvent, irae_valueset: str, study_drugs: frozenset[str]) -> bool:
    """An AdverseEvent or Condition whose term or category is in the irAE value set, or an
    AdverseEvent with a study drug among its suspects assessed as related."""
    if event.kind not in (EventKind.ADVERSE_EVENT, EventKind.CONDITION):
        return False
    if irae_valueset in event.concept_ids:
        return True
    related = event.values.get("related_suspects") or ()
    return any(
        isinstance(s, dict) and study_drugs.intersection(s.get("drugs") or ()) for s in related
    )


def _treats_irae(
    drug: TrialEvent, span: ExposureSpan, iraes: Sequence[TrialEvent], day1: dt.date
) -> bool:
    """The record says the drug treats an irAE: it names one (AdverseEvent or Condition) as its
    reason, or starts on or after the onset of an immune-related adverse event (an AdverseEvent,
    or a Condition recorded as one) that began on or after Day 1."""
    named = set(drug.values.get("reasons") or ())
    for ae in iraes:
        if f"{ae.source.resource_type}/{ae.source.resource_id}" in named:
            return True
        onset = _day(ae)
        is_ae = ae.kind is EventKind.ADVERSE_EVENT or bool(ae.values.get("is_adverse_event"))
        if is_ae and onset is not None and day1 <= onset <= span.earliest_start:
            return True
    return False


def _perioperative(
    rule: DeviationRule, drug: TrialEvent, span: ExposureSpan, surgery_day: dt.date | None
) -> bool:
    """**Choice**: a single-day dose of a listed drug (by its route) on the surgery day."""
    if surgery_day is None or span.ongoing:
        return False
    one_day = span.earliest_start == span.latest_end == surgery_day
    return one_day and any(
        p.valueset in drug.concept_ids
        and (p.route_valueset is None or p.route_valueset in drug.concept_ids)
        for p in rule.perioperative
    )


def _prohibited(
    protocol: TrialProtocol, events: Sequence[TrialEvent], ctx: SubjectContext, as_of: dt.date
) -> list[Finding]:
    """Systemic immunosuppression exposed between Day 1 and surgery (an interval: a course
    ordered before Day 1 and running past it counts), unless it treats an irAE or is a
    peri-operative dose on the surgery day."""
    rule = next((d for d in protocol.deviations if d.code == "prohibited_medication"), None)
    if ctx.day1 is None or rule is None or rule.irae_valueset is None:
        return []
    day1 = ctx.day1
    op = surgery(events, day1)
    op_day = _day(op) if op else None
    end = op_day or as_of
    study_drugs = frozenset(d.valueset for d in protocol.schedule.study_drugs)
    iraes = [e for e in events if _immune_related(e, rule.irae_valueset, study_drugs)]
    out: list[Finding] = []
    for e in events:
        if e.kind not in (EventKind.DRUG_ADMINISTRATION, EventKind.DRUG_EXPOSURE):
            continue
        if (
            not any(c in e.concept_ids for c in IMMUNOSUPPRESSION)
            or e.values.get("route_class") == "local"
        ):
            continue
        span = exposure_span(e)
        if span is None or not span.surely_overlaps(day1, end):
            continue
        if _treats_irae(e, span, iraes, day1) or _perioperative(rule, e, span, op_day):
            continue
        day = span.first_sure_day(day1)
        sd = _sd(day, day1)
        name = e.values.get("medication") or "immunosuppressant"
        out.append(
            Finding(
                "prohibited_medication",
                f"{e.source.resource_type}/{e.source.resource_id}",
                f"{name} {_exposure_days(span, day1)}, between Day 1 and surgery, with no "
                "immune-related adverse event before it",
                sd,
                day,
                (e.source,),
            )
        )
    return out


def _exposure_days(span: ExposureSpan, day1: dt.date) -> str:
    """'on Day 5' for one day; 'from Day -3 to Day 14' (or '…, ongoing') for a course."""
    start = _sd(span.earliest_start, day1)
    if span.ongoing:
        return f"from Day {start}, ongoing"
    stop = _sd(span.latest_end, day1)
    return f"on Day {start}" if start == stop else f"from Day {start} to Day {stop}"


def detect(
    protocol: TrialProtocol, events: Sequence[TrialEvent], ctx: SubjectContext, *, as_of: dt.date
) -> list[Finding]:
    """Every deviation of one subject as of a day, for the rules the protocol lists."""
    # In date order (then by source), whatever order storage returned them in: messages and
    # evidence must not change when an unrelated re-mapping reorders the stored events.
    known = sorted(
        (e for e in events if e.date is None or e.date.first <= as_of), key=_chronological
    )
    # Day 1 comes from every recorded dose; as of an earlier day it has not happened yet, and the
    # schedule cannot be judged (else each study drug would be "never given" until Day 1 arrives:
    # a backfill as of a past day, or a dose charted east of UTC before the UTC date turns).
    schedule = ctx if ctx.day1 is None or ctx.day1 <= as_of else replace(ctx, day1=None)
    found = (
        _ineligible_enrolled(schedule)
        + _doses(protocol, known, schedule)
        + _surgery_window(protocol, known, schedule, as_of)
        + _screening(protocol, known, schedule)
        + _followup(protocol, known, schedule, as_of)
        + _prohibited(protocol, known, schedule, as_of)
    )
    wanted = {d.code for d in protocol.deviations}
    return [f for f in found if f.rule in wanted]
