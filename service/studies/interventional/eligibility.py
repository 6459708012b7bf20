"""Eligibility for an interventional protocol: each criterion met / not met / unknown, with evidence.

Pure functions over trial events: no database, no clock (the as-of day is an argument).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fhir_mapping.events.medication_exposure import exposure_span
from fhir_mapping.events.model import EventKind, TrialEvent
from fhir_mapping.events.observation import parse_tnm
from fhir_mapping.partial_dates import parse_partial_date
from service.infra.clock import shift_day
from service.studies.interventional.protocol import (
    BiopsyPlanned,
    ConditionHistory,
    Criterion,
    DriverAlteration,
    MetastaticDisease,
    NeverSmoker,
    NsclcDiagnosis,
    RecentMedication,
    ResectionPlanned,
    TCategoryAtLeast,
    TrialProtocol,
)

Verdict = Literal["met", "not_met", "unknown"]
Overall = Literal["eligible", "ineligible", "indeterminate"]


@dataclass(frozen=True, slots=True)
class Evidence:
    """A resource version that decided a verdict, and the value in it that did."""

    event: TrialEvent
    value: str

    def to_json(self) -> dict[str, Any]:
        """The wire shape: the source reference plus the deciding value."""
        return {**self.event.source.to_json(), "value": self.value}


@dataclass(frozen=True, slots=True)
class CriterionResult:
    """One criterion's verdict, why, and what data would settle it when unknown."""

    criterion: Criterion
    verdict: Verdict
    reason: str
    evidence: tuple[Evidence, ...] = ()
    missing: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire shape of one criterion."""
        c = self.criterion
        return {
            "id": c.id,
            "number": c.number,
            "type": c.type,
            "title": c.title,
            "verdict": self.verdict,
            "reason": self.reason,
            "evidence": [e.to_json() for e in self.evidence],
            "missing": self.missing,
        }


@dataclass(frozen=True)
class EligibilityResult:
    """Every criterion, and the overall status the protocol's logic gives them."""

    as_of: dt.date
    criteria: tuple[CriterionResult, ...]
    overall: Overall = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overall", overall_status(self.criteria))

    @property
    def missing(self) -> list[str]:
        """What data would settle the unknown criteria."""
        return [c.missing for c in self.criteria if c.verdict == "unknown" and c.missing]

    def counts(self) -> dict[str, int]:
        """How many criteria have each verdict."""
        return {
            v: sum(c.verdict == v for c in self.criteria) for v in ("met", "not_met", "unknown")
        }

    def to_json(self) -> dict[str, Any]:
        """The wire shape of a full result."""
        return {
            "as_of": self.as_of.isoformat(),
            "overall": self.overall,
            "counts": self.counts(),
            "criteria": [c.to_json() for c in self.criteria],
            "missing": self.missing,
        }


def overall_status(results: Sequence[CriterionResult]) -> Overall:
    """Ineligible if an exclusion is met or an inclusion is not; eligible if all are settled fine."""
    for r in results:
        if (r.criterion.type == "exclusion" and r.verdict == "met") or (
            r.criterion.type == "inclusion" and r.verdict == "not_met"
        ):
            return "ineligible"
    if all(r.verdict == ("met" if r.criterion.type == "inclusion" else "not_met") for r in results):
        return "eligible"
    return "indeterminate"


# -- helpers ---------------------------------------------------------------------------------------


def _known_date(event: TrialEvent) -> dt.date | None:
    """When a fact was known: a plan when it was written (its date is when it will happen)."""
    if event.values.get("planned") and event.source.resource_type == "ServiceRequest":
        authored = parse_partial_date(event.values.get("authored_on"))
        return authored.first if authored else None
    if event.values.get("planned"):
        return None  # a Procedure in preparation: its date is the plan's, not when it was known
    return event.date.first if event.date else None


def _known_by(events: Sequence[TrialEvent], as_of: dt.date) -> list[TrialEvent]:
    """Events known on the as-of day (undated ones cannot be placed later, so they are kept)."""
    out = []
    for e in events:
        known = _known_date(e)
        if known is None or known <= as_of:
            out.append(e)
    return out


def _of(events: Sequence[TrialEvent], kind: EventKind) -> list[TrialEvent]:
    return [e for e in events if e.kind is kind]


