"""The cirAE cohort (CLINICAL.md, study 2) built from each patient's trial events (pure).

Decisions (each also noted where it is made):

* Time origin: ICB initiation is `service.studies.cirae.membership.cohort_membership`'s Day 1 (the earliest administration
  or order of an ICB carrying a day-precision date), so the cohort and the service agree on who is
  in the study. The protocol's membership value sets must therefore be exactly its ICB classes.
* Who is reported: a patient with no ICB at all is not in the cohort. Every ICB-treated patient is
  either a subject or an `Exclusion` with the first reason found, checked in this order: ICB only
  coarsely dated (no time origin); death without a date; death before ICB start; cirAE group
  indeterminate; dupilumab only before cirAE onset; undated dupilumab.
* Dates: a date is the interval of days it can mean ([first, last]; one day for a day or a time).
  "Known on or before a day" means last <= that day (Charlson history, stage, cancer type).
* cirAE onset: a cirAE is after ICB initiation when its whole interval is on or after ICB start
  (the ICB start day itself counts as after); its onset is then the interval's first day (a month-
  only onset on the first of that month: the earliest it can be). Wholly before → not the cirAE. An
  interval containing ICB start, or no date, makes the group indeterminate (excluded) unless another
  cirAE is known to start on or after ICB start, which is then the index cirAE.
* Dupilumab: each administration, order or statement is an exposure interval from its date's first
  day to its end's last day (no end: its date's last day, i.e. only the day or interval recorded).
  Exposure reaching cirAE onset → dupilumab group, dupilumab_start = max(exposure start, onset);
  exposure only between ICB start and onset → excluded ("dupilumab before cirAE onset": neither
  group of CLINICAL.md); exposure that ended before ICB start (and before onset) is history and
  ignored; an undated dupilumab record with no exposure reaching onset → excluded (control 1 cannot
  be shown); no cirAE → control 2 whatever dupilumab was given.
* Resolution is read from the index cirAE only: Condition.clinicalStatus, or AdverseEvent.outcome,
  looked up in the protocol's resolution table; no status, or one the table does not list → "none"
  (CLINICAL.md: "otherwise none"). Subjects without a cirAE have no resolution (None).
* Glucocorticoids: an exposure with a day-precision start counts when [start, end] overlaps
  [ICB start, the same calendar date `window_years` later] (29 Feb → 28 Feb), from max(start, ICB
  start): a course running at ICB start counts from ICB start. An open-ended order or statement (no
  end) is its start day only, so it counts only when it starts inside the window (its length is
  unknown, and assuming it ran on would date any old prescription from ICB start). An unknown route
  counts as systemic, only "local" is out; a start coarser than a day cannot time the covariate.
* Age is (ICB start − birth date) / 365.25 days; a birth date known only to the month or year is
  taken at the middle of that month or year; a birth date after ICB start (a negative age) is a data
  error and gives None.
* last_seen is the latest day-precision fact, never before ICB start: not the Patient's birth date
  (demographics), not a death, and not a request (an order, plan or proposal: its date can be a
  planned start, not a day the patient was seen); a subject who died has last_seen >= death.
* Death: the earliest dated death. A partial date (year or month) is imputed as the first day of its
  interval not before the last fact inside it: max(first, min(last fact, last)) (the patient was
  alive on their last recorded fact). A death before ICB start, or a death with no date at all
  (deceasedBoolean), excludes the patient: neither can give an OS interval from ICB start.
* Race keys on the first OMB category code (e.g. "2106-3"); without one, a display or text naming an
  OMB category (any case) maps to that category's code, other text is case-folded, so "White",
  "white" and "2106-3" are one category. Matching stays exact on that key.
* Cancer type: the latest primary malignancy (not C44 skin, not secondary C77–C79/C7B) known to be
  diagnosed on or before ICB start; else the earliest one that may be diagnosed within 90 days after
  ICB start (a diagnosis made during the ICB work-up); else "unknown". Undated diagnoses cannot be
  placed and are not used.
* Stage: the latest stage group known by ICB start, from a TNM stage-group Observation or the
  Condition.stage of a primary malignancy (the ICD-10 categories of cancer type); the stage of any
  other condition (a stage 4 pressure ulcer, stage 4 kidney disease) is never cancer stage.
* Ties (same day) are broken by the source reference, so the result does not depend on event order.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.events.observation import parse_tnm
from fhir_mapping.partial_dates import PartialDate, parse_partial_date
from service.infra.clock import shift_day
from service.studies.cirae.charlson import charlson_indices, normalise_code
from service.studies.cirae.membership import cohort_membership
from service.studies.cirae.protocol import CohortProtocol
from service.studies.cirae.records import CirAESubject, Group, IcbType, Resolution

_DRUG_KINDS = frozenset({EventKind.DRUG_ADMINISTRATION, EventKind.DRUG_EXPOSURE})
_CIRAE_KINDS = frozenset({EventKind.CONDITION, EventKind.ADVERSE_EVENT})
# Kinds that are not a day the patient was seen: the birth date, and the death (imputed from facts).
_NOT_FACTS = frozenset({EventKind.DEMOGRAPHICS, EventKind.DEATH})
_STAGE = re.compile(r"IV|III|II|I|0")
# Malignant neoplasm categories (C00–C97, and ICD-10-CM's primary neuroendocrine C7A); the ones that
# are never the cancer treated: non-melanoma skin (C44) and secondary ones (C77–C79, ICD-10-CM C7B).
_PRIMARY = re.compile(r"C(?:\d\d|7A)")
_NOT_CANCER_TYPE = frozenset({"C44", "C77", "C78", "C79", "C7B"})
# Choice: a primary cancer first diagnosed up to 90 days after ICB start is the one being treated.
_CANCER_AFTER_ICB_DAYS = 90
_DAYS_PER_YEAR = 365.25
# The five OMB race categories (US Core ombCategory, urn:oid:2.16.840.1.113883.6.238), by name.
_OMB_RACE = {
    "american indian or alaska native": "1002-5",
    "asian": "2028-9",
    "black or african american": "2054-5",
    "native hawaiian or other pacific islander": "2076-8",
    "white": "2106-3",
}


@dataclass(frozen=True, slots=True)
class CohortPatient:
    """One patient's events and the pseudonymous subject id the analysis reports."""

    patient_id: str
    subject_id: str
    events: Sequence[TrialEvent]


