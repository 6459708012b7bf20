"""Keep trial events and study subjects in step with the FHIR store, inside each write."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import secrets
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import SourceRef, TrialEvent
from fhir_mapping.events.registry import MAPPERS, map_resource
from fhir_mapping.json_codec import LexicalDecimal
from fhir_mapping.terminology import Terminology
from service.infra import metrics
from service.infra.clock import utcnow
from service.protocol.schema import StudyProtocol
from service.protocol.terminology import VALUESET_URL_PREFIX, build_terminology
from service.repositories import (
    cohort_snapshots,
    derivation_locks,
    fhir_versions,
    service_secrets,
    study_subjects,
    trial_events,
)
from service.repositories.fhir_versions import Key, Written
from service.repositories.unit_of_work import UnitOfWork
from service.studies.kind import SubjectBatch, SubjectFacts, pseudonym
from service.studies.registry import kind_of, membership, membership_events, reevaluate_events

log = logging.getLogger(__name__)

# Stored content was validated on the way in: a plain decoder that keeps decimals' text suffices.
_STORED = json.JSONDecoder(parse_float=LexicalDecimal)
PSEUDONYM_SECRET = "subject-pseudonym-key"


@dataclass
class _RecordingLookup:
    """Reads current resources for a mapper and remembers what it read (the dependencies)."""

    session: Session
    known: fhir_versions.Written = field(default_factory=dict)
    targets: set[str] = field(default_factory=set)
    locked: set[str] = field(default_factory=set)  # read-locked already in this transaction

    def _lock(self, target: str) -> None:
        """A concurrent writer of the target commits first, or finds this mapping's dependency."""
        if target not in self.locked:
            derivation_locks.lock_read(self.session, [target])
            self.locked.add(target)

    def by_id(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The current content of a stored resource (just written, or read back)."""
        target = f"{resource_type}/{resource_id}"
        self.targets.add(target)
        if (resource_type, resource_id) in self.known:
            return self.known[(resource_type, resource_id)].resource
        self._lock(target)
        found = fhir_versions.read_version(self.session, resource_type, resource_id)
        if found is None or found.content is None:
            return None
        content: dict[str, Any] = _STORED.decode(found.content)
        return content

    def by_identifier(
        self, resource_types: tuple[str, ...], system: str | None, value: str
    ) -> tuple[str, str, dict[str, Any]] | None:
        """The single current resource of those types carrying this identifier."""
        target = trial_events.identifier_target(value)
        self.targets.add(target)
        self._lock(target)
        hits = trial_events.identifier_matches(self.session, resource_types, system, value)
        if len(hits) != 1:
            return None
        rtype, rid = hits[0]
        content = self.by_id(rtype, rid)
        return (rtype, rid, content) if content is not None else None


class Derivation:
    """Maps written resources to events and recomputes the subjects they touch."""

    def __init__(
        self,
        protocols: dict[str, StudyProtocol],
        *,
        terminology_dir: Any = None,
        base_url: str | None = None,
        pseudonym_key: str | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        site_zone: dt.tzinfo = dt.UTC,
    ) -> None:
        self.protocols = protocols
        self.clock = clock  # "now" for time-relative rules; a test or a backfill may set it
        self.site_zone = site_zone  # whose calendar days the rules count in
        self.terminology_dir = terminology_dir
        self.base_url = base_url
        self._pseudonym_key = pseudonym_key.encode() if pseudonym_key else None
        self._lock = threading.Lock()
        self._terminology = build_terminology(terminology_dir)
        self._generation: tuple[int, Any] = (0, None)
        # told, after the commit, which studies' cohort inputs a write changed (the refresher)
        self.on_studies_changed: Callable[[frozenset[str]], None] | None = None

    # -- terminology ------------------------------------------------------------------------------

    def terminology(self, uow: UnitOfWork) -> tuple[Terminology, bool]:
        """The value sets in force (site ValueSets included) and whether they just changed."""
        session = uow.session
        generation = fhir_versions.valueset_generation(session)
        with self._lock:
            if generation == self._generation:
                return self._terminology, False
        keys = fhir_versions.all_keys(session, ["ValueSet"])
        valuesets = [
            _STORED.decode(v.content)
            for v in fhir_versions.read_current_many(session, keys)
            if v.content is not None and VALUESET_URL_PREFIX in v.content
        ]
        built = build_terminology(self.terminology_dir, valuesets)
        with self._lock:
            changed = built.definitions != self._terminology.definitions

        def keep() -> None:
            with self._lock:
                self._terminology, self._generation = built, generation

        uow.after_commit(keep)  # a rolled-back ValueSet must not become the baseline
        return built, changed

    # -- the hook ---------------------------------------------------------------------------------

    def forget_memos(self) -> None:
        """Empty the terminology's memo (see `service.infra.process.return_free_memory`)."""
        with self._lock:
            terminology = self._terminology
        terminology.forget()

    def after_write(self, uow: UnitOfWork) -> None:
        """Run inside the write transaction, before commit: remap what changed, re-list subjects."""
        written = uow.take_written()
        if not written:
            return
        with metrics.DERIVATION_SECONDS.time():
            self._derive(uow, written)

    def _derive(self, uow: UnitOfWork, written: Written) -> None:
        session = uow.session
        terminology, changed = self.terminology(uow)
        targets = {f"{t}/{i}" for t, i in written} | {
            trial_events.identifier_target(value)
            for w in written.values()
            for _, value in w.identifiers
        }
        # a mapping reading what this transaction wrote commits first, or waits and reads it
        derivation_locks.lock_written(session, targets)
        if changed or any(t == "ValueSet" for t, _ in written):
            keys = set(fhir_versions.all_keys(session, sorted(MAPPERS))) | set(written)
        else:
            keys = set(written) | trial_events.dependents(session, targets)
        self.remap(uow, sorted(keys), terminology, written)

    def remap(
        self,
        uow: UnitOfWork,
        keys: Sequence[Key],
        terminology: Terminology,
        written: fhir_versions.Written | None = None,
    ) -> None:
        """Replace the events of these sources with what their current versions map to.

        `written` is content this unit of work has just stored (current by construction); only the
        other keys are read back from the database.
        """
        session = uow.session
        known = written or {}
        mapped_keys = [k for k in keys if k[0] in MAPPERS]
        # A resource created by this unit of work has no events yet: nothing to look up or delete.
        derived_before = [k for k in mapped_keys if k not in known or not known[k].created]
        touched = trial_events.patients_of(session, derived_before)
        trial_events.delete_events(session, derived_before)
        lookup = _RecordingLookup(session, known)
        ctx = MappingContext(terminology, lookup, self.base_url)
        events: list[TrialEvent] = []
        deps: list[tuple[str, str, str]] = []
        current: dict[Key, tuple[int, dict[str, Any] | None]] = {
            k: (known[k].version_id, known[k].resource) for k in mapped_keys if k in known
        }
        for v in fhir_versions.read_current_many(
            session, [k for k in mapped_keys if k not in known]
        ):
            content = _STORED.decode(v.content) if v.content is not None else None
            current[(v.resource_type, v.resource_id)] = (v.version_id, content)
        for key in mapped_keys:
            version_id, content = current.get(key, (0, None))
            if content is None:  # deleted, or not stored
                continue
            source = SourceRef(key[0], key[1], version_id)
            lookup.targets = set()
            events.extend(self._map_one(uow, content, source, ctx))
            deps.extend((source.resource_type, source.resource_id, t) for t in lookup.targets)
        trial_events.insert_events(session, events, deps, uow.stored_events)
        touched.update(e.patient_id for e in events if e.patient_id)
        self.refresh_subjects(uow, sorted(touched))

    @staticmethod
    def _map_one(
        uow: UnitOfWork, content: dict[str, Any], source: SourceRef, ctx: MappingContext
    ) -> list[TrialEvent]:
        try:
            return map_resource(source.resource_type, content, source, ctx)
        except DBAPIError:
            # the database refused a look-up (a deadlock, a lost connection), not the mapper: the
            # transaction is aborted, so the write path must see it (and retry a deadlock)
            raise
        except Exception:  # a mapper bug must not refuse valid FHIR; the resource stays stored
            failure = sys.exc_info()

            def report() -> None:  # only for content that is kept, not a refused Bundle's
                log.error(  # no FHIR id in logs: the request id finds the request
                    "mapping a %s (version %d) failed; it yields no events",
                    source.resource_type,
                    source.version_id,
                    exc_info=failure,
                )

            uow.after_commit(report)
            return []

    # -- subjects ---------------------------------------------------------------------------------

    def pseudonym_key(self, uow: UnitOfWork) -> bytes:
        """The configured key, else one generated once and kept in the database."""
        if self._pseudonym_key is not None:
            return self._pseudonym_key
        key = uow.pseudonym_key
        if key is None:
            key = service_secrets.get_or_create_secret(
                uow.session,
                PSEUDONYM_SECRET,
                lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
            ).encode()
            uow.pseudonym_key = key
            kept = key

            def keep() -> None:
                self._pseudonym_key = kept

            uow.after_commit(keep)  # a generated key counts once it is stored
        return key

    def refresh_subjects(
        self, uow: UnitOfWork, patient_ids: Sequence[str], *, events_changed: bool = True
    ) -> None:
        """Recompute every study's membership for these patients, then each kind's refresh.

        `events_changed`: the patients' events were just rewritten (a write), not only re-read (a
        daily re-evaluation); either way a study whose subject rows change is marked changed.
        """
        if not patient_ids:
            return
        session = uow.session
        # Another transaction deriving these patients finishes first, and the reads below see its
        # committed events and rows: no write skew (service.repositories.derivation_locks).
        derivation_locks.lock_patients(session, patient_ids)
        brief = membership_events()  # what decides membership and candidacy, nothing more
        events = trial_events.events_of(
            session, patient_ids, brief, uow.stored_events, zone=self.site_zone
        )
        existing = study_subjects.subjects_of(session, patient_ids)
        key = self.pseudonym_key(uow)
        now = self.clock()
        facts_of: dict[tuple[str, str], SubjectFacts | None] = {}
        changed: set[str] = set()
        with_rows = {patient_id for _, patient_id in existing}  # whose read tokens to renew
        for study_id, protocol in sorted(self.protocols.items()):
            for patient_id in patient_ids:
                facts = membership(protocol, events.get(patient_id, []))
                facts_of[(study_id, patient_id)] = facts
                row = existing.get((study_id, patient_id))
                if events_changed and (facts is not None or row is not None):
                    changed.add(study_id)  # a subject's events are cohort inputs
                if facts is None:
                    if row is not None:
                        study_subjects.delete_subject(session, study_id, patient_id)
                        changed.add(study_id)
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
                study_subjects.upsert_subject(
                    session, {**values, "updated_at": now}, row is not None
                )
                with_rows.add(patient_id)
                changed.add(study_id)
        for study_id, protocol in sorted(self.protocols.items()):
            refresh = kind_of(protocol).refresh
            if refresh is None:
                continue
            batch = SubjectBatch(
                patient_ids=patient_ids,
                brief=events,
                facts={p: facts_of[(study_id, p)] for p in patient_ids},
                key=key,
                now=now,
                zone=self.site_zone,
            )
            if refresh(uow, protocol, batch):
                changed.add(study_id)  # its screening list is a cohort input too
        # cached timelines and outcomes of these subjects (service.reads.subject_cache) go stale;
        # a patient who is nobody's subject has no row to renew (no statement for most writes)
        if with_rows:
            study_subjects.renew_read_tokens(session, sorted(with_rows), secrets.token_hex(16))
        self._mark_changed(uow, changed)

    def _mark_changed(self, uow: UnitOfWork, studies: set[str]) -> None:
        """One change row per study per transaction, written last (cohort snapshots go stale)."""
        new = studies - uow.changed_studies
        if not new:
            return
        cohort_snapshots.record_changes(uow.session, new)
        if not uow.changed_studies and self.on_studies_changed is not None:
            tell = self.on_studies_changed
            uow.after_commit(lambda: tell(frozenset(uow.changed_studies)))
        uow.changed_studies |= new


def remap_all(derivation: Derivation, uow: UnitOfWork) -> None:
    """Recompute every event and subject (after a terminology or mapping change)."""
    terminology, _ = derivation.terminology(uow)
    derivation.remap(uow, fhir_versions.all_keys(uow.session, sorted(MAPPERS)), terminology)


def reevaluate_all(derivation: Derivation, uow: UnitOfWork) -> int:
    """Re-screen every candidate as of today (time passing changes time-relative verdicts)."""
    patients = trial_events.patients_with_events(uow.session, reevaluate_events())
    derivation.refresh_subjects(uow, patients, events_changed=False)
    return len(patients)