def _latest(events: Sequence[TrialEvent]) -> TrialEvent | None:
    dated = [e for e in events if e.date is not None]
    if dated:
        return max(
            dated,
            key=lambda e: (e.date.sort_key() if e.date else (dt.date.min,), e.source.resource_id),
        )
    return events[-1] if events else None


def _chronological(event: TrialEvent) -> tuple[Any, ...]:
    """Date order (undated last), then by source, so evidence lists do not depend on storage order."""
    when = event.date.sort_key() if event.date else (dt.date.max,)
    return (when, event.source.resource_id, event.source.version_id)


def _when(event: TrialEvent) -> str:
    return f" on {event.date.text}" if event.date else ""


def _concept_text(event: TrialEvent, concept: str) -> str:
    for match in event.concepts:
        if match.concept == concept:
            return match.code or match.text or concept
    return concept


# -- one function per rule kind --------------------------------------------------------------------


def _nsclc(c: NsclcDiagnosis, events: Sequence[TrialEvent], ref: dt.date) -> CriterionResult:
    conditions = _of(events, EventKind.CONDITION)
    nsclc = [e for e in conditions if c.nsclc_valueset in e.concept_ids]
    if nsclc:
        first = nsclc[0]
        return CriterionResult(
            c,
            "met",
            f"NSCLC recorded{_when(first)}",
            tuple(Evidence(e, _concept_text(e, c.nsclc_valueset)) for e in nsclc),
        )
    small = [e for e in conditions if c.small_cell_valueset in e.concept_ids]
    if small:
        return CriterionResult(
            c,
            "not_met",
            f"small cell lung cancer recorded{_when(small[0])}, no NSCLC",
            tuple(Evidence(e, _concept_text(e, c.small_cell_valueset)) for e in small),
        )
    lung = [e for e in conditions if c.lung_cancer_valueset in e.concept_ids]
    if lung:
        verdict: Verdict = c.lung_cancer_without_histology
        return CriterionResult(
            c,
            verdict,
            "lung cancer recorded without a histology (e.g. ICD-10 C34)",
            tuple(Evidence(e, _concept_text(e, c.lung_cancer_valueset)) for e in lung),
            "histology of the lung cancer (NSCLC or a NSCLC histology)"
            if verdict == "unknown"
            else None,
        )
    return CriterionResult(
        c,
        "unknown",
        "no lung cancer diagnosis recorded",
        (),
        "a lung cancer diagnosis with its histology",
    )


def _t_ranks(category: str, order: Sequence[str]) -> list[int]:
    """Positions in the T order a category can mean: itself, or each subcategory (T2: T2a, T2b)."""
    if category in order:
        return [order.index(category)]
    return [
        i
        for i, known in enumerate(order)
        if known.startswith(category) and known[len(category) :].isalpha()
    ]


def _pre_treatment(event: TrialEvent, ref: dt.date) -> bool:
    """Pre-treatment staging: no y (post-therapy) category, nothing known after the reference day.

    The reference day is enrollment (else Day 1): for an enrolled subject the stage that counts is
    the one at enrollment, so a ypT0 after a complete response, or a pT after Day 1, changes nothing.
    """
    if str(event.values.get("prefix") or "").startswith("y"):
        return False
    known = _known_date(event)
    return known is None or known <= ref


def _t_category(c: TCategoryAtLeast, events: Sequence[TrialEvent], ref: dt.date) -> CriterionResult:
    recorded = [e for e in _of(events, EventKind.TNM_CATEGORY) if e.values.get("axis") == "T"]
    latest = _latest([e for e in recorded if _pre_treatment(e, ref)])
    if latest is None:
        later = ", ".join(str(e.values.get("raw") or e.values.get("category")) for e in recorded)
        return CriterionResult(
            c,
            "unknown",
            f"no pre-treatment T category (post-treatment or later staging not counted: {later})"
            if later
            else "no primary tumour (T) category recorded",
            (),
            "clinical T category",
        )
    category = latest.values.get("category")
    shown = str(latest.values.get("raw") or category)
    evidence = (Evidence(latest, shown),)
    if category == "TX":
        return CriterionResult(
            c,
            c.tx,
            "primary tumour cannot be assessed (TX)",
            evidence,
            "an assessable T category" if c.tx == "unknown" else None,
        )
    if category == "T0":
        return CriterionResult(
            c,
            c.t0,
            "no evidence of primary tumour (T0)",
            evidence,
            "an assessable T category" if c.t0 == "unknown" else None,
        )
    ranks = _t_ranks(str(category), c.order) if category else []
    if not ranks:
        return CriterionResult(
            c,
            "unknown",
            f"T category {shown!r} could not be read",
            evidence,
            "a readable T category",
        )
    floor = c.order.index(c.minimum)
    if min(ranks) < floor <= max(ranks):
        subcategories = "/".join(c.order[i] for i in ranks)
        return CriterionResult(
            c,
            "unknown",
            f"{category} without its subcategory may be below {c.minimum}",
            evidence,
            f"the T subcategory ({subcategories})",
        )
    met = min(ranks) >= floor
    word = "at least" if met else "below"
    return CriterionResult(
        c, "met" if met else "not_met", f"{category} is {word} {c.minimum}", evidence
    )