@dataclass(frozen=True, slots=True)
class Exclusion:
    """An ICB-treated patient left out of the analysis and why: no patient disappears silently."""

    subject_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class CohortBuild:
    """The analysis records and the ICB-treated patients excluded from them, each by subject id."""

    subjects: tuple[CirAESubject, ...]
    excluded: tuple[Exclusion, ...]


@dataclass(frozen=True, slots=True)
class _Draft:
    """A cohort subject before the batched Charlson call, with the codes that call needs."""

    subject: CirAESubject
    history_codes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Dated:
    """An event and the day the analysis gives it (cirAE onset, dupilumab start)."""

    event: TrialEvent
    day: dt.date


@dataclass(frozen=True, slots=True)
class _Span:
    """The days a drug exposure can cover, so exposure running across a boundary is seen."""

    event: TrialEvent
    first: dt.date
    last: dt.date


# -- small helpers -------------------------------------------------------------------------------


def _source_key(source: SourceRef) -> tuple[str, str, int]:
    """A total order on sources: the tiebreak that makes every choice independent of input order."""
    return source.resource_type, source.resource_id, source.version_id


def _canonical(events: Iterable[TrialEvent]) -> list[TrialEvent]:
    """Events in a fixed order, so 'first found' choices (e.g. membership's) are deterministic."""
    return sorted(
        events,
        key=lambda e: (*_source_key(e.source), e.kind.value, e.date.text if e.date else ""),
    )


def _day(event: TrialEvent) -> dt.date | None:
    """The event's day when its date is day-precision or finer."""
    return event.date.day if event.date is not None else None


def _earliest(events: Iterable[TrialEvent]) -> TrialEvent | None:
    """The event with the earliest day (dateless or coarser events cannot be placed)."""
    dated = [e for e in events if _day(e) is not None]
    return min(dated, key=lambda e: (_day(e), _source_key(e.source)), default=None)


def _first_day(events: Iterable[TrialEvent]) -> dt.date | None:
    """The earliest day among the events, or None."""
    first = _earliest(events)
    return _day(first) if first is not None else None


def _earliest_dated(found: Iterable[_Dated]) -> _Dated | None:
    """The earliest of several dated choices, ties broken by source."""
    return min(found, key=lambda d: (d.day, _source_key(d.event.source)), default=None)


