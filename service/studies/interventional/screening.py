"""Per-subject refresh of an interventional study after a write: screening result and deviations."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from typing import Any

from fhir_mapping.events.model import TrialEvent
from service.repositories import eligibility_results, trial_events, webhook_outbox
from service.repositories.unit_of_work import UnitOfWork
from service.studies.interventional.deviation_rules import Finding, SubjectContext, detect
from service.studies.interventional.deviation_sync import sync_subject
from service.studies.interventional.eligibility import evaluate, is_candidate
from service.studies.interventional.protocol import TrialProtocol
from service.studies.kind import SubjectBatch, SubjectFacts, pseudonym


def _flow_key(overall: str, at_enrollment: str | None, payload: str) -> tuple[Any, ...]:
    """What the cohort's flow of patients reads from a screening row (not its date)."""
    found = json.loads(payload)
    criteria = found.get("criteria") if isinstance(found, dict) else None
    verdicts = tuple(
        (str(c.get("id")), str(c.get("verdict"))) for c in criteria or () if isinstance(c, dict)
    )
    return overall, at_enrollment, verdicts


def refresh_screening(uow: UnitOfWork, protocol: TrialProtocol, batch: SubjectBatch) -> bool:
    """Re-screen the candidates among these patients as of today; drop non-candidates.

    True when the screening list changed as the cohort's flow reads it (a snapshot goes stale).
    """
    session = uow.session
    changed = False
    study_id = protocol.id
    stored = eligibility_results.eligibility_of(session, study_id, batch.patient_ids)
    candidates: list[tuple[str, SubjectFacts | None]] = []
    for patient_id in batch.patient_ids:
        facts = batch.facts[patient_id]
        if is_candidate(protocol, batch.brief.get(patient_id, []), facts is not None):
            candidates.append((patient_id, facts))
            continue
        if patient_id in stored:
            eligibility_results.delete_eligibility(session, study_id, patient_id)
            changed = True
        # not a candidate (so not a subject): any deviations it had are resolved
        sync_subject(
            session,
            protocol,
            key=batch.key,
            patient_id=patient_id,
            subject_id=None,
            findings=(),
            now=batch.now,
        )
    if not candidates:
        return changed
    full = trial_events.events_of(
        session, [p for p, _ in candidates], stored=uow.stored_events, zone=batch.zone
    )
    for patient_id, facts in candidates:
        subject_id = pseudonym(batch.key, study_id, patient_id)
        values = screening_row(
            protocol,
            full[patient_id],
            subject_id=subject_id,
            patient_id=patient_id,
            facts=facts,
            now=batch.now,
            today=batch.today,
        )
        old = stored.get(patient_id)
        eligibility_results.save_eligibility(session, values, old is not None)
        new_key = _flow_key(values["overall"], values["at_enrollment"], values["payload"])
        if old is None or _flow_key(old.overall, old.at_enrollment, old.payload) != new_key:
            changed = True
        if old is None or old.overall != values["overall"]:
            before = old.overall if old is not None else None
            webhook_outbox.enqueue(
                session,
                "eligibility.changed",
                f"eligibility.changed.{subject_id}.{uuid.uuid4().hex}",
                {
                    "study_id": study_id,
                    "subject_id": subject_id,
                    "previous": before,
                    "overall": values["overall"],
                    "as_of": values["as_of"].isoformat(),
                },
                batch.now,
            )
        findings: list[Finding] = []
        if facts is not None:
            context = SubjectContext(
                day1=facts.day1,
                enrolled_on=facts.enrolled_on,
                status=facts.status,
                eligible_at_enrollment=values["at_enrollment"],
                enrollment_source=facts.evidence[0] if facts.evidence else None,
            )
            findings = detect(protocol, full[patient_id], context, as_of=batch.today)
        sync_subject(
            session,
            protocol,
            key=batch.key,
            patient_id=patient_id,
            subject_id=subject_id if facts is not None else None,
            findings=findings,
            now=batch.now,
        )
    return changed


def screening_row(
    protocol: TrialProtocol,
    events: Sequence[TrialEvent],
    *,
    subject_id: str,
    patient_id: str,
    facts: SubjectFacts | None,
    now: dt.datetime,
    today: dt.date,
) -> dict[str, Any]:
    """The stored screening result: as of today (the site's day), plus the verdict on the
    enrollment day."""
    enrolled_on = facts.enrolled_on if facts else None
    day1 = facts.day1 if facts else None
    result = evaluate(protocol, events, as_of=today, enrolled_on=enrolled_on, day1=day1)
    at_enrollment = None
    if enrolled_on is not None and enrolled_on <= today:
        at_enrollment = evaluate(
            protocol, events, as_of=enrolled_on, enrolled_on=enrolled_on, day1=day1
        ).overall
    counts = result.counts()
    payload = {**result.to_json(), "at_enrollment": at_enrollment}
    return {
        "study_id": protocol.id,
        "patient_id": patient_id,
        "subject_id": subject_id,
        "overall": result.overall,
        "n_met": counts["met"],
        "n_not_met": counts["not_met"],
        "n_unknown": counts["unknown"],
        "at_enrollment": at_enrollment,
        "protocol_version": protocol.version,
        "as_of": today,
        "computed_at": now,
        "payload": json.dumps(payload, separators=(",", ":")),
    }
