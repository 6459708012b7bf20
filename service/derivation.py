"""Keep trial events and study subjects in step with the FHIR store, inside each write."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import secrets
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlmodel import Session

from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.events.registry import MAPPERS, map_resource
from fhir_mapping.json_codec import LexicalDecimal
from fhir_mapping.terminology import Terminology
from service import deviation_store, event_store, store
from service.deviation_sync import sync_subject
from service.deviations import Finding, SubjectContext, detect
from service.eligibility import evaluate, is_candidate
from service.fhir_time import utcnow
from service.membership import SubjectFacts, membership, pseudonym
from service.protocol import CohortProtocol, TrialProtocol
from service.store import Key
from service.terminology_files import VALUESET_URL_PREFIX, build_terminology

log = logging.getLogger(__name__)

# Stored content was validated on the way in: a plain decoder that keeps decimals' text suffices.
_STORED = json.JSONDecoder(parse_float=LexicalDecimal)
PSEUDONYM_SECRET = "subject-pseudonym-key"
# Event kinds that decide study membership and candidacy (read back for every touched patient).
MEMBERSHIP_KINDS = (
    EventKind.ENROLLMENT,
    EventKind.DRUG_ADMINISTRATION,
    EventKind.DRUG_EXPOSURE,
    EventKind.CONDITION,
)


@dataclass
class _RecordingLookup:
    """Reads current resources for a mapper and remembers what it read (the dependencies)."""

    session: Session
    known: store.Written = field(default_factory=dict)
    targets: set[str] = field(default_factory=set)

    def by_id(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The current content of a stored resource (just written, or read back)."""
        self.targets.add(f"{resource_type}/{resource_id}")
        if (resource_type, resource_id) in self.known:
            return self.known[(resource_type, resource_id)].resource
        found = store.read_version(self.session, resource_type, resource_id)
        if found is None or found.content is None:
            return None
        content: dict[str, Any] = _STORED.decode(found.content)
        return content

    def by_identifier(
        self, resource_types: tuple[str, ...], system: str | None, value: str
    ) -> tuple[str, str, dict[str, Any]] | None:
        """The single current resource of those types carrying this identifier."""
        self.targets.add(event_store.identifier_target(value))
        hits = event_store.identifier_matches(self.session, resource_types, system, value)
        if len(hits) != 1:
            return None
        rtype, rid = hits[0]
        content = self.by_id(rtype, rid)
        return (rtype, rid, content) if content is not None else None


