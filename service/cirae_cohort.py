"""The cirAE cohort (CLINICAL.md, study 2) built from each patient's trial events (pure).

Decisions (each also noted where it is made):

* Time origin: ICB initiation is `membership.cohort_membership`'s Day 1 (the earliest administration
  or order of an ICB carrying a day-precision date), so the cohort and the service agree on who is
  in the study. The protocol's membership value sets must therefore be exactly its ICB classes.
* Timing uses day-precision dates only (a month or a year cannot say whether it falls before or
  after a day), except "known to be before/on a day": a coarser date counts when its last possible
  day is before/on that day (Charlson history, stage).
* cirAE onset on the ICB start day counts as after initiation; dupilumab on the cirAE onset day
  counts as after onset.
* Resolution is read from the index cirAE only: Condition.clinicalStatus, or AdverseEvent.outcome,
  looked up in the protocol's resolution table; no status, or one the table does not list → "none"
  (CLINICAL.md: "otherwise none"). Subjects without a cirAE have no resolution (None).
* Glucocorticoid exposure starts on or after ICB initiation and no later than the same calendar date
  `window_years` later (29 Feb → 28 Feb); an unknown route counts as systemic, only "local" is out.
* Age is (ICB start − birth date) / 365.25 days; a birth date known only to the month or year is
  taken at the middle of that month or year.
* last_seen is the latest start date of any event, never before ICB initiation; a death with no
  day-precision date leaves `death` None (the subject is then censored at last_seen).
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
from service.charlson import charlson_indices, normalise_code
from service.cirae_model import CirAESubject, Group, IcbType, Resolution
from service.membership import cohort_membership
from service.protocol import CohortProtocol

_DRUG_KINDS = frozenset({EventKind.DRUG_ADMINISTRATION, EventKind.DRUG_EXPOSURE})
_CIRAE_KINDS = frozenset({EventKind.CONDITION, EventKind.ADVERSE_EVENT})
_STAGE = re.compile(r"IV|III|II|I|0")
# Malignant neoplasm categories (C00–C97, and ICD-10-CM's primary neuroendocrine C7A) and the
# secondary ones that are never the primary cancer (C77–C79, and ICD-10-CM's secondary C7B).
_PRIMARY = re.compile(r"C(?:\d\d|7A)")
_SECONDARY = frozenset({"C77", "C78", "C79", "C7B"})
_DAYS_PER_YEAR = 365.25


@dataclass(frozen=True, slots=True)
class CohortPatient:
    """One patient's events and the pseudonymous subject id the analysis reports."""

    patient_id: str
    subject_id: str
    events: Sequence[TrialEvent]


@dataclass(frozen=True, slots=True)
class _Draft:
    """A cohort subject before the batched Charlson call, with the codes that call needs."""

    subject: CirAESubject
    history_codes: tuple[str, ...]


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


def _known_on_or_before(date: PartialDate | None, day: dt.date) -> bool:
    """Whether every day the recorded date can mean is on or before `day`."""
    return date is not None and date.last <= day


def _add_years(day: dt.date, years: int) -> dt.date:
    """The same calendar date `years` later (29 Feb → 28 Feb in a common year)."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def _drugs(events: Iterable[TrialEvent], valueset: str) -> list[TrialEvent]:
    """Administrations and orders/statements of a drug value set."""
    return [e for e in events if e.kind in _DRUG_KINDS and valueset in e.concept_ids]


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
    limit = start + dt.timedelta(days=protocol.cohort.icb_combination_window_days)
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
    assert started, "ICB initiation is an ICB-class event, so one class always starts"
    return started[0] if len(started) == 1 else "combination"


# -- cirAE and dupilumab ---------------------------------------------------------------------------


def _index_cirae(
    protocol: CohortProtocol, events: Sequence[TrialEvent], icb_start: dt.date
) -> TrialEvent | None:
    """The earliest cirAE (Condition or AdverseEvent), on or after ICB start when the protocol says so."""
    candidates = [
        e
        for e in events
        if e.kind in _CIRAE_KINDS
        and protocol.cohort.cirae_valueset in e.concept_ids
        and (day := _day(e)) is not None
        and (not protocol.cohort.cirae_onset_after_icb or day >= icb_start)
    ]
    return _earliest(candidates)


def _resolution(protocol: CohortProtocol, cirae: TrialEvent) -> Resolution:
    """The protocol's category for the cirAE's status (clinicalStatus / AE outcome); else 'none'."""
    key = "clinical_status" if cirae.kind is EventKind.CONDITION else "outcome"
    status = cirae.values.get(key)
    if not isinstance(status, str):
        return "none"
    return protocol.cohort.resolution.get(status, "none")


def _dupilumab(
    protocol: CohortProtocol, events: Sequence[TrialEvent], onset: dt.date
) -> TrialEvent | None:
    """The first dupilumab administration or order on or after cirAE onset."""
    given = _drugs(events, protocol.cohort.treatment_valueset)
    return _earliest(e for e in given if (day := _day(e)) is not None and day >= onset)


def _group(cirae: TrialEvent | None, dupilumab: TrialEvent | None) -> Group:
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
    """A non-blank string, else None."""
    return value if isinstance(value, str) and value.strip() else None


def _race(demographics: Mapping[str, Any]) -> str | None:
    """The first OMB race category (display, else code), else the race text."""
    for category in demographics.get("race") or ():
        if isinstance(category, dict):
            label = _text(category.get("display")) or _text(category.get("code"))
            if label is not None:
                return label
    return _text(demographics.get("race_text"))


def _age_years(demographics: Mapping[str, Any], icb_start: dt.date) -> float | None:
    """Age at ICB start; a month- or year-only birth date is taken at its middle."""
    birth = parse_partial_date(demographics.get("birth_date"))
    if birth is None:
        return None
    middle = birth.first + (birth.last - birth.first) / 2
    return (icb_start - middle).days / _DAYS_PER_YEAR


# -- history: Charlson codes, cancer type, stage --------------------------------------------------


def _icd10(event: TrialEvent) -> list[str]:
    """The ICD-10 codes of a condition event."""
    return [c for c in event.values.get("icd10") or () if isinstance(c, str)]


def _history_codes(events: Sequence[TrialEvent], icb_start: dt.date) -> tuple[str, ...]:
    """ICD-10 codes of conditions known to start before ICB initiation (the Charlson input)."""
    before = icb_start - dt.timedelta(days=1)
    return tuple(
        code
        for e in events
        if e.kind is EventKind.CONDITION and _known_on_or_before(e.date, before)
        for code in _icd10(e)
    )


def _primary_category(code: str) -> str | None:
    """The 3-character category of a primary malignancy code (C00–C97 without C77–C79)."""
    category = normalise_code(code)[:3]
    if not _PRIMARY.fullmatch(category) or category in _SECONDARY or category > "C97":
        return None
    return category


def _cancer_type(events: Sequence[TrialEvent]) -> str:
    """The earliest-diagnosed primary malignancy's ICD-10 category; 'unknown' when there is none."""
    found = [
        (e.date.first if e.date else dt.date.max, category)  # undated diagnoses go last
        for e in events
        if e.kind is EventKind.CONDITION
        for code in _icd10(e)
        if (category := _primary_category(code)) is not None
    ]
    return min(found)[1] if found else "unknown"


