"""The cirAE episodes and glucocorticoid exposure described by group (pure).

Read from the analysis records (service.studies.cirae.cohort) and each patient's events:

* The index cirAE is the cirAE record (Condition or AdverseEvent in the protocol's cirAE value set)
  whose date starts on the subject's cirAE onset (ties: the first by source), as the cohort chose
  it. Its term is the code's text, else the first display, else the code (an AdverseEvent: its
  term text). Its grade is the highest CTCAE grade among the patient's cirAE records starting on
  or after the onset (the episode), "ungraded" when none carries one.
* Times are whole days: ICB initiation → onset; onset → first dupilumab; dupilumab duration = last
  day of any dupilumab exposure reaching the first dose − the first dose day (0 for one dose);
  onset → resolution = the resolution date the cohort found (the end, abatement or AdverseEvent
  resolution date, of the record stating the episode's latest status: CLINICAL.md revision 2) −
  onset, for a complete or partial resolution with such a date (counted apart otherwise).
* Summaries: n, median, quartiles (R type 7), range (service.stats.balance).
* Glucocorticoids: systemic exposure within the protocol's window as the Cox models use it (the
  subject's first exposure day); timing from ICB initiation, and before or on/after cirAE onset.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_mapping.events.model import EventKind, TrialEvent
from service.stats.balance import continuous_summary
from service.studies.cirae.labels import group_label
from service.studies.cirae.protocol import CohortProtocol
from service.studies.cirae.records import CirAESubject

GROUPS = ("dupilumab", "control_1", "control_2")
CIRAE_GROUPS = ("dupilumab", "control_1")
_CIRAE_KINDS = frozenset({EventKind.CONDITION, EventKind.ADVERSE_EVENT})
_DRUG_KINDS = frozenset({EventKind.DRUG_ADMINISTRATION, EventKind.DRUG_EXPOSURE})
GRADES = ("1", "2", "3", "4", "5", "ungraded")


def summary(values: Sequence[float]) -> dict[str, Any]:
    """n, median, quartiles and range (None when there are no values)."""
    s = continuous_summary(values, 0)
    return {
        "n": s.n,
        "median": s.median,
        "q1": s.q1,
        "q3": s.q3,
        "min": s.minimum,
        "max": s.maximum,
    }


def _source_key(event: TrialEvent) -> tuple[str, str, int]:
    return event.source.resource_type, event.source.resource_id, event.source.version_id


def _cirae_records(protocol: CohortProtocol, events: Sequence[TrialEvent]) -> list[TrialEvent]:
    valueset = protocol.cohort.cirae_valueset
    unwanted = protocol.cohort.cirae_exclusion_valueset  # radiation dermatitis, burns, infections
    return [
        e
        for e in events
        if e.kind in _CIRAE_KINDS and valueset in e.concept_ids and unwanted not in e.concept_ids
    ]


def _term(event: TrialEvent) -> str:
    """The record's term as a clinician wrote it."""
    if event.kind is EventKind.ADVERSE_EVENT and isinstance(event.values.get("term_text"), str):
        return str(event.values["term_text"])
    concept = event.values.get("code") or event.values.get("term")
    if isinstance(concept, Mapping):
        if isinstance(concept.get("text"), str) and concept["text"].strip():
            return str(concept["text"]).strip()
        for coding in concept.get("coding") or ():
            if isinstance(coding, Mapping):
                for key in ("display", "code"):
                    if isinstance(coding.get(key), str) and coding[key].strip():
                        return str(coding[key]).strip()
    return "term not recorded"


def _grade(event: TrialEvent) -> int | None:
    grade = event.values.get("grade")
    return grade if isinstance(grade, int) and not isinstance(grade, bool) else None


def _index(protocol: CohortProtocol, subject: CirAESubject, events: Sequence[TrialEvent]) -> Any:
    """The index cirAE record, and the episode's records (starting on or after the onset)."""
    onset = subject.cirae_onset
    if onset is None:
        return None, []
    records = [e for e in _cirae_records(protocol, events) if e.date is not None]
    episode = [e for e in records if e.date is not None and e.date.first >= onset]
    starting = sorted((e for e in episode if e.date and e.date.first == onset), key=_source_key)
    return (starting[0] if starting else None), episode


def _dupilumab_last_day(
    protocol: CohortProtocol, subject: CirAESubject, events: Sequence[TrialEvent]
) -> int | None:
    """Days from the first dose to the last day of any dupilumab exposure reaching it."""
    first = subject.dupilumab_start
    if first is None:
        return None
    valueset = protocol.cohort.treatment_valueset
    lasts = [
        (e.end if e.end is not None else e.date).last
        for e in events
        if e.kind in _DRUG_KINDS and valueset in e.concept_ids and e.date is not None
    ]
    reaching = [d for d in lasts if d >= first]
    return (max(reaching) - first).days if reaching else 0


@dataclass(frozen=True, slots=True)
class Episode:
    """What the description reads of a cirAE subject's events: the index cirAE's term, the
    episode's highest grade, and the dupilumab duration (dupilumab group)."""

    term: str
    worst_grade: int | None
    dupilumab_days: int | None


def describes(subject: CirAESubject) -> bool:
    """Whether `describe_cirae` reads this subject's events (a cirAE group, an onset)."""
    return subject.group in CIRAE_GROUPS and subject.cirae_onset is not None