class Derivation:
    """Maps written resources to events and recomputes the subjects they touch."""

    def __init__(
        self,
        protocols: dict[str, TrialProtocol | CohortProtocol],
        *,
        terminology_dir: Any = None,
        base_url: str | None = None,
        pseudonym_key: str | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.protocols = protocols
        self.clock = clock  # "now" for time-relative rules; a test or a backfill may set it
        self.terminology_dir = terminology_dir
        self.base_url = base_url
        self._pseudonym_key = pseudonym_key.encode() if pseudonym_key else None
        self._lock = threading.Lock()
        self._terminology = build_terminology(terminology_dir)
        self._generation: tuple[int, Any] = (0, None)

    # -- terminology ------------------------------------------------------------------------------

    def terminology(self, session: Session) -> tuple[Terminology, bool]:
        """The value sets in force (site ValueSets included) and whether they just changed."""
        generation = event_store.valueset_generation(session)
        with self._lock:
            if generation == self._generation:
                return self._terminology, False
        keys = event_store.all_keys(session, ["ValueSet"])
        valuesets = [
            _STORED.decode(v.content)
            for v in store.read_current_many(session, keys)
            if v.content is not None and VALUESET_URL_PREFIX in v.content
        ]
        built = build_terminology(self.terminology_dir, valuesets)
        with self._lock:
            changed = built.definitions != self._terminology.definitions

        def keep() -> None:
            with self._lock:
                self._terminology, self._generation = built, generation

        _once_committed(session, keep)  # a rolled-back ValueSet must not become the baseline
        return built, changed

    # -- the hook ---------------------------------------------------------------------------------

    def after_write(self, session: Session) -> None:
        """Run inside the write transaction, before commit: remap what changed, re-list subjects."""
        written: store.Written = session.info.pop(store.WRITTEN_KEYS, {})
        if not written:
            return
        terminology, changed = self.terminology(session)
        if changed or any(t == "ValueSet" for t, _ in written):
            keys = set(event_store.all_keys(session, sorted(MAPPERS))) | set(written)
        else:
            keys = set(written)
            targets = {f"{t}/{i}" for t, i in keys} | {
                event_store.identifier_target(value)
                for w in written.values()
                for _, value in w.identifiers
            }
            keys |= event_store.dependents(session, targets)
        self.remap(session, sorted(keys), terminology, written)

    def remap(
        self,
        session: Session,
        keys: Sequence[Key],
        terminology: Terminology,
        written: store.Written | None = None,
    ) -> None:
        """Replace the events of these sources with what their current versions map to.

        `written` is content this unit of work has just stored (current by construction); only the
        other keys are read back from the database.
        """
        known = written or {}
        mapped_keys = [k for k in keys if k[0] in MAPPERS]
        # A resource created by this unit of work has no events yet: nothing to look up or delete.
        derived_before = [k for k in mapped_keys if k not in known or not known[k].created]
        touched = event_store.patients_of(session, derived_before)
        event_store.delete_events(session, derived_before)
        lookup = _RecordingLookup(session, known)
        ctx = MappingContext(terminology, lookup, self.base_url)
        events: list[TrialEvent] = []
        deps: list[tuple[str, str, str]] = []
        current: dict[Key, tuple[int, dict[str, Any] | None]] = {
            k: (known[k].version_id, known[k].resource) for k in mapped_keys if k in known
        }
        for v in store.read_current_many(session, [k for k in mapped_keys if k not in known]):
            content = _STORED.decode(v.content) if v.content is not None else None
            current[(v.resource_type, v.resource_id)] = (v.version_id, content)
        for key in mapped_keys:
            version_id, content = current.get(key, (0, None))
            if content is None:  # deleted, or not stored
                continue
            source = SourceRef(key[0], key[1], version_id)
            lookup.targets = set()
            events.extend(self._map_one(session, content, source, ctx))
            deps.extend((source.resource_type, source.resource_id, t) for t in lookup.targets)
        event_store.insert_events(session, events, deps)
        touched.update(e.patient_id for e in events if e.patient_id)
        self.refresh_subjects(session, sorted(touched))

    @staticmethod
    def _map_one(
        session: Session, content: dict[str, Any], source: SourceRef, ctx: MappingContext
    ) -> list[TrialEvent]:
        try:
            return map_resource(source.resource_type, content, source, ctx)
        except Exception:  # a mapper bug must not refuse valid FHIR; the resource stays stored
            failure = sys.exc_info()

            def report() -> None:  # only for content that is kept, not a refused Bundle's
                log.error(
                    "mapping %s/%s failed; it yields no events",
                    source.resource_type,
                    source.resource_id,
                    exc_info=failure,
                )

            _once_committed(session, report)
            return []

    # -- subjects ---------------------------------------------------------------------------------

    def pseudonym_key(self, session: Session) -> bytes:
        """The configured key, else one generated once and kept in the database."""
        if self._pseudonym_key is not None:
            return self._pseudonym_key
        key: bytes | None = session.info.get(_SESSION_PSEUDONYM_KEY)
        if key is None:
            key = event_store.get_or_create_secret(
                session,
                PSEUDONYM_SECRET,
                lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
            ).encode()
            session.info[_SESSION_PSEUDONYM_KEY] = key
            kept = key

            def keep() -> None:
                self._pseudonym_key = kept

            _once_committed(session, keep)  # a generated key counts once it is stored
        return key

    def refresh_subjects(self, session: Session, patient_ids: Sequence[str]) -> None:
        """Recompute every study's membership for these patients."""
        if not patient_ids:
            return
        events = event_store.events_of(session, patient_ids, MEMBERSHIP_KINDS)
        existing = event_store.subjects_of(session, patient_ids)
        key = self.pseudonym_key(session)
        now = self.clock()
        facts_of: dict[tuple[str, str], SubjectFacts | None] = {}
        for study_id, protocol in sorted(self.protocols.items()):
            for patient_id in patient_ids:
                facts = membership(protocol, events.get(patient_id, []))
                facts_of[(study_id, patient_id)] = facts
                row = existing.get((study_id, patient_id))
                if facts is None:
                    if row is not None:
                        event_store.delete_subject(session, study_id, patient_id)
                    continue
                values = {
                    "study_id": study_id,
                    "patient_id": patient_id,
                    "subject_id": pseudonym(key, study_id, patient_id),
                    "subject_number": facts.subject_number,
                    "status": facts.status,
                    "enrolled_on": facts.enrolled_on,
                    "day1": facts.day1,
                }
                if row is not None and all(getattr(row, k) == v for k, v in values.items()):
                    continue
                event_store.upsert_subject(session, {**values, "updated_at": now}, row is not None)
        self.refresh_eligibility(session, patient_ids, events, facts_of, now)

    def refresh_eligibility(  # and the deviations of the subjects among them
        self,
        session: Session,
        patient_ids: Sequence[str],
        brief: dict[str, list[TrialEvent]],
        facts_of: dict[tuple[str, str], SubjectFacts | None],
        now: dt.datetime,
    ) -> None:
        """Re-screen the candidates among these patients as of today; drop non-candidates."""
        key = self.pseudonym_key(session)
        for study_id, protocol in sorted(self.protocols.items()):
            if not isinstance(protocol, TrialProtocol):
                continue
            stored = event_store.eligibility_of(session, study_id, patient_ids)
            candidates = []
            for patient_id in patient_ids:
                facts = facts_of[(study_id, patient_id)]
                if is_candidate(protocol, brief.get(patient_id, []), facts is not None):
                    candidates.append((patient_id, facts))
                    continue
                if patient_id in stored:
                    event_store.delete_eligibility(session, study_id, patient_id)
                # not a candidate (so not a subject): any deviations it had are resolved
                sync_subject(
                    session,
                    protocol,
                    key=key,
                    patient_id=patient_id,
                    subject_id=None,
                    findings=(),
                    now=now,
                )
            if not candidates:
                continue
            full = event_store.events_of(session, [p for p, _ in candidates])
            for patient_id, facts in candidates:
                subject_id = pseudonym(key, study_id, patient_id)
                values = screening_row(
                    protocol,
                    full[patient_id],
                    subject_id=subject_id,
                    patient_id=patient_id,
                    facts=facts,
                    now=now,
                )
                old = stored.get(patient_id)
                event_store.save_eligibility(session, values, old is not None)
                if old is None or old.overall != values["overall"]:
                    before = old.overall if old is not None else None
                    deviation_store.enqueue(
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
                        now,
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
                    findings = detect(protocol, full[patient_id], context, as_of=now.date())
                sync_subject(
                    session,
                    protocol,
                    key=key,
                    patient_id=patient_id,
                    subject_id=subject_id if facts is not None else None,
                    findings=findings,
                    now=now,
                )


def screening_row(
    protocol: TrialProtocol,
    events: Sequence[TrialEvent],
    *,
    subject_id: str,
    patient_id: str,
    facts: SubjectFacts | None,
    now: dt.datetime,
) -> dict[str, Any]:
    """The stored screening result: as of today, plus the verdict on the enrollment day."""
    enrolled_on = facts.enrolled_on if facts else None
    day1 = facts.day1 if facts else None
    today = now.date()
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


_SESSION_PSEUDONYM_KEY = "trialbridge_pseudonym_key"


def _once_committed(session: Session, then: Callable[[], None]) -> None:
    """Run `then` after this session's transaction commits; never if it rolls back."""
    event.listen(session, "after_commit", lambda _session: then(), once=True)


def remap_all(derivation: Derivation, session: Session) -> None:
    """Recompute every event and subject (after a terminology or mapping change)."""
    terminology, _ = derivation.terminology(session)
    derivation.remap(session, event_store.all_keys(session, sorted(MAPPERS)), terminology)


def reevaluate_all(derivation: Derivation, session: Session) -> int:
    """Re-screen every candidate as of today (time passing changes time-relative verdicts)."""
    patients = event_store.patients_with_events(
        session, (EventKind.CONDITION, EventKind.ENROLLMENT)
    )
    derivation.refresh_subjects(session, patients)
    return len(patients)
