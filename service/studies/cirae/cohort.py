"""The cirAE cohort (CLINICAL.md, study 2) built from each patient's trial events (pure).

Decisions (each also noted where it is made):

* Time origin: ICB initiation is `service.studies.cirae.membership.cohort_membership`'s Day 1 (the earliest administration
  or order of an ICB carrying a day-precision date), so the cohort and the service agree on who is
  in the study. The protocol's membership value sets must therefore be exactly its ICB classes.
* Who is reported: a patient with no ICB at all is not in the cohort. Every ICB-treated patient is
  either a subject or an `Exclusion` with the first reason found, checked in this order: ICB only
  coarsely dated (no time origin); death without a date; death before ICB start; cirAE group
  indeterminate; dupilumab that fits no group (CLINICAL.md revision 2, below).
* Dates: a date is the interval of days it can mean ([first, last]; one day for a day or a time).
  "Known on or before a day" means last <= that day (Charlson history, stage, cancer type).
* cirAE records: Conditions and AdverseEvents in the cirAE value set and not in its exclusion
  value set (radiation dermatitis L58, burns, skin infections: CLINICAL.md revision 2).
* cirAE onset is onset[x] (AdverseEvent: date, then detected); a Condition's recordedDate counts
  only when it states no onset[x] at all. An onsetAge or onsetRange is placed on the patient's own
  calendar (birth date + age: "5 years" is any day from the 5th to the 6th birthday), an onsetString
  that is a date is that date and one naming childhood is before age 18, an onsetPeriod with an end
  only is some day up to that end; any other onset cannot be placed. A Condition dated only by when
  it was charted, whose term (a code or the case-folded text) is one a record places before ICB
  start, is that pre-existing condition charted again, not a cirAE.
* cirAE timing: a cirAE is after ICB initiation when its whole onset interval is on or after ICB
  start (the ICB start day itself counts as after); its onset is then the interval's first day (a
  month-only onset on the first of that month: the earliest it can be). Wholly before → pre-existing,
  not the cirAE. An interval containing ICB start, or an onset that cannot be placed, makes the group
  indeterminate (excluded) unless another cirAE is known to start on or after ICB start, which is
  then the index cirAE.
* Dupilumab (CLINICAL.md revision 2): the dupilumab group is first given dupilumab (any
  administration, order or statement) on or after cirAE onset, from that record's first day; the
  controls never received any dupilumab, ever (control 1: cirAE; control 2: no cirAE). Any other
  dupilumab user is excluded with the reason: dupilumab without a cirAE (another indication: asthma,
  atopic dermatitis, the NCT06088771 regimen); a dupilumab record before cirAE onset (before ICB
  start included; a course running across onset started before it); a dupilumab record dated only to
  a month or year containing onset, or not dated at all (the first dose cannot be placed).
* Resolution is read from the index cirAE only: Condition.clinicalStatus, or AdverseEvent.outcome,
  looked up in the protocol's resolution table; no status, or one the table does not list → "none"
  (CLINICAL.md: "otherwise none"). Subjects without a cirAE have no resolution (None).
* Glucocorticoids (CLINICAL.md revision 2): exposure starts on the first day of a systemic course
  overlapping [ICB start, the same calendar date `window_years` later] (29 Feb → 28 Feb), from
  max(course start, ICB start): a course running at ICB start counts from ICB start. Records join
  into a course when at most `course_gap_days` apart; a course covers at least `min_course_days`
  days (**choice**: a single-day dose, antiemetic or premedication dexamethasone, is not one) or
  holds an open-ended order or statement (a course of unknown length, counted from its start day
  only, so only when it starts inside the window). A month- or year-precision order or statement is
  placed at the start of its period (**choice**, flagged on the subject); a coarsely dated
  administration is one dose. An unknown route counts as systemic, only "local" is out.
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
import functools
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fhir_mapping.events.medication_exposure import exposure_span
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.events.observation import parse_tnm
from fhir_mapping.partial_dates import PartialDate, parse_partial_date
from fhir_mapping.terminology import codings, concept_texts
from service.infra.clock import shift_day
from service.studies.cirae.charlson import charlson_indices, normalise_code
from service.studies.cirae.membership import cohort_membership
from service.studies.cirae.protocol import CohortProtocol
from service.studies.cirae.records import CirAESubject, Group, IcbType, Resolution

_DRUG_KINDS = frozenset({EventKind.DRUG_ADMINISTRATION, EventKind.DRUG_EXPOSURE})
_CIRAE_KINDS = frozenset({EventKind.CONDITION, EventKind.ADVERSE_EVENT})
# Kinds that are not a day the patient was seen: the birth date, and the death (imputed from facts).
_NOT_FACTS = frozenset({EventKind.DEMOGRAPHICS, EventKind.DEATH})
_DAY_PRECISIONS = frozenset({"day", "time"})  # a PartialDate's `day`: day-precision or finer
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
    # the latest day seen in events left out of `events` (streamed visits and lab results: they
    # count only for last_seen), None when none were left out
    seen: dt.date | None = None


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


# -- small helpers -------------------------------------------------------------------------------


def _source_key(source: SourceRef) -> tuple[str, str, int]:
    """A total order on sources: the tiebreak that makes every choice independent of input order."""
    return source.resource_type, source.resource_id, source.version_id


def _canonical_key(e: TrialEvent) -> tuple[str, str, int, str, str]:
    """A fixed order of events, so 'first found' choices (e.g. membership's) are deterministic."""
    source = e.source
    return (
        source.resource_type,
        source.resource_id,
        source.version_id,
        e.kind.value,
        e.date.text if e.date else "",
    )


@dataclass(frozen=True, slots=True)
class _ByKind:
    """A patient's events in one pass: split by the kinds each rule reads, each part in
    canonical order, with what several rules read of them worked out once.

    Sorting a part equals filtering the sorted whole (a stable sort of the same keys), so every
    rule sees what it saw when it scanned all the events; visits and lab results (most events)
    are never sorted: only the last data point reads them, a maximum taken in the same pass.
    """

    drugs: list[TrialEvent]  # administrations, orders and statements
    skin: list[TrialEvent]  # Conditions and AdverseEvents (the cirAE candidates)
    conditions: list[TrialEvent]
    staged: list[TrialEvent]  # TNM categories and Conditions (cancer stage)
    deaths: list[TrialEvent]
    demographics: list[TrialEvent]
    # the latest day-precision fact (`_last_fact` before its floor at ICB start), None if none
    latest_fact: dt.date | None = None
    # each value set's drug records, in canonical order (what `_drugs` filters out of `drugs`)
    drug_sets: Mapping[str, list[TrialEvent]] = field(default_factory=dict)


def _by_kind(events: Iterable[TrialEvent]) -> _ByKind:
    """One pass over the events (their split and the last data point), then a sort of the small
    parts the rules read and one look at each drug's value sets."""
    drugs: list[TrialEvent] = []
    skin: list[TrialEvent] = []
    staged: list[TrialEvent] = []
    deaths: list[TrialEvent] = []
    demographics: list[TrialEvent] = []
    latest: dt.date | None = None
    for e in events:
        kind = e.kind
        date = e.date
        # the last data point (`_last_fact`): the cheap tests first, most events are not later days
        if (
            date is not None
            and date.precision in _DAY_PRECISIONS
            and (latest is None or date.first > latest)
            and kind not in _NOT_FACTS
            and not _is_request(e)
        ):
            latest = date.first
        if kind is EventKind.DATA_POINT or kind is EventKind.ENCOUNTER:
            continue  # read only for the last data point
        if kind in _DRUG_KINDS:
            drugs.append(e)
        elif kind is EventKind.CONDITION:
            skin.append(e)
            staged.append(e)
        elif kind is EventKind.ADVERSE_EVENT:
            skin.append(e)
        elif kind is EventKind.TNM_CATEGORY:
            staged.append(e)
        elif kind is EventKind.DEATH:
            deaths.append(e)
        elif kind is EventKind.DEMOGRAPHICS:
            demographics.append(e)
    skin.sort(key=_canonical_key)
    drugs.sort(key=_canonical_key)
    drug_sets: dict[str, list[TrialEvent]] = {}
    for e in drugs:
        for concept in dict.fromkeys(c.concept for c in e.concepts):
            drug_sets.setdefault(concept, []).append(e)
    return _ByKind(
        drugs=drugs,
        skin=skin,
        conditions=[e for e in skin if e.kind is EventKind.CONDITION],
        staged=sorted(staged, key=_canonical_key),
        deaths=sorted(deaths, key=_canonical_key),
        demographics=sorted(demographics, key=_canonical_key),
        latest_fact=latest,
        drug_sets=drug_sets,
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
    return [
        e
        for e in events
        if e.kind in _DRUG_KINDS and any(c.concept == valueset for c in e.concepts)
    ]


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


def _drug_sets(events: Iterable[TrialEvent]) -> Mapping[str, list[TrialEvent]]:
    """Each value set's drug records among the events (`_by_kind`'s `drug_sets`)."""
    return _by_kind(events).drug_sets


def _icb_type(protocol: CohortProtocol, events: Sequence[TrialEvent], start: dt.date) -> IcbType:
    """The class started, or 'combination' when several start within the window of initiation."""
    return _icb_type_of(protocol, _drug_sets(events), start)


def _icb_type_of(
    protocol: CohortProtocol, drug_sets: Mapping[str, Sequence[TrialEvent]], start: dt.date
) -> IcbType:
    """`_icb_type` from the drug records by value set."""
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
        if (first := _first_day(drug_sets.get(valueset, ()))) is not None and first <= limit
    ]
    if not started:
        raise ValueError(
            f"{protocol.id}: ICB started on {start} but no ICB class starts by {limit}"
        )
    return started[0] if len(started) == 1 else "combination"


# -- cirAE and dupilumab ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Skin:
    """A record in the cirAE value set and the days its onset can mean (None: cannot be placed)."""

    event: TrialEvent
    onset: tuple[dt.date, dt.date] | None
    charted_only: bool  # a Condition with no onset[x]: dated by its recordedDate alone


def _shift_years(day: dt.date, years: float) -> dt.date:
    """`day` plus a (fractional) number of years of 365.25 days, held at the calendar's ends."""
    return shift_day(day, round(years * _DAYS_PER_YEAR))


def _days_of(date: PartialDate | None) -> tuple[dt.date, dt.date] | None:
    """The first and last day a recorded date can mean."""
    return (date.first, date.last) if date is not None else None


def _onset_days(event: TrialEvent, birth: PartialDate | None) -> tuple[dt.date, dt.date] | None:
    """When a skin record began: onset[x] (an age on the patient's own calendar), else the date.

    CLINICAL.md: onset is onset[x] (or AdverseEvent.date); recordedDate only when no onset exists.
    """
    if event.kind is not EventKind.CONDITION or "onset" not in event.values:
        return _days_of(event.date)  # AdverseEvent: date, detected, then recordedDate
    onset = event.values["onset"]
    if not isinstance(onset, dict):  # no onset[x]: the charted date is all there is
        return _days_of(event.date)
    start = parse_partial_date(onset.get("start"))
    if start is not None:
        same = event.date is not None and event.date.text == start.text
        return _days_of(event.date if same else start)
    end = parse_partial_date(onset.get("end"))
    if end is not None:  # a Period with an end only: some day up to that end
        return dt.date.min, end.last
    ages = onset.get("age_years")
    if isinstance(ages, list) and len(ages) == 2 and birth is not None:
        low, high = ages
        first = _shift_years(birth.first, low) if isinstance(low, int | float) else birth.first
        last = (
            shift_day(_shift_years(birth.last, high), -1)
            if isinstance(high, int | float)
            else dt.date.max
        )
        return first, max(first, last)
    return None  # an onset that cannot be placed (text, or an age without a birth date)


def _term_keys(event: TrialEvent) -> frozenset[tuple[str, ...]]:
    """A skin record's term as codes and case-folded texts (two records share a term if any key)."""
    concept = event.values.get("code" if event.kind is EventKind.CONDITION else "term")
    keys: set[tuple[str, ...]] = set()
    for coding in codings(concept):
        system, code = coding.get("system"), coding.get("code")
        if isinstance(system, str) and isinstance(code, str):
            keys.add(("code", system, code.strip()))
    keys.update(("text", " ".join(t.split()).casefold()) for t in concept_texts(concept))
    return frozenset(keys)


def _cirae_records(
    protocol: CohortProtocol,
    events: Sequence[TrialEvent],
    icb_start: dt.date,
    birth: PartialDate | None,
) -> list[_Skin]:
    """Skin records that can be a cirAE, dated or not.

    Out: terms of the exclusion value set (radiation dermatitis, burns, skin infections), and a
    Condition dated only by when it was charted whose term is one already known before ICB start
    (pre-existing atopic dermatitis charted again after ICB start is the same old condition).
    """
    wanted = protocol.cohort.cirae_valueset
    unwanted = protocol.cohort.cirae_exclusion_valueset
    records = [
        _Skin(
            e,
            _onset_days(e, birth),
            e.kind is EventKind.CONDITION and e.values.get("onset", {}) is None,
        )
        for e in events
        if e.kind in _CIRAE_KINDS and wanted in e.concept_ids and unwanted not in e.concept_ids
    ]
    known_before = {
        key
        for r in records
        if r.onset is not None and r.onset[1] < icb_start
        for key in _term_keys(r.event)
    }
    return [r for r in records if not (r.charted_only and _term_keys(r.event) & known_before)]


def _index_cirae(
    protocol: CohortProtocol, records: Sequence[_Skin], icb_start: dt.date
) -> _Dated | None:
    """The earliest cirAE wholly on/after ICB start (if the protocol says so), at its first day."""
    after_only = protocol.cohort.cirae_onset_after_icb
    return _earliest_dated(
        _Dated(r.event, r.onset[0])
        for r in records
        if r.onset is not None and (not after_only or r.onset[0] >= icb_start)
    )


def _indeterminate_cirae(
    protocol: CohortProtocol, records: Sequence[_Skin], icb_start: dt.date
) -> str | None:
    """Why a cirAE neither before nor after ICB start leaves the group unknown, else None."""
    if any(r.onset is None for r in records):
        return "cirAE without a date: group indeterminate"
    after_only = protocol.cohort.cirae_onset_after_icb
    if after_only and any(r.onset and r.onset[0] < icb_start <= r.onset[1] for r in records):
        return "cirAE dated only to a month or year containing ICB start: group indeterminate"
    return None


_RESOLUTION_RANK: dict[Resolution, int] = {"none": 0, "partial": 1, "complete": 2}


@dataclass(frozen=True, slots=True)
class _Status:
    """The resolution a record states, and the day it stated it."""

    resolution: Resolution
    day: dt.date
    event: TrialEvent


def _stated(protocol: CohortProtocol, record: _Skin) -> _Status | None:
    """What one record says of the episode: its status and the latest day it is dated by.

    A Condition's clinicalStatus or an AdverseEvent's outcome, through the protocol's tables (a
    status they do not list: none); a record without a status says nothing. Its day is the latest
    of its abatement / resolution date, the day it was charted and its onset.
    """
    event = record.event
    tables = protocol.cohort.resolution
    if event.kind is EventKind.CONDITION:
        status, table = event.values.get("clinical_status"), tables.clinical_status
    else:
        status, table = event.values.get("outcome"), tables.adverse_event_outcome
    if not isinstance(status, str) or record.onset is None:
        return None
    days = [record.onset[0]]
    days += [
        d.first for d in (event.end, parse_partial_date(event.values.get("recorded_date"))) if d
    ]
    return _Status(table.get(status, "none"), max(days), event)


def _resolution(
    protocol: CohortProtocol, records: Sequence[_Skin], index: _Dated
) -> _Status | None:
    """The latest status of the index cirAE episode (CLINICAL.md revision 2), None if none stated.

    The episode is every cirAE record starting on or after the index onset (the index and later
    records of the same or another cirAE term). The latest stated status wins; records stating
    theirs on the same day: the furthest resolution (a resolution charted that day is news).
    """
    stated = [
        status
        for r in records
        if r.onset is not None
        and r.onset[0] >= index.day
        and (status := _stated(protocol, r)) is not None
    ]
    return max(
        stated,
        key=lambda s: (s.day, _RESOLUTION_RANK[s.resolution], _source_key(s.event.source)),
        default=None,
    )


def _dupilumab_group(
    protocol: CohortProtocol, events: Sequence[TrialEvent], onset: dt.date | None
) -> tuple[_Dated | None, str | None]:
    """The first dupilumab record when it comes on/after cirAE onset, else why no group fits.

    CLINICAL.md: the dupilumab group is first given dupilumab after cirAE onset; the controls
    never received any dupilumab (before ICB start included); everyone else is excluded.
    """
    given = _drugs(events, protocol.cohort.treatment_valueset)
    if not given:
        return None, None
    if onset is None:
        return None, "dupilumab without a cirAE (another indication)"
    dates = [e.date for e in given]
    if any(d is None for d in dates):
        return None, "dupilumab without a date: group indeterminate"
    if any(d is not None and d.last < onset for d in dates):
        return None, "dupilumab before cirAE onset"
    if any(d is not None and d.first < onset for d in dates):
        return None, (
            "dupilumab dated only to a month or year containing cirAE onset: group indeterminate"
        )
    return _earliest_dated(_Dated(e, e.date.first) for e in given if e.date is not None), None


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


@functools.lru_cache(maxsize=4096)
def _primary_category(code: str) -> str | None:
    """The 3-character category of a primary malignancy that can be the cancer type, else None
    (pure, remembered: the history, the cancer type and the stage each ask it of every code)."""
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


@dataclass(frozen=True, slots=True)
class _Course:
    """Days of glucocorticoid exposure joined from records (a course, or a single dose)."""

    first: dt.date
    last: dt.date
    open_ended: bool  # an order or statement with no end: a course of unknown length
    coarse: str | None  # the precision of a month- or year-dated record in it


@dataclass(frozen=True, slots=True)
class GlucocorticoidExposure:
    """When systemic glucocorticoid exposure starts in the window, and how sure that day is."""

    start: dt.date | None
    flag: str | None = None


def _gc_spans(protocol: CohortProtocol, events: Sequence[TrialEvent]) -> list[_Course]:
    """Each systemic glucocorticoid record as the days it covers (not yet joined into courses).

    An administration is its day (or its effectivePeriod); an order or statement runs from its
    start to its end (or for its course length: boundsDuration, expected supply), or is its start
    day only when open-ended (its length is unknown, and assuming
    it ran on would date any old prescription from ICB start). A month- or year-precision record is
    placed at the start of its period (**choice**, flagged) and covers that period; a coarsely dated
    administration is one dose on an unknown day and never a course.
    """
    settings = protocol.cohort.glucocorticoid
    spans: list[_Course] = []
    for e in _drugs(events, settings.valueset):
        if settings.systemic_only and e.values.get("route_class") == "local":
            continue
        if e.date is None:
            continue
        administered = e.kind is EventKind.DRUG_ADMINISTRATION
        coarse = e.date.precision if e.date.day is None else None
        if coarse is not None and (administered or settings.coarse_dates == "ignore"):
            continue
        span = exposure_span(e)  # its end, or its course length (boundsDuration, supply)
        course = e.values.get("course_days")
        bounded = e.end is not None or (isinstance(course, int) and not isinstance(course, bool))
        open_ended = not administered and not bounded
        if bounded and span is not None:
            last = max(e.date.first, span.latest_end)
        else:
            last = e.date.last if coarse is not None else e.date.first
        spans.append(_Course(e.date.first, last, open_ended, coarse))
    return spans


def _courses(spans: Sequence[_Course], gap_days: int) -> list[_Course]:
    """Spans joined when the next starts at most `gap_days` after the last day so far."""
    joined: list[_Course] = []
    for span in sorted(spans, key=lambda c: (c.first, c.last)):
        if joined and (span.first - joined[-1].last).days <= gap_days:
            current = joined[-1]
            joined[-1] = _Course(
                current.first,
                max(current.last, span.last),
                current.open_ended or span.open_ended,
                current.coarse or span.coarse,
            )
        else:
            joined.append(span)
    return joined


def glucocorticoid_exposure(
    protocol: CohortProtocol, events: Sequence[TrialEvent], icb_start: dt.date
) -> GlucocorticoidExposure:
    """First day of a systemic glucocorticoid course in [ICB start, +window] (the Cox covariate).

    CLINICAL.md revision 2: exposure starts at the first day of a course; a single-day dose is not
    a course (**choice**: `min_course_days`); a course running at ICB start counts from ICB start.
    """
    settings = protocol.cohort.glucocorticoid
    window_end = _add_years(icb_start, settings.window_years)
    courses = [
        c
        for c in _courses(_gc_spans(protocol, events), settings.course_gap_days)
        if (c.open_ended or (c.last - c.first).days + 1 >= settings.min_course_days)
        and c.first <= window_end
        and c.last >= icb_start
    ]
    first = min(
        courses, key=lambda c: (max(c.first, icb_start), c.coarse is not None), default=None
    )
    if first is None:
        return GlucocorticoidExposure(None)
    flag = (
        f"a {first.coarse}-precision record placed at the start of its period"
        if first.coarse is not None
        else None
    )
    return GlucocorticoidExposure(max(first.first, icb_start), flag)


def _last_fact(events: Sequence[TrialEvent], icb_start: dt.date) -> dt.date:
    """The latest day the patient is known to have been seen, never before ICB initiation."""
    latest = icb_start
    for e in events:  # one pass, the cheap tests first: most events are not later days
        day = e.date.day if e.date is not None else None
        if day is not None and day > latest and e.kind not in _NOT_FACTS and not _is_request(e):
            latest = day
    return latest


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
    records: Sequence[_Skin],
    icb_start: dt.date,
    death: dt.date | None,
    cirae: _Dated | None,
    dupilumab_reason: str | None,
) -> str | None:
    """Why an ICB-treated patient cannot be analysed (the first reason found), else None."""
    if death is None and _undated_death(events):
        return "death recorded without a date"
    if death is not None and death < icb_start:
        return "death before ICB start"
    if cirae is None and (indeterminate := _indeterminate_cirae(protocol, records, icb_start)):
        return indeterminate
    return dupilumab_reason


