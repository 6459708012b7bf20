"""Concurrent writes derive what the same writes one after the other derive (PostgreSQL).

Under READ COMMITTED each writer's derivation reads only what others have committed. Transaction A
writes and derives, and stays open while B writes, derives and commits (or waits for A); then A
commits. Without the derivation locks each derives without the other's rows and the subject ends
incomplete (write skew): a patient's enrollment and Day-1 dose, or a ResearchSubject and the
ResearchStudy that makes it an enrollment in NCT06088771. SQLite is not concerned: its writers
are serialised (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session

from fhir_mapping.bundles import resource_entry
from service.derivation.catalog import load_catalog
from service.derivation.refresh import Derivation
from service.fhir import interactions
from service.fhir.ingest import WriteContext, apply_entries
from service.fhir.interactions import FhirService
from service.infra import migrate
from service.infra.clock import utcnow
from service.infra.db import make_engine
from service.infra.settings import Settings
from service.repositories import derivation_locks
from service.repositories.unit_of_work import UnitOfWork
from tests.kit import fhir as kit
from tests.kit import nct
from tests.kit.pg_activity import waiting_on_a_lock

pytestmark = [pytest.mark.postgres]

PID = "p-race"


def _write(engine: Engine, derivation: Derivation, resource: dict[str, Any]) -> UnitOfWork:
    """Store `resource` and derive, in a transaction left open (the caller commits it)."""
    uow = UnitOfWork(Session(engine))
    entry = resource_entry(resource, method="PUT", path="", resource_id=resource["id"])
    apply_entries(uow, [entry], WriteContext(now=utcnow(), source="test", request_id="r"))
    derivation.after_write(uow)
    return uow


def _commit(uow: UnitOfWork) -> None:
    try:
        uow.commit()
    finally:
        uow.session.close()


def _interleaved(
    new_database: Any, stored: list[dict[str, Any]], first: dict[str, Any], second: dict[str, Any]
) -> list[tuple[str, str, str]]:
    """`stored` committed; then `first` written and derived, and held open while `second` is
    written, derived and committed (or waits for `first`); then `first` commits. The subjects."""
    settings = Settings(database_url=new_database("postgres"))
    engine = make_engine(settings)
    migrate.upgrade(engine)
    derivation = load_catalog(settings).derivation
    try:
        for resource in stored:
            _commit(_write(engine, derivation, resource))
        held = _write(engine, derivation, first)  # derived, not committed
        errors: list[BaseException] = []

        def other() -> None:
            try:
                _commit(_write(engine, derivation, second))
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        deadline = time.monotonic() + 120  # a guard against a hang, not a timed assertion
        while thread.is_alive() and not waiting_on_a_lock(engine):
            assert time.monotonic() < deadline, "the second writer neither ended nor waited"
            time.sleep(0.01)
        _commit(held)
        thread.join(120)
        assert not thread.is_alive()
        assert errors == []
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT study_id, enrolled_on, day1 FROM study_subject WHERE patient_id = :p "
                    "AND study_id = :s"
                ),
                {"p": PID, "s": nct.NCT},
            ).all()
        return [(s, str(e), str(d)) for s, e, d in rows]
    finally:
        engine.dispose()


def test_two_writes_of_one_patient_derive_the_subject_from_both(new_database: Any) -> None:
    # the enrollment gives the subject, the dose its Day 1: each writer alone sees only its own
    subjects = _interleaved(
        new_database,
        [kit.patient(id=PID, gender="female"), kit.research_study()],
        nct.enrollment(PID)[f"{PID}-rs"],
        nct.study_doses(PID)[f"{PID}-cemi"],
    )
    assert subjects == [(nct.NCT, str(nct.ENROLLED), str(nct.DAY1))]


def test_an_enrollment_written_with_its_study_names_the_study(new_database: Any) -> None:
    # the ResearchSubject is for NCT06088771 only by its ResearchStudy, written at the same time
    subjects = _interleaved(
        new_database,
        [kit.patient(id=PID, gender="female")],
        kit.research_study(),
        nct.enrollment(PID)[f"{PID}-rs"],
    )
    assert subjects == [(nct.NCT, str(nct.ENROLLED), "None")]


def test_a_write_of_many_patients_takes_one_lock_instead_of_one_each(new_database: Any) -> None:
    # PostgreSQL's lock table is shared and bounded: a large write must not fill it
    engine = make_engine(Settings(database_url=new_database("postgres")))
    few = [f"p{n}" for n in range(derivation_locks.MANY)]
    held = text(
        "SELECT mode, count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND pid = pg_backend_pid() GROUP BY mode ORDER BY mode"
    )
    try:
        counts = []
        for patients in ([], few, [*few, "one more"]):
            with Session(engine) as session:
                derivation_locks.lock_patients(session, patients)
                counts.append([tuple(r) for r in session.execute(held)])
                session.rollback()
        assert counts == [
            [],
            [("ExclusiveLock", derivation_locks.MANY), ("ShareLock", 1)],
            [("ExclusiveLock", 1)],
        ]
    finally:
        engine.dispose()


LOCAL_PROTOCOL = {"system": "urn:example:hospital:protocols", "value": "LUNG-42"}


def _study_with_a_local_number() -> dict[str, Any]:
    """NCT06088771's ResearchStudy, also carrying the hospital's own protocol number."""
    study = kit.research_study()
    study["identifier"] = [*study["identifier"], LOCAL_PROTOCOL]
    return study


def _enrollment_naming_the_study_by_identifier() -> dict[str, Any]:
    """A ResearchSubject whose `study` is a logical reference by the hospital's protocol number
    (no id, no NCT number): only the stored ResearchStudy, found through the identifier index,
    makes it an enrollment in NCT06088771; until that study commits, the look-up misses."""
    subject = dict(nct.enrollment(PID)[f"{PID}-rs"])
    subject["study"] = {"type": "ResearchStudy", "identifier": LOCAL_PROTOCOL}
    return subject


@pytest.mark.parametrize("enrollment_first", [True, False], ids=["look-up-missed", "study-held"])
def test_an_enrollment_naming_its_study_by_identifier_is_derived_in_either_order(
    new_database: Any, enrollment_first: bool
) -> None:
    # enrollment first: its mapping finds no study by the protocol number (a miss) and holds the
    # identifier's lock; the study's writer waits for it, then finds the dependency and remaps.
    # Study first, held open: the enrollment's look-up waits for it and reads it once committed.
    enrollment, study = _enrollment_naming_the_study_by_identifier(), _study_with_a_local_number()
    first, second = (enrollment, study) if enrollment_first else (study, enrollment)
    subjects = _interleaved(new_database, [kit.patient(id=PID, gender="female")], first, second)
    assert subjects == [(nct.NCT, str(nct.ENROLLED), "None")]


def test_writers_that_read_what_the_other_writes_deadlock_and_both_land(
    new_database: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each transaction writes a Medication and a MedicationRequest naming the *other's*
    # Medication. Both hold their writes' target locks (exclusive) before either mapping asks
    # for the other's Medication (shared): a cycle across two statements, which the key order
    # within one statement cannot prevent. PostgreSQL breaks it (SQLSTATE 40P01); the write path
    # retries the victim, which then reads the winner's committed Medication. (The victim's
    # error used to be swallowed as a mapper failure, and the aborted transaction then failed.)
    settings = Settings(database_url=new_database("postgres"))
    engine = make_engine(settings)
    migrate.upgrade(engine)
    store = FhirService(engine, settings)
    both_wrote = threading.Barrier(2, timeout=60)
    waited: set[int] = set()
    real_lock_read = derivation_locks.lock_read

    broken: list[BaseException] = []  # a mapping swallows what is not the database's error

    def lock_read_once_both_wrote(session: Session, targets: Any) -> None:
        if threading.get_ident() not in waited:  # the first attempt only: a retry goes on
            waited.add(threading.get_ident())
            try:
                both_wrote.wait()
            except threading.BrokenBarrierError as exc:
                broken.append(exc)
                raise
        real_lock_read(session, targets)

    monkeypatch.setattr(derivation_locks, "lock_read", lock_read_once_both_wrote)
    refused: list[str | None] = []
    real_retryable = interactions._retryable

    def noting_retryable(exc: BaseException) -> bool:
        refused.append(getattr(getattr(exc, "orig", None), "sqlstate", None))
        return real_retryable(exc)

    monkeypatch.setattr(interactions, "_retryable", noting_retryable)
    names = {"a": "Libtayo 350 MG/7 ML Injection", "b": "Dupixent 300 MG/2 ML Injection"}

    def transaction(mine: str, other: str) -> bytes:
        return kit.put_all(
            kit.medication(id=f"med-{mine}", code=names[mine]),
            kit.medication_request(
                id=f"mr-{mine}",
                patient=f"p-{mine}",
                medicationReference={"reference": f"Medication/med-{other}"},
            ),
        )

    answers: dict[str, Any] = {}

    def write(mine: str, other: str) -> None:
        try:
            ctx = store.context("test")
            answers[mine] = store.bundle_json(transaction(mine, other), ctx=ctx)[0]
        except BaseException as exc:  # reported by the assertion below
            answers[mine] = exc

    threads = [threading.Thread(target=write, args=pair) for pair in (("a", "b"), ("b", "a"))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert [t.is_alive() for t in threads] == [False, False]
        assert broken == []  # both writers reached their mapping's read while holding their writes
        assert answers == {"a": "transaction-response", "b": "transaction-response"}
        assert refused == ["40P01"]  # one deadlock, one victim, retried once
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT source_id, payload FROM trial_event "
                    "WHERE source_type = 'MedicationRequest' ORDER BY source_id"
                )
            ).all()
        drugs = {r.source_id: orjson.loads(r.payload)["values"]["medication"] for r in rows}
        # each request is mapped with the other transaction's Medication, whoever won
        assert drugs == {"mr-a": names["b"], "mr-b": names["a"]}
    finally:
        engine.dispose()