def _resection(c: ResectionPlanned, events: Sequence[TrialEvent], ref: dt.date) -> CriterionResult:
    found = []
    for e in _of(events, EventKind.LUNG_RESECTION):
        from_request = e.source.resource_type == "ServiceRequest"
        if (from_request and c.accept_service_request) or (
            not from_request and e.values.get("status") in c.procedure_statuses
        ):
            found.append(e)
    if found:
        return CriterionResult(
            c,
            "met",
            f"lung resection planned or performed{_when(found[0])}",
            tuple(Evidence(e, f"{e.source.resource_type} {e.values.get('status')}") for e in found),
        )
    return CriterionResult(
        c,
        "unknown",
        "no planned or performed lung resection",
        (),
        "a planned lung resection (ServiceRequest or Procedure)",
    )


def _biopsy(c: BiopsyPlanned, events: Sequence[TrialEvent], ref: dt.date) -> CriterionResult:
    found = [
        e
        for e in _of(events, EventKind.BIOPSY)
        if e.values.get("status") not in ("not-done", "revoked")
    ]
    if found:
        return CriterionResult(
            c,
            "met",
            f"biopsy planned or done{_when(found[0])}",
            tuple(Evidence(e, f"{e.source.resource_type} {e.values.get('status')}") for e in found),
        )
    return CriterionResult(
        c, "unknown", "no biopsy planned or done", (), "a planned screening biopsy"
    )


def _condition_history(
    c: ConditionHistory, events: Sequence[TrialEvent], ref: dt.date
) -> CriterionResult:
    conditions = _of(events, EventKind.CONDITION)
    hits = [e for e in conditions if c.valueset in e.concept_ids]
    if hits:
        return CriterionResult(
            c,
            "met",
            f"{_concept_text(hits[0], c.valueset)} recorded{_when(hits[0])}",
            tuple(Evidence(e, _concept_text(e, c.valueset)) for e in hits),
        )
    if conditions:
        return CriterionResult(
            c, "not_met", f"none of {len(conditions)} recorded conditions is in {c.valueset}"
        )
    return CriterionResult(
        c, "unknown", "no conditions recorded", (), "the patient's problem list (conditions)"
    )


def _stage_groups(summary: Any) -> list[str]:
    """Stage groups a Condition.stage summary states, read from its text, displays and codes."""
    if not isinstance(summary, dict):
        return []
    texts = [summary.get("text")]
    for coding in summary.get("coding") or ():
        if isinstance(coding, dict):
            texts += [coding.get("display"), coding.get("code")]
    found = []
    for text in texts:
        parsed = parse_tnm(text, "stage_group") if isinstance(text, str) else None
        if parsed is not None:
            found.append(parsed[1])
    return found


def _distant(c: MetastaticDisease, event: TrialEvent) -> bool:
    """A distant secondary malignancy: coded so (C78–C79), or named so and not nodal (C77)."""
    found = [m for m in event.concepts if m.concept == c.condition_valueset]
    if any(m.matched_by == "code" for m in found):
        return True
    return bool(found) and c.nodal_valueset not in event.concept_ids