def _subject(protocol: CohortProtocol, patient: CohortPatient) -> _Draft | Exclusion | None:
    """One patient as a subject (Charlson still 0) or an exclusion; None when no ICB was given."""
    parts = _by_kind(patient.events)  # the one pass over every event
    facts = cohort_membership(protocol, parts.drugs)
    if facts is None:
        return None
    if facts.day1 is None:
        return Exclusion(patient.subject_id, "ICB without a day-precision date: no time origin")
    start = facts.day1
    drug_sets = parts.drug_sets
    # `_last_fact`: the latest fact, in the events or the days seen left out of them, never
    # before ICB start
    last_fact = max(
        (d for d in (start, parts.latest_fact, patient.seen) if d is not None), default=start
    )
    death = _death(parts.deaths, last_fact)
    demographics = _demographics(parts.demographics)
    birth = parse_partial_date(demographics.get("birth_date"))
    records = _cirae_records(protocol, parts.skin, start, birth)
    cirae = _index_cirae(protocol, records, start)
    dupilumab, dupilumab_reason = _dupilumab_group(
        protocol,
        drug_sets.get(protocol.cohort.treatment_valueset, []),
        cirae.day if cirae is not None else None,
    )
    reason = _exclusion_reason(
        protocol, parts.deaths, records, start, death, cirae, dupilumab_reason
    )
    if reason is not None:
        return Exclusion(patient.subject_id, reason)
    status = _resolution(protocol, records, cirae) if cirae is not None else None
    glucocorticoids = glucocorticoid_exposure(
        protocol, drug_sets.get(protocol.cohort.glucocorticoid.valueset, []), start
    )
    resolved = status is not None and status.resolution != "none"
    subject = CirAESubject(
        patient_id=patient.patient_id,
        subject_id=patient.subject_id,
        group=_group(cirae, dupilumab),
        icb_start=start,
        icb_type=_icb_type_of(protocol, drug_sets, start),
        sex=_text(demographics.get("gender")),
        race=_race(demographics),
        age_years=_age_years(demographics, start),
        charlson=0,
        cancer_type=_cancer_type(parts.conditions, start),
        stage=_stage(parts.staged, start),
        cirae_onset=cirae.day if cirae is not None else None,
        resolution=(status.resolution if status else "none") if cirae is not None else None,
        dupilumab_start=dupilumab.day if dupilumab is not None else None,
        glucocorticoid_start=glucocorticoids.start,
        glucocorticoid_flag=glucocorticoids.flag,
        death=death,
        last_seen=max(last_fact, death) if death is not None else last_fact,
        evidence=tuple(
            dict.fromkeys(
                (
                    facts.evidence[0],
                    *(d.event.source for d in (cirae, dupilumab) if d is not None),
                    *((status.event.source,) if status is not None else ()),
                )
            )
        ),
        resolution_date=status.event.end.first
        if status is not None and resolved and status.event.end is not None
        else None,
    )
    return _Draft(subject, _history_codes(parts.conditions, start))


