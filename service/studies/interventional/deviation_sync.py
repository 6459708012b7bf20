"""Apply freshly detected deviations to the stored ones: open, update, resolve, reopen, notify."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

from sqlmodel import Session

from service.privacy.evidence import minimised, session_sealer
from service.repositories import deviation_records, webhook_outbox
from service.repositories.deviation_records import deviation_json
from service.studies.interventional.deviation_rules import Finding
from service.studies.interventional.protocol import TrialProtocol

SYSTEM = "system"
RESOLVED_BY_DATA = "resolved by the system: the data that caused it no longer shows it"
RESOLVED_NOT_SUBJECT = "resolved by the system: the patient is no longer a subject of the study"


def deviation_id(key: bytes, study_id: str, patient_id: str, rule: str, cause: str) -> str:
    """Same cause, same id, on every recomputation (and no patient id inside it)."""
    message = "\x1f".join((study_id, patient_id, rule, cause)).encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return "DEV-" + base64.b32encode(digest[:10]).decode().rstrip("=")


def _fresh(session: Session, study_id: str, dev_id: str) -> Any:
    row = deviation_records.get_deviation(session, study_id, dev_id)
    assert row is not None  # written earlier in this same transaction
    return row


def _notify(
    session: Session, kind: str, row_id: str, version: int, now: dt.datetime, body: dict[str, Any]
) -> None:
    seal = session_sealer(
        session, str(body["study_id"])
    )  # receivers get evidence ids, not FHIR ids
    payload = {"deviation": minimised(body, seal)}
    webhook_outbox.enqueue(session, kind, f"{kind}.{row_id}.v{version}", payload, now)


def sync_subject(
    session: Session,
    protocol: TrialProtocol,
    *,
    key: bytes,
    patient_id: str,
    subject_id: str | None,
    findings: Sequence[Finding],
    now: dt.datetime,
) -> None:
    """Make the stored deviations of one subject match what the data shows now."""
    severity = {d.code: d.severity for d in protocol.deviations}
    existing = deviation_records.deviations_of(session, protocol.id, patient_id)
    seen: set[str] = set()
    for f in findings:
        assert subject_id is not None
        dev_id = deviation_id(key, protocol.id, patient_id, f.rule, f.cause)
        seen.add(dev_id)
        evidence = json.dumps(f.evidence_json(), separators=(",", ":"))
        facts = {
            "message": f.message,
            "study_day": f.study_day,
            "occurred_on": f.occurred_on,
            "evidence": evidence,
            "severity": severity[f.rule],
            "subject_id": subject_id,
        }
        row = existing.get(dev_id)
        if row is None:
            values = {
                "id": dev_id,
                "study_id": protocol.id,
                "patient_id": patient_id,
                "rule": f.rule,
                "cause": f.cause[:200],
                "status": "open",
                "detected_at": now,
                "updated_at": now,
                "version": 1,
                **facts,
            }
            deviation_records.insert_deviation(session, values)
            deviation_records.add_history(
                session, dev_id, now, SYSTEM, "opened", {"message": f.message}
            )
            created = _fresh(session, protocol.id, dev_id)
            _notify(session, "deviation.opened", dev_id, 1, now, deviation_json(created))
            continue
        reopened = row.status == "resolved"
        changed = any(getattr(row, k) != v for k, v in facts.items())
        if not (reopened or changed):
            continue
        update: dict[str, Any] = {**facts, "updated_at": now}
        if reopened:
            update |= {"status": "open", "resolved_at": None, "resolution": None}
        deviation_records.update_deviation(session, dev_id, update)
        deviation_records.add_history(
            session,
            dev_id,
            now,
            SYSTEM,
            "reopened" if reopened else "updated",
            {"message": f.message},
        )
        if reopened:
            fresh = _fresh(session, protocol.id, dev_id)
            _notify(session, "deviation.opened", dev_id, fresh.version, now, deviation_json(fresh))
    for dev_id, row in existing.items():
        if dev_id in seen or row.status == "resolved":
            continue
        reason = RESOLVED_BY_DATA if subject_id is not None else RESOLVED_NOT_SUBJECT
        deviation_records.update_deviation(
            session,
            dev_id,
            {"status": "resolved", "resolved_at": now, "resolution": reason, "updated_at": now},
        )
        deviation_records.add_history(session, dev_id, now, SYSTEM, "resolved", {"reason": reason})
        fresh = _fresh(session, protocol.id, dev_id)
        _notify(session, "deviation.resolved", dev_id, fresh.version, now, deviation_json(fresh))
