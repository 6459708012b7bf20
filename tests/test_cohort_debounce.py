"""When the refresher computes a changed study (issue 19: "debounced"): once the study has been
quiet for the debounce, or after the longest delay under writes that never stop, and once for a
burst. Driven pass by pass on a monotonic clock the test moves, against a real database."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from fhir_mapping.bundles import resource_entry
from service.derivation.catalog import load_catalog
from service.derivation.refresh import Derivation
from service.fhir.ingest import WriteContext, apply_entries
from service.infra import migrate
from service.infra.clock import utcnow
from service.infra.db import make_engine
from service.infra.settings import Settings
from service.privacy.evidence import EvidenceCodec
from service.reads import cohort_refresher
from service.reads.cohort_refresher import CohortRefresher
from service.repositories.unit_of_work import UnitOfWork
from tests.kit import fhir as kit

NCT = "NCT06088771"


def _enrol(engine: Engine, derivation: Derivation, pid: str) -> None:
    """A committed write that changes NCT06088771's cohort: a new enrolled subject."""
    ctx = WriteContext(now=utcnow(), source="test", request_id=pid)
    resources = [
        kit.patient(id=pid, gender="female", birth_date="1960-01-01"),
        kit.research_subject(id=f"{pid}-rs", patient=pid, start="2025-03-03"),
    ]
    entries = [resource_entry(r, method="PUT", path="", resource_id=r["id"]) for r in resources]
    with Session(engine) as session:
        uow = UnitOfWork(session)
        apply_entries(uow, entries, ctx)
        derivation.after_write(uow)
        uow.commit()


def test_a_burst_is_computed_once_when_quiet_and_steady_writes_by_the_longest_delay(
    new_database: Any, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(database_url=new_database(backend))
    engine = make_engine(settings)
    migrate.upgrade(engine)
    catalog = load_catalog(settings)
    now = [1000.0]
    clock = SimpleNamespace(
        monotonic=lambda: now[0], perf_counter=time.perf_counter, sleep=time.sleep
    )
    monkeypatch.setattr(cohort_refresher, "time", clock)
    refresher = CohortRefresher(
        engine,
        catalog.protocols,
        EvidenceCodec(engine).seal,
        interval_seconds=60,
        debounce_seconds=10,
        max_delay_seconds=30,
    )

    def computed(at: float) -> list[str]:
        now[0] = at
        return [r.study_id for r in refresher.run_pass() if r.outcome == "computed"]

    try:
        study = kit.research_study()
        entries = [resource_entry(study, method="PUT", path="", resource_id=study["id"])]
        with Session(engine) as session:
            uow = UnitOfWork(session)
            apply_entries(uow, entries, WriteContext(now=utcnow(), source="t", request_id="s"))
            uow.commit()
        assert sorted(computed(1000)) == sorted(catalog.protocols)  # no snapshot yet: at once
        # a burst: three writes 4 s apart, then quiet
        for n, at in enumerate((1000.0, 1004.0, 1008.0)):
            _enrol(engine, catalog.derivation, f"burst-{n}")
            assert computed(at) == []  # still changing
        assert computed(1017.9) == []  # 9.9 s quiet: not yet
        assert computed(1018.0) == [NCT]  # 10 s quiet: once, for the whole burst
        assert computed(1030.0) == []  # nothing new
        # steady writes every 5 s: computed when the first of them is 30 s old
        for n, at in enumerate(range(2000, 2030, 5)):
            _enrol(engine, catalog.derivation, f"steady-{n}")
            assert computed(float(at)) == [], at
        _enrol(engine, catalog.derivation, "steady-last")
        assert computed(2030.0) == [NCT]
    finally:
        engine.dispose()