def _metastatic(
    c: MetastaticDisease, events: Sequence[TrialEvent], ref: dt.date
) -> CriterionResult:
    tnm = _of(events, EventKind.TNM_CATEGORY)
    m_events = [e for e in tnm if e.values.get("axis") == "M"]
    groups = [e for e in tnm if e.values.get("axis") == "stage_group"]
    hits: list[Evidence] = [
        Evidence(e, str(e.values.get("category")))
        for e in m_events
        if e.values.get("category") in c.m_categories
    ]
    hits += [
        Evidence(e, str(e.values.get("category")))
        for e in groups
        if e.values.get("category") in c.stage_groups
    ]
    for e in _of(events, EventKind.CONDITION):
        if _distant(c, e):
            hits.append(Evidence(e, _concept_text(e, c.condition_valueset)))
            continue
        if not e.concept_ids & set(c.cancer_valuesets):
            continue  # a pressure ulcer's or a kidney disease's stage is not the cancer's
        stated = [g for s in e.values.get("stage") or () for g in _stage_groups(s)]
        metastatic = [g for g in stated if g in c.stage_groups]
        if metastatic:
            hits.append(Evidence(e, f"stage {metastatic[0]}"))
    if hits:
        return CriterionResult(c, "met", f"metastatic disease: {hits[0].value}", tuple(hits))
    latest_m = _latest(m_events)
    if latest_m is not None and latest_m.values.get("category") == "M0":
        return CriterionResult(
            c, "not_met", "no distant metastasis (M0)", (Evidence(latest_m, "M0"),)
        )
    latest_group = _latest(groups)
    if latest_group is not None and latest_group.values.get("category"):
        group = str(latest_group.values["category"])
        return CriterionResult(
            c, "not_met", f"stage group {group}", (Evidence(latest_group, group),)
        )
    return CriterionResult(
        c, "unknown", "no M category or stage group recorded", (), "M category or stage group"
    )


def _driver(c: DriverAlteration, events: Sequence[TrialEvent], ref: dt.date) -> CriterionResult:
    findings = _of(events, EventKind.GENOMIC_FINDING)
    positive: list[Evidence] = []
    negative: dict[str, Evidence] = {}
    # a variant of uncertain significance, benign or likely benign is not activating: unknown
    uncertain: dict[str, Evidence] = {}
    for e in findings:
        genes = [g for g in e.values.get("genes") or () if g in c.genes]
        where = e.values.get("specimen_kind") or "specimen not stated"
        for gene in genes:
            if e.values.get("result") == "positive":
                positive.append(Evidence(e, f"{gene} positive ({where})"))
            elif e.values.get("result") == "negative":
                negative.setdefault(gene, Evidence(e, f"{gene} negative ({where})"))
            elif e.values.get("result") == "not_activating":
                said = next(
                    (m.text or m.code for m in e.concepts if m.concept == "variant_not_activating"),
                    "not activating",
                )
                uncertain.setdefault(gene, Evidence(e, f"{gene} variant: {said} ({where})"))
    if positive:
        return CriterionResult(c, "met", f"driver alteration: {positive[0].value}", tuple(positive))
    untested = [g for g in c.genes if g not in negative]
    if not untested:
        return CriterionResult(
            c,
            "not_met",
            "no driver alteration: " + ", ".join(f"{g} negative" for g in c.genes),
            tuple(negative.values()),
        )
    unclear = [g for g in untested if g in uncertain]
    missing = [g for g in untested if g not in uncertain]
    reasons = [f"{uncertain[g].value}, not an activating alteration" for g in unclear]
    if missing:
        reasons.append(f"no result for {', '.join(missing)}")
    return CriterionResult(
        c,
        "unknown",
        "; ".join(reasons),
        (*negative.values(), *(uncertain[g] for g in unclear)),
        f"{'/'.join(untested)} testing (tissue or ctDNA)",
    )