def _known_on_or_before(date: PartialDate | None, day: dt.date) -> bool:
    """Whether every day the recorded date can mean is on or before `day`."""
    return date is not None and date.last <= day


def _add_years(day: dt.date, years: int) -> dt.date:
    """The same calendar date `years` later (29 Feb → 28 Feb in a common year); held at the
    calendar's ends like `shift_day`, so a window past year 9999 is open, not an error."""
    year = day.year + years
    if not dt.MINYEAR <= year <= dt.MAXYEAR:
        return dt.date.max if years > 0 else dt.date.min
    try:
        return day.replace(year=year)
    except ValueError:
        return day.replace(year=year, day=28)


def _drugs(events: Iterable[TrialEvent], valueset: str) -> list[TrialEvent]:
    """Administrations and orders/statements of a drug value set."""
    return [e for e in events if e.kind in _DRUG_KINDS and valueset in e.concept_ids]


def _span(event: TrialEvent) -> _Span | None:
    """From the date's first day to the end's (else the date's) last day; None when undated."""
    if event.date is None:
        return None
    stop = event.end if event.end is not None else event.date
    return _Span(event, event.date.first, max(event.date.first, stop.last))


def _is_request(event: TrialEvent) -> bool:
    """An order, plan or proposal: its date may be a planned start, not a day of contact."""
    return isinstance(event.values.get("intent"), str)


# -- ICB -----------------------------------------------------------------------------------------


def _check_membership(protocol: CohortProtocol) -> None:
    """ICB initiation is membership's Day 1, so membership must mean exactly 'any ICB class'."""
    classes = protocol.cohort.icb_classes
    icb = {classes.pd1, classes.pdl1, classes.ctla4}
    if set(protocol.membership.cohort_valuesets) != icb:
        raise ValueError(
            f"{protocol.id}: membership.cohort_valuesets {sorted(protocol.membership.cohort_valuesets)}"
            f" must equal the ICB classes {sorted(icb)}"
        )


def _icb_type(protocol: CohortProtocol, events: Sequence[TrialEvent], start: dt.date) -> IcbType:
    """The class started, or 'combination' when several start within the window of initiation."""
    classes = protocol.cohort.icb_classes
    limit = shift_day(start, protocol.cohort.icb_combination_window_days)
    labelled: tuple[tuple[IcbType, str], ...] = (
        ("PD-1", classes.pd1),
        ("PD-L1", classes.pdl1),
        ("CTLA-4", classes.ctla4),
    )
    started = [
        label
        for label, valueset in labelled
        if (first := _first_day(_drugs(events, valueset))) is not None and first <= limit
    ]
    if not started:
        raise ValueError(
            f"{protocol.id}: ICB started on {start} but no ICB class starts by {limit}"
        )
    return started[0] if len(started) == 1 else "combination"


# -- cirAE and dupilumab ---------------------------------------------------------------------------


def _cirae_events(protocol: CohortProtocol, events: Sequence[TrialEvent]) -> list[TrialEvent]:
    """Conditions and AdverseEvents in the protocol's cirAE value set, dated or not."""
    valueset = protocol.cohort.cirae_valueset
    return [e for e in events if e.kind in _CIRAE_KINDS and valueset in e.concept_ids]


def _index_cirae(
    protocol: CohortProtocol, events: Sequence[TrialEvent], icb_start: dt.date
) -> _Dated | None:
    """The earliest cirAE wholly on/after ICB start (if the protocol says so), at its first day."""
    after_only = protocol.cohort.cirae_onset_after_icb
    return _earliest_dated(
        _Dated(e, e.date.first)
        for e in _cirae_events(protocol, events)
        if e.date is not None and (not after_only or e.date.first >= icb_start)
    )


def _indeterminate_cirae(
    protocol: CohortProtocol, events: Sequence[TrialEvent], icb_start: dt.date
) -> str | None:
    """Why a cirAE neither before nor after ICB start leaves the group unknown, else None."""
    dates = [e.date for e in _cirae_events(protocol, events)]
    if any(date is None for date in dates):
        return "cirAE without a date: group indeterminate"
    after_only = protocol.cohort.cirae_onset_after_icb
    if after_only and any(d is not None and d.first < icb_start <= d.last for d in dates):
        return "cirAE dated only to a month or year containing ICB start: group indeterminate"
    return None