def episode(
    protocol: CohortProtocol, subject: CirAESubject, events: Sequence[TrialEvent]
) -> Episode:
    """The subject's episode from its events (pure: kept when the events are dropped)."""
    index, records = _index(protocol, subject, events)
    return Episode(
        term=_term(index) if index is not None else "term not recorded",
        worst_grade=max((gr for e in records if (gr := _grade(e)) is not None), default=None),
        dupilumab_days=_dupilumab_last_day(protocol, subject, events)
        if subject.group == "dupilumab"
        else None,
    )


def describe_cirae(
    protocol: CohortProtocol,
    subjects: Sequence[CirAESubject],
    episodes: Mapping[str, Episode],
) -> dict[str, Any]:
    """Terms, grades, timing and resolution of the index cirAE, by group (JSON-ready)."""
    terms: dict[str, Counter[str]] = {g: Counter() for g in CIRAE_GROUPS}
    grades: dict[str, Counter[str]] = {g: Counter() for g in CIRAE_GROUPS}
    to_onset: dict[str, list[float]] = {g: [] for g in CIRAE_GROUPS}
    to_resolution: dict[str, list[float]] = {g: [] for g in CIRAE_GROUPS}
    undated_resolution: Counter[str] = Counter()
    resolution: dict[str, Counter[str]] = {g: Counter() for g in CIRAE_GROUPS}
    onset_to_dupilumab: list[float] = []
    duration: list[float] = []
    for s in subjects:
        if s.group not in CIRAE_GROUPS or s.cirae_onset is None:
            continue
        g = s.group
        found = episodes.get(s.patient_id) or episode(protocol, s, ())
        terms[g][found.term] += 1
        worst = found.worst_grade
        grades[g][str(worst) if worst is not None else "ungraded"] += 1
        to_onset[g].append(float((s.cirae_onset - s.icb_start).days))
        resolution[g][s.resolution or "none"] += 1
        if s.resolution in ("complete", "partial"):
            if s.resolution_date is not None:
                to_resolution[g].append(float((s.resolution_date - s.cirae_onset).days))
            else:
                undated_resolution[g] += 1
        if g == "dupilumab" and s.dupilumab_start is not None:
            onset_to_dupilumab.append(float((s.dupilumab_start - s.cirae_onset).days))
            last = found.dupilumab_days
            if last is not None:
                duration.append(float(last))
    all_terms = sorted(
        {t for c in terms.values() for t in c},
        key=lambda t: (-sum(terms[g][t] for g in CIRAE_GROUPS), t),
    )
    return {
        "population": "subjects with a cirAE: the dupilumab and cirAE-without-dupilumab groups",
        "groups": {g: group_label(g) for g in CIRAE_GROUPS},
        "n": {g: sum(terms[g].values()) for g in CIRAE_GROUPS},
        "terms": [
            {
                "term": t,
                **{g: terms[g][t] for g in CIRAE_GROUPS},
                "total": sum(terms[g][t] for g in CIRAE_GROUPS),
            }
            for t in all_terms
        ],
        "grades": [{"grade": gr, **{g: grades[g][gr] for g in CIRAE_GROUPS}} for gr in GRADES],
        "grade_definition": "highest CTCAE grade among the cirAE records starting on or after "
        "the onset; ungraded when none carries a grade",
        "days_icb_to_onset": {g: summary(to_onset[g]) for g in CIRAE_GROUPS},
        "days_onset_to_dupilumab": summary(onset_to_dupilumab),
        "dupilumab_duration_days": {
            **summary(duration),
            "definition": "last day of any dupilumab exposure reaching the first dose − the "
            "first dose day (0 for a single dose)",
        },
        "resolution": {
            g: {k: resolution[g][k] for k in ("complete", "partial", "none")} for g in CIRAE_GROUPS
        },
        "days_onset_to_resolution": {
            g: {**summary(to_resolution[g]), "resolved_without_date": undated_resolution[g]}
            for g in CIRAE_GROUPS
        },
        "resolution_date_definition": "the end (Condition abatement, AdverseEvent resolution "
        "date; its first day) of the record stating the episode's latest status",
    }


def describe_glucocorticoids(
    protocol: CohortProtocol, subjects: Sequence[CirAESubject]
) -> dict[str, Any]:
    """Systemic glucocorticoid exposure counts and timing by group (JSON-ready)."""
    window = protocol.cohort.glucocorticoid.window_years
    out: dict[str, Any] = {}
    for g in GROUPS:
        members = [s for s in subjects if s.group == g]
        exposed = [s for s in members if s.glucocorticoid_start is not None]
        days = [
            float((s.glucocorticoid_start - s.icb_start).days)
            for s in exposed
            if s.glucocorticoid_start is not None
        ]
        timing: dict[str, Any] = {}
        if g in CIRAE_GROUPS:
            timing = {
                "before_cirae_onset": sum(
                    1
                    for s in exposed
                    if s.cirae_onset is not None
                    and s.glucocorticoid_start is not None
                    and s.glucocorticoid_start < s.cirae_onset
                ),
                "on_or_after_cirae_onset": sum(
                    1
                    for s in exposed
                    if s.cirae_onset is not None
                    and s.glucocorticoid_start is not None
                    and s.glucocorticoid_start >= s.cirae_onset
                ),
            }
        out[g] = {
            "label": group_label(g),
            "n": len(members),
            "exposed": len(exposed),
            "proportion": round(len(exposed) / len(members), 4) if members else None,
            "days_icb_to_first_exposure": summary(days),
            **timing,
        }
    return {
        "definition": f"systemic glucocorticoid exposure starting within {window} years after ICB "
        "initiation, at its first day (the Cox models' time-varying covariate)",
        "by_group": out,
    }