def _recent_medication(
    c: RecentMedication, events: Sequence[TrialEvent], ref: dt.date
) -> CriterionResult:
    """Exposure is an interval: a course overlapping the N days before the reference day counts.

    A partial date that may fall inside or outside the window (a year-only statement) leaves the
    criterion unknown, never met.
    """
    window = (shift_day(ref, -c.days_before_enrollment), shift_day(ref, -1))
    drugs = [
        e for e in events if e.kind in (EventKind.DRUG_ADMINISTRATION, EventKind.DRUG_EXPOSURE)
    ]
    hits: list[Evidence] = []
    maybe: list[Evidence] = []
    for e in drugs:
        matched = [v for v in c.valuesets if v in e.concept_ids]
        if not matched or (c.systemic_only and e.values.get("route_class") == "local"):
            continue
        span = exposure_span(e)
        if span is None or e.date is None:
            continue
        name = e.values.get("medication") or matched[0]
        if span.surely_overlaps(*window):
            hits.append(Evidence(e, f"{name} {(ref - e.date.first).days} days before"))
        elif span.may_overlap(*window):
            maybe.append(Evidence(e, f"{name} dated {e.date.text}"))
    if hits:
        return CriterionResult(
            c, "met", f"{hits[0].value} the reference day {ref.isoformat()}", tuple(hits)
        )
    if maybe:
        return CriterionResult(
            c,
            "unknown",
            f"{maybe[0].value} may fall in the {c.days_before_enrollment} days before "
            f"{ref.isoformat()}",
            tuple(maybe),
            "the exact dates of the listed drugs",
        )
    if drugs:
        return CriterionResult(
            c,
            "not_met",
            f"no listed drug in the {c.days_before_enrollment} days before {ref.isoformat()}",
        )
    return CriterionResult(
        c,
        "unknown",
        "no medication records",
        (),
        "medication history (orders, administrations, statements)",
    )


def _never_smoker(c: NeverSmoker, events: Sequence[TrialEvent], ref: dt.date) -> CriterionResult:
    recorded = _of(events, EventKind.SMOKING_STATUS)
    ever = [e for e in recorded if e.values.get("status") == "ever"]
    never = [e for e in recorded if e.values.get("status") == "never"]
    # Smoking history is cumulative: a "never" record, before or after, is a charting error.
    if ever:
        first = min(ever, key=_chronological)
        cited = sorted(ever + never, key=_chronological)
        reason = "current or former smoker"
        if never:
            reason += f"{_when(first)}; a never-smoker record does not erase a smoking history"
        return CriterionResult(
            c, "not_met", reason, tuple(Evidence(e, str(e.values["status"])) for e in cited)
        )
    latest = _latest(never or recorded)  # a later "unknown" does not erase a known status
    if latest is None:
        return CriterionResult(
            c, "unknown", "no smoking status recorded", (), "smoking status (LOINC 72166-2)"
        )
    status = latest.values.get("status")
    shown = str(status or "unreadable")
    if status == "never":
        return CriterionResult(c, "met", "never smoker", (Evidence(latest, shown),))
    return CriterionResult(
        c, "unknown", "smoking status unknown", (Evidence(latest, shown),), "a known smoking status"
    )


_RULES: dict[type, Callable[[Any, Sequence[TrialEvent], dt.date], CriterionResult]] = {
    NsclcDiagnosis: _nsclc,
    TCategoryAtLeast: _t_category,
    ResectionPlanned: _resection,
    BiopsyPlanned: _biopsy,
    ConditionHistory: _condition_history,
    MetastaticDisease: _metastatic,
    DriverAlteration: _driver,
    RecentMedication: _recent_medication,
    NeverSmoker: _never_smoker,
}


def reference_day(as_of: dt.date, enrolled_on: dt.date | None, day1: dt.date | None) -> dt.date:
    """The day "before enrollment" counts back from: enrollment, else Day 1, else the as-of day."""
    for day in (enrolled_on, day1):
        if day is not None and day <= as_of:
            return day
    return as_of


def evaluate(
    protocol: TrialProtocol,
    events: Sequence[TrialEvent],
    *,
    as_of: dt.date,
    enrolled_on: dt.date | None = None,
    day1: dt.date | None = None,
) -> EligibilityResult:
    """Every criterion of the protocol on the data known by the as-of day."""
    known = _known_by(events, as_of)
    ref = reference_day(as_of, enrolled_on, day1)
    return EligibilityResult(
        as_of, tuple(_RULES[type(c)](c, known, ref) for c in protocol.eligibility)
    )


def is_candidate(protocol: TrialProtocol, events: Sequence[TrialEvent], is_subject: bool) -> bool:
    """Screened: a lung-cancer (NSCLC, small cell) condition, or a ResearchSubject for the study."""
    if is_subject:
        return True
    wanted: set[str] = set()
    for c in protocol.eligibility:
        if isinstance(c, NsclcDiagnosis):
            wanted |= {c.nsclc_valueset, c.small_cell_valueset, c.lung_cancer_valueset}
    return any(e.kind is EventKind.CONDITION and e.concept_ids & wanted for e in events)