def _resolution(protocol: CohortProtocol, cirae: TrialEvent) -> Resolution:
    """The protocol's category for the cirAE's status (clinicalStatus / AE outcome); else 'none'."""
    key = "clinical_status" if cirae.kind is EventKind.CONDITION else "outcome"
    status = cirae.values.get(key)
    if not isinstance(status, str):
        return "none"
    return protocol.cohort.resolution.get(status, "none")


def _dupilumab_spans(protocol: CohortProtocol, events: Sequence[TrialEvent]) -> list[_Span]:
    """Every dated dupilumab exposure as the days it can cover."""
    given = _drugs(events, protocol.cohort.treatment_valueset)
    return [s for e in given if (s := _span(e)) is not None]


def _dupilumab(
    protocol: CohortProtocol, events: Sequence[TrialEvent], onset: dt.date
) -> _Dated | None:
    """The first dupilumab exposure reaching cirAE onset, started no earlier than onset."""
    return _earliest_dated(
        _Dated(s.event, max(s.first, onset))
        for s in _dupilumab_spans(protocol, events)
        if s.last >= onset
    )


def _dupilumab_before_onset(
    protocol: CohortProtocol, events: Sequence[TrialEvent], icb_start: dt.date, onset: dt.date
) -> bool:
    """Dupilumab between ICB start and cirAE onset: exposure CLINICAL.md's groups do not allow."""
    origin = min(icb_start, onset)
    return any(origin <= s.last < onset for s in _dupilumab_spans(protocol, events))


def _undated_dupilumab(protocol: CohortProtocol, events: Sequence[TrialEvent]) -> bool:
    """Whether a dupilumab record has no date, so control 1 ('no dupilumab') cannot be shown."""
    given = _drugs(events, protocol.cohort.treatment_valueset)
    return any(e.date is None for e in given)


def _group(cirae: _Dated | None, dupilumab: _Dated | None) -> Group:
    """dupilumab after a cirAE; a cirAE without it → control 1; no cirAE → control 2."""
    if cirae is None:
        return "control_2"
    return "dupilumab" if dupilumab is not None else "control_1"


# -- demographics ---------------------------------------------------------------------------------


def _demographics(events: Sequence[TrialEvent]) -> Mapping[str, Any]:
    """The newest Patient version's demographics (empty when the Patient is unknown)."""
    found = [e for e in events if e.kind is EventKind.DEMOGRAPHICS]
    if not found:
        return {}
    newest = max(found, key=lambda e: (e.source.version_id, _source_key(e.source)))
    return newest.values


def _text(value: Any) -> str | None:
    """A non-blank string, stripped, else None."""
    return value.strip() if isinstance(value, str) and value.strip() else None


def _race_key(label: str) -> str:
    """An OMB category name (any case) as its code, other text case-folded: one key per race."""
    folded = " ".join(label.split()).casefold()
    return _OMB_RACE.get(folded, folded)


def _race(demographics: Mapping[str, Any]) -> str | None:
    """The first OMB category code; else the first display, else the race text, as a key."""
    categories = [c for c in demographics.get("race") or () if isinstance(c, dict)]
    for category in categories:
        if (code := _text(category.get("code"))) is not None:
            return code
    for category in categories:
        if (display := _text(category.get("display"))) is not None:
            return _race_key(display)
    text = _text(demographics.get("race_text"))
    return _race_key(text) if text is not None else None


def _age_years(demographics: Mapping[str, Any], icb_start: dt.date) -> float | None:
    """Age at ICB start (month/year birth: its middle); None when unknown or negative (bad data)."""
    birth = parse_partial_date(demographics.get("birth_date"))
    if birth is None:
        return None
    middle = birth.first + (birth.last - birth.first) / 2
    days = (icb_start - middle).days
    return days / _DAYS_PER_YEAR if days >= 0 else None


# -- history: Charlson codes, cancer type, stage --------------------------------------------------


def _icd10(event: TrialEvent) -> list[str]:
    """The ICD-10 codes of a condition event."""
    return [c for c in event.values.get("icd10") or () if isinstance(c, str)]


def _history_codes(events: Sequence[TrialEvent], icb_start: dt.date) -> tuple[str, ...]:
    """ICD-10 codes of conditions known to start before ICB initiation (the Charlson input)."""
    before = shift_day(icb_start, -1)
    return tuple(
        code
        for e in events
        if e.kind is EventKind.CONDITION and _known_on_or_before(e.date, before)
        for code in _icd10(e)
    )