def _collapse_stage(group: Any) -> str | None:
    """'IIIA' → 'III', 'IVB' → 'IV', '0' → '0'; None when the text is not a stage group."""
    if not isinstance(group, str):
        return None
    m = _STAGE.match(group)
    return m.group(0) if m else None


def _condition_stage(event: TrialEvent) -> str | None:
    """The stage group a Condition.stage summary states (its text, displays, then codes)."""
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
    """First systemic glucocorticoid from ICB start to `window_years` later (the Cox covariate)."""
    settings = protocol.cohort.glucocorticoid
    end = _add_years(icb_start, settings.window_years)
    given = [
        e
        for e in _drugs(events, settings.valueset)
        if not (settings.systemic_only and e.values.get("route_class") == "local")
        and (day := _day(e)) is not None
        and icb_start <= day <= end
    ]
    return _first_day(given)


def _death(events: Sequence[TrialEvent]) -> dt.date | None:
    """The recorded day of death (a death without a day cannot end an OS interval)."""
    return _first_day(e for e in events if e.kind is EventKind.DEATH)


def _last_seen(events: Sequence[TrialEvent], icb_start: dt.date) -> dt.date:
    """The latest day any event happened, never before ICB initiation (OS censoring)."""
    days = [d for e in events if (d := _day(e)) is not None]
    return max([icb_start, *days])


# -- assembly ----------------------------------------------------------------------------------------


def _subject(protocol: CohortProtocol, patient: CohortPatient) -> _Draft | None:
    """Everything about one patient, Charlson still 0; None when no ICB was started."""
    events = _canonical(patient.events)
    facts = cohort_membership(protocol, events)
    if facts is None or facts.day1 is None:
        return None
    start = facts.day1
    cirae = _index_cirae(protocol, events, start)
    onset = _day(cirae) if cirae is not None else None
    dupilumab = _dupilumab(protocol, events, onset) if onset is not None else None
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
        cancer_type=_cancer_type(events),
        stage=_stage(events, start),
        cirae_onset=onset,
        resolution=_resolution(protocol, cirae) if cirae is not None else None,
        dupilumab_start=_day(dupilumab) if dupilumab is not None else None,
        glucocorticoid_start=_glucocorticoid_start(protocol, events, start),
        death=_death(events),
        last_seen=_last_seen(events, start),
        evidence=(facts.evidence[0], *(e.source for e in (cirae, dupilumab) if e is not None)),
    )
    return _Draft(subject, _history_codes(events, start))


def build_cohort(protocol: CohortProtocol, patients: Sequence[CohortPatient]) -> list[CirAESubject]:
    """Every ICB-treated patient as an analysis record, sorted by subject id (one Charlson batch)."""
    _check_membership(protocol)
    dupes = sorted(i for i, n in Counter(p.subject_id for p in patients).items() if n > 1)
    if dupes:
        raise ValueError(f"duplicate subject ids: {dupes}")
    drafts = [d for p in patients if (d := _subject(protocol, p)) is not None]
    charlson = charlson_indices(
        {d.subject.subject_id: d.history_codes for d in drafts},
        protocol.cohort.charlson_weighting,
    )
    subjects = [replace(d.subject, charlson=charlson[d.subject.subject_id]) for d in drafts]
    return sorted(subjects, key=lambda s: s.subject_id)
