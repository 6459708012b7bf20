"""The CONSORT-style flow of an interventional trial: screened → eligible → enrolled → dosed →
operated → evaluable (pure).

Decisions (each also stated in the flow's definitions or notes):

* Screened: a screening candidate with a stored result (a lung-cancer or NSCLC condition, or a
  ResearchSubject for the study).
* Eligible: for a subject with an enrollment date, the overall verdict on the enrollment day
  (what the `ineligible_enrolled` rule judges); for anyone else, the stored verdict as of its
  screening day. A patient who is not eligible is counted under one reason: the first criterion
  by number that decides the verdict (an inclusion not met or an exclusion met; for an
  indeterminate verdict, the first unknown criterion).
* Enrolled: a ResearchSubject status of the enrolled statuses (the ones `ineligible_enrolled`
  reads: on-study, on-study-intervention, on-study-observation, follow-up, off-study).
* Dosed: Day 1 known (the population of every cohort figure). Operated: a performed lung
  resection on or after Day 1. Evaluable: MPR evaluable (percent viable tumour of the resected
  primary recorded), the primary endpoint's population.
* A patient who reaches a step without the one before it (enrolled while not eligible, dosed
  with another status) is counted in the step and listed under `added` with the reason the
  previous step did not hold them, so nobody disappears and the counts reconcile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.studies.flow import ConsortFlow, FunnelStep, funnel
from service.studies.interventional.deviation_rules import ENROLLED_STATUSES
from service.studies.interventional.eligibility import evaluate
from service.studies.interventional.membership import trial_membership
from service.studies.interventional.protocol import TrialProtocol
from service.studies.kind import CohortData, Member, Screened

NOTES = (
    "Eligibility of a subject with an enrollment date is the verdict on the enrollment day; of "
    "anyone else, the stored verdict as of the screening day.",
    "A patient who is not eligible is counted under the first criterion (by number) that "
    "decides the verdict.",
    "A patient who reached a step without the step before it is listed under 'added' with the "
    "reason the previous step did not hold them.",
)


def _verdict_reason(overall: str, criteria: Sequence[Mapping[str, Any]]) -> str | None:
    """None when eligible; else the first deciding criterion, in words."""
    if overall == "eligible":
        return None
    ordered = sorted(criteria, key=lambda c: (int(c.get("number") or 0), str(c.get("id"))))
    if overall == "ineligible":
        for c in ordered:
            if c.get("type") == "inclusion" and c.get("verdict") == "not_met":
                return f"not eligible: inclusion {c.get('number')} not met ({c.get('title')})"
            if c.get("type") == "exclusion" and c.get("verdict") == "met":
                return f"not eligible: exclusion {c.get('number')} met ({c.get('title')})"
        return "not eligible"
    for c in ordered:
        if c.get("verdict") == "unknown":
            return (
                f"eligibility indeterminate: criterion {c.get('number')} unknown ({c.get('title')})"
            )
    return "eligibility indeterminate"


def _eligibility(
    protocol: TrialProtocol, member: Member | None, screened: Screened | None
) -> str | None:
    """Why the patient is not eligible (None when eligible), judged as the module says."""
    facts = trial_membership(protocol, member.events) if member is not None else None
    if member is not None and facts is not None and facts.enrolled_on is not None:
        result = evaluate(
            protocol,
            member.events,
            as_of=facts.enrolled_on,
            enrolled_on=facts.enrolled_on,
            day1=facts.day1,
        )
        return _verdict_reason(result.overall, [c.to_json() for c in result.criteria])
    if screened is not None:
        return _verdict_reason(screened.overall, screened.criteria)
    return "no screening result"


def _enrolled(member: Member | None) -> str | None:
    """None when enrolled; else the status that says otherwise."""
    if member is None:
        return "not enrolled (no ResearchSubject for the study)"
    if member.status in ENROLLED_STATUSES:
        return None
    return f"not enrolled (ResearchSubject status {member.status})"


def _dosed(row: Mapping[str, Any] | None) -> str | None:
    return None if row is not None and row["dosed"] else "not dosed (no study-drug administration)"


def _operated(row: Mapping[str, Any] | None) -> str | None:
    if row is not None and row["dosed"] and row["surgery_study_day"] is not None:
        return None
    os_ = row.get("os") if row is not None else None
    if isinstance(os_, Mapping) and os_.get("event"):
        return "died before surgery"
    return "no lung resection recorded"


def _evaluable(row: Mapping[str, Any] | None) -> str | None:
    if row is not None and row["dosed"] and row["mpr"] != "not_evaluable":
        return None
    return "MPR not evaluable (percent viable tumour of the resected primary not recorded)"


def trial_flow(
    protocol: TrialProtocol, data: CohortData, subject_rows: Sequence[Mapping[str, Any]]
) -> ConsortFlow:
    """The trial's flow from its screening list, its subjects and their per-subject endpoints."""
    members = {m.patient_id: m for m in data.members}
    screened = {s.patient_id: s for s in data.screened}
    rows_by_subject = {str(r["subject_id"]): r for r in subject_rows}
    rows = {p: rows_by_subject.get(m.subject_id) for p, m in members.items()}
    patients = sorted(set(members) | set(screened))

    def step(key: str, label: str, definition: str, judge: Any) -> FunnelStep:
        return FunnelStep(key, label, definition, {p: judge(p) for p in patients})

    window = protocol.schedule.surgery_window
    steps = [
        step(
            "screened",
            "Screened",
            "screening candidates with a stored eligibility result",
            lambda p: None if p in screened else "no screening result",
        ),
        step(
            "eligible",
            "Eligible",
            "eligible on the enrollment day (subjects with an enrollment date) or as of the "
            "screening day (everyone else)",
            lambda p: _eligibility(protocol, members.get(p), screened.get(p)),
        ),
        step(
            "enrolled",
            "Enrolled",
            "ResearchSubject status " + ", ".join(sorted(ENROLLED_STATUSES)),
            lambda p: _enrolled(members.get(p)),
        ),
        step(
            "dosed",
            "Dosed",
            "Day 1 known (a study-drug administration)",
            lambda p: _dosed(rows.get(p)),
        ),
        step(
            "operated",
            "Operated",
            f"dosed, with a performed lung resection on or after Day 1 (window Day "
            f"{window.start}–{window.end}, on time or not)",
            lambda p: _operated(rows.get(p)),
        ),
        step(
            "evaluable",
            "Evaluable",
            "dosed, with MPR evaluable (percent viable tumour of the resected primary recorded)",
            lambda p: _evaluable(rows.get(p)),
        ),
    ]
    return funnel(f"{protocol.id}: flow of patients", steps, NOTES)