def _primary_category(code: str) -> str | None:
    """The 3-character category of a primary malignancy that can be the cancer type, else None."""
    category = normalise_code(code)[:3]
    if not _PRIMARY.fullmatch(category) or category in _NOT_CANCER_TYPE or category > "C97":
        return None
    return category


def _cancer_type(events: Sequence[TrialEvent], icb_start: dt.date) -> str:
    """The cancer treated: latest primary known by ICB start, else first within 90 days after."""
    dated = [
        (e.date, _source_key(e.source), category)
        for e in events
        if e.kind is EventKind.CONDITION and e.date is not None
        for code in _icd10(e)
        if (category := _primary_category(code)) is not None
    ]
    before = [d for d in dated if d[0].last <= icb_start]
    if before:
        return max(before, key=lambda d: (d[0].sort_key(), d[1], d[2]))[2]
    horizon = shift_day(icb_start, _CANCER_AFTER_ICB_DAYS)
    soon = [d for d in dated if d[0].first <= horizon]
    return min(soon, key=lambda d: (d[0].sort_key(), d[1], d[2]))[2] if soon else "unknown"


def _collapse_stage(group: Any) -> str | None:
    """'IIIA' → 'III', 'IVB' → 'IV', '0' → '0'; None when the text is not a stage group."""
    if not isinstance(group, str):
        return None
    m = _STAGE.match(group)
    return m.group(0) if m else None


def _condition_stage(event: TrialEvent) -> str | None:
    """The stage group a cancer's Condition.stage states (a pressure ulcer's stage 4 is not one)."""
    if not any(_primary_category(code) for code in _icd10(event)):
        return None
    for summary in event.values.get("stage") or ():
        if not isinstance(summary, dict):
            continue
        texts = [summary.get("text")]
        for coding in summary.get("coding") or ():
            if isinstance(coding, dict):
                texts += [coding.get("display"), coding.get("code")]
        for text in texts:
            parsed = parse_tnm(text, "stage_group") if isinstance(text, str) else None
            if parsed is not None and (stage := _collapse_stage(parsed[1])) is not None:
                return stage
    return None


def _stage_of(event: TrialEvent) -> str | None:
    """The collapsed stage group an event states: a TNM stage-group Observation or Condition.stage."""
    if event.kind is EventKind.TNM_CATEGORY and event.values.get("axis") == "stage_group":
        return _collapse_stage(event.values.get("category"))
    if event.kind is EventKind.CONDITION:
        return _condition_stage(event)
    return None


def _stage(events: Sequence[TrialEvent], icb_start: dt.date) -> str:
    """The latest stage group recorded on or before ICB start, as I–IV; 'unknown' when none."""
    staged = [
        (e.date.sort_key(), _source_key(e.source), stage)
        for e in events
        if e.date is not None
        and _known_on_or_before(e.date, icb_start)
        and (stage := _stage_of(e)) is not None
    ]
    return max(staged)[2] if staged else "unknown"


# -- follow-up: glucocorticoids, death, last data point -------------------------------------------


def _glucocorticoid_start(
    protocol: CohortProtocol, events: Sequence[TrialEvent], icb_start: dt.date
) -> dt.date | None:
    """First day of systemic glucocorticoid exposure in [ICB start, +window] (the Cox covariate)."""
    settings = protocol.cohort.glucocorticoid
    window_end = _add_years(icb_start, settings.window_years)
    starts = [
        max(s.first, icb_start)
        for e in _drugs(events, settings.valueset)
        if not (settings.systemic_only and e.values.get("route_class") == "local")
        and _day(e) is not None
        and (s := _span(e)) is not None
        and s.first <= window_end
        and s.last >= icb_start
    ]
    return min(starts, default=None)


def _last_fact(events: Sequence[TrialEvent], icb_start: dt.date) -> dt.date:
    """The latest day the patient is known to have been seen, never before ICB initiation."""
    days = [
        d
        for e in events
        if e.kind not in _NOT_FACTS and not _is_request(e) and (d := _day(e)) is not None
    ]
    return max([icb_start, *days])


def _death(events: Sequence[TrialEvent], last_fact: dt.date) -> dt.date | None:
    """The earliest dated death, a partial date imputed; None when no death has a date."""
    return min(
        (
            e.date.day_not_before(last_fact)
            for e in events
            if e.kind is EventKind.DEATH and e.date is not None
        ),
        default=None,
    )