@dataclass(frozen=True, slots=True)
class PatientOutcome:
    """One patient's part of the cohort, from its events alone (before the batched Charlson call):
    a subject draft, an exclusion, or None (no ICB). Holds no events."""

    subject_id: str
    outcome: _Draft | Exclusion | None

    @property
    def subject(self) -> CirAESubject | None:
        """The subject (Charlson still 0), when the patient is one."""
        return self.outcome.subject if isinstance(self.outcome, _Draft) else None


def patient_outcome(protocol: CohortProtocol, patient: CohortPatient) -> PatientOutcome:
    """What the cohort keeps of one patient (pure; the patient's events can be dropped after)."""
    return PatientOutcome(patient.subject_id, _subject(protocol, patient))


def _check_unique(subject_ids: Sequence[str]) -> None:
    """A subject id names one patient: the report is keyed on it."""
    dupes = sorted(i for i, n in Counter(subject_ids).items() if n > 1)
    if dupes:
        raise ValueError(f"duplicate subject ids: {dupes}")


def assemble_cohort(protocol: CohortProtocol, patients: Sequence[PatientOutcome]) -> CohortBuild:
    """The cohort from every patient's outcome: Charlson indices, subjects and exclusions by id."""
    _check_membership(protocol)
    _check_unique([p.subject_id for p in patients])
    outcomes = [p.outcome for p in patients if p.outcome is not None]
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


def build_cohort_report(protocol: CohortProtocol, patients: Sequence[CohortPatient]) -> CohortBuild:
    """Every ICB-treated patient as a subject or a reported exclusion, by subject id."""
    _check_membership(protocol)
    _check_unique([p.subject_id for p in patients])  # before any patient's rules run
    return assemble_cohort(protocol, [patient_outcome(protocol, p) for p in patients])


def build_cohort(protocol: CohortProtocol, patients: Sequence[CohortPatient]) -> list[CirAESubject]:
    """The subjects of `build_cohort_report`, for callers that do not report exclusions."""
    return list(build_cohort_report(protocol, patients).subjects)