def _undated_death(events: Sequence[TrialEvent]) -> bool:
    """Whether a death is recorded without a (readable) date, e.g. deceasedBoolean."""
    return any(e.kind is EventKind.DEATH and e.date is None for e in events)


# -- assembly ----------------------------------------------------------------------------------------


def _exclusion_reason(
    protocol: CohortProtocol,
    events: Sequence[TrialEvent],
    icb_start: dt.date,
    death: dt.date | None,
    cirae: _Dated | None,
    dupilumab: _Dated | None,
) -> str | None:
    """Why an ICB-treated patient cannot be analysed (the first reason found), else None."""
    if death is None and _undated_death(events):
        return "death recorded without a date"
    if death is not None and death < icb_start:
        return "death before ICB start"
    if cirae is None:
        return _indeterminate_cirae(protocol, events, icb_start)
    if dupilumab is None and _dupilumab_before_onset(protocol, events, icb_start, cirae.day):
        return "dupilumab before cirAE onset"
    if dupilumab is None and _undated_dupilumab(protocol, events):
        return "dupilumab without a date: group indeterminate"
    return None


def _subject(protocol: CohortProtocol, patient: CohortPatient) -> _Draft | Exclusion | None:
    """One patient as a subject (Charlson still 0) or an exclusion; None when no ICB was given."""
    events = _canonical(patient.events)
    facts = cohort_membership(protocol, events)
    if facts is None:
        return None
    if facts.day1 is None:
        return Exclusion(patient.subject_id, "ICB without a day-precision date: no time origin")
    start = facts.day1
    last_fact = _last_fact(events, start)
    death = _death(events, last_fact)
    cirae = _index_cirae(protocol, events, start)
    dupilumab = _dupilumab(protocol, events, cirae.day) if cirae is not None else None
    reason = _exclusion_reason(protocol, events, start, death, cirae, dupilumab)
    if reason is not None:
        return Exclusion(patient.subject_id, reason)
    demographics = _demographics(events)
    subject = CirAESubject(
        patient_id=patient.patient_id,
        subject_id=patient.subject_id,
        group=_group(cirae, dupilumab),
        icb_start=start,
        icb_type=_icb_type(protocol, events, start),
        sex=_text(demographics.get("gender")),
        race=_race(demographics),
        age_years=_age_years(demographics, start),
        charlson=0,
        cancer_type=_cancer_type(events, start),
        stage=_stage(events, start),
        cirae_onset=cirae.day if cirae is not None else None,
        resolution=_resolution(protocol, cirae.event) if cirae is not None else None,
        dupilumab_start=dupilumab.day if dupilumab is not None else None,
        glucocorticoid_start=_glucocorticoid_start(protocol, events, start),
        death=death,
        last_seen=max(last_fact, death) if death is not None else last_fact,
        evidence=(
            facts.evidence[0],
            *(d.event.source for d in (cirae, dupilumab) if d is not None),
        ),
    )
    return _Draft(subject, _history_codes(events, start))


def build_cohort_report(protocol: CohortProtocol, patients: Sequence[CohortPatient]) -> CohortBuild:
    """Every ICB-treated patient as a subject or a reported exclusion, by subject id."""
    _check_membership(protocol)
    dupes = sorted(i for i, n in Counter(p.subject_id for p in patients).items() if n > 1)
    if dupes:
        raise ValueError(f"duplicate subject ids: {dupes}")
    outcomes = [o for p in patients if (o := _subject(protocol, p)) is not None]
    drafts = [o for o in outcomes if isinstance(o, _Draft)]
    excluded = [o for o in outcomes if isinstance(o, Exclusion)]
    charlson = charlson_indices(
        {d.subject.subject_id: d.history_codes for d in drafts},
        protocol.cohort.charlson_weighting,
    )
    subjects = [replace(d.subject, charlson=charlson[d.subject.subject_id]) for d in drafts]
    return CohortBuild(
        subjects=tuple(sorted(subjects, key=lambda s: s.subject_id)),
        excluded=tuple(sorted(excluded, key=lambda x: x.subject_id)),
    )


def build_cohort(protocol: CohortProtocol, patients: Sequence[CohortPatient]) -> list[CirAESubject]:
    """The subjects of `build_cohort_report`, for callers that do not report exclusions."""
    return list(build_cohort_report(protocol, patients).subjects)
