"""Cached per-subject answers (service.reads.subject_cache) equal freshly computed ones after
every kind of write that changes them: a new event, a correction, a deletion, on both backends,
and after a write through another server process."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import BaseModel, TypeAdapter
from sqlalchemy import Engine, create_engine, text

from api import schemas, study_routes, views
from service.derivation.catalog import load_catalog
from service.infra.db import make_engine
from service.infra.loop_reads import LoopReads
from service.infra.settings import Settings
from service.privacy.evidence import EvidenceCodec
from service.reads.study_reader import StudyReader
from service.reads.subject_cache import SubjectCache
from tests.conftest import FHIR_JSON, LiveServer, start_server, stop_server
from tests.kit import fhir as kit
from tests.kit.client import put_resources
from tests.test_study_api import _enrolled_patient

NCT = "NCT06088771"
READS = ("timeline", "outcomes", "eligibility")


@pytest.fixture
def api(server: LiveServer, fhir: httpx.Client) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=60) as client:
        yield client


def _served(api: httpx.Client, subject_id: str, read: str) -> dict[str, Any]:
    answer = api.get(f"/studies/{NCT}/subjects/{subject_id}/{read}")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    body: dict[str, Any] = answer.json()
    return body


def _fresh(server: LiveServer, engine: Engine, subject_id: str, read: str) -> dict[str, Any]:
    """The answer computed now from the database, by the uncached service path and views."""
    catalog = load_catalog(server.settings)
    reader = StudyReader(engine, catalog.protocols, server.settings.site_zone(), SubjectCache(0))
    codec = EvidenceCodec(engine)

    def seal(cited: Any) -> str:
        return codec.seal(NCT, cited)

    if read == "timeline":
        return views.timeline(reader.timeline(NCT, subject_id), seal)
    if read == "outcomes":
        return views.subject_endpoints(reader.outcomes(NCT, subject_id), seal)
    return views.candidate_eligibility(reader.subject_eligibility(NCT, subject_id, None), seal)


MODELS: dict[str, type[BaseModel]] = {
    "timeline": schemas.Timeline,
    "outcomes": schemas.SubjectOutcomesOut,
    "eligibility": schemas.EligibilityOut,
}


def _same(served: dict[str, Any], fresh: dict[str, Any], read: str) -> None:
    """Equal once `fresh` went through the route's response model, as the uncached route sent
    it (defaults filled in, wire types)."""
    adapter = TypeAdapter(MODELS[read])
    wire = json.loads(adapter.dump_json(adapter.validate_python(fresh)))
    if read != "eligibility":  # the time of the request, in both
        served, wire = dict(served), dict(wire)
        served.pop("computed_at")
        wire.pop("computed_at")
    assert served == wire


def _token(engine: Engine, subject_id: str, table: str = "study_subject") -> str:
    with engine.connect() as conn:
        token = conn.execute(
            text(f"SELECT read_token FROM {table} WHERE subject_id = :s"), {"s": subject_id}
        ).scalar_one()
    assert isinstance(token, str)
    assert len(token) == 32
    return token


def _all_served(api: httpx.Client, subject_id: str) -> dict[str, dict[str, Any]]:
    return {read: _served(api, subject_id, read) for read in READS}


def _check_current(
    api: httpx.Client, server: LiveServer, engine: Engine, subject_id: str
) -> dict[str, dict[str, Any]]:
    """Every read twice (the second from the cache), each equal to a fresh computation."""
    first = _all_served(api, subject_id)
    again = _all_served(api, subject_id)
    for read in READS:
        _same(again[read], first[read], read)
        _same(again[read], _fresh(server, engine, subject_id, read), read)
    return again


def _kinds(timeline: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in timeline["events"]]


AE = kit.adverse_event(
    id="p1-ae", event="Pneumonitis", date="2025-04-02", grade="3", outcome="resolved"
)


def test_cached_reads_follow_a_new_event_a_correction_and_a_deletion(
    api: httpx.Client, fhir: httpx.Client, server: LiveServer, engine: Engine
) -> None:
    """Each write renews the subject's read token; what is served is what a fresh computation
    gives, before and after, and the change the write made shows in it."""
    _enrolled_patient(fhir)
    subject_id = api.get(f"/studies/{NCT}/subjects").json()["subjects"][0]["subject_id"]
    before = _check_current(api, server, engine, subject_id)
    token = _token(engine, subject_id)
    assert _kinds(before["timeline"]).count("adverse_event") == 0

    # a new event
    assert fhir.put("/AdverseEvent/p1-ae", json=AE).status_code == 201
    assert _token(engine, subject_id) != token
    token = _token(engine, subject_id)
    added = _check_current(api, server, engine, subject_id)
    assert _kinds(added["timeline"]).count("adverse_event") == 1
    assert len(added["timeline"]["events"]) == len(before["timeline"]["events"]) + 1
    assert added["outcomes"]["safety"] != before["outcomes"]["safety"]

    # a correction: the lobectomy was on Day 22, not Day 18
    lobectomy = kit.procedure(
        id="p1-lob", code="Right upper lobectomy", performed="2025-03-31T10:00:00-05:00"
    )
    assert fhir.put("/Procedure/p1-lob", json=lobectomy).status_code == 200
    assert _token(engine, subject_id) != token
    token = _token(engine, subject_id)
    corrected = _check_current(api, server, engine, subject_id)
    resection = [e for e in corrected["timeline"]["events"] if e["kind"] == "lung_resection"]
    assert [e["study_day"] for e in resection] == [22]
    assert (
        added["outcomes"]["time_to_surgery_days"],
        corrected["outcomes"]["time_to_surgery_days"],
    ) == (17, 21)

    # a deletion
    assert fhir.delete("/AdverseEvent/p1-ae").status_code in (200, 204)
    assert _token(engine, subject_id) != token
    deleted = _check_current(api, server, engine, subject_id)
    assert _kinds(deleted["timeline"]).count("adverse_event") == 0
    assert deleted["outcomes"]["safety"] == before["outcomes"]["safety"]


def test_a_write_through_another_process_is_seen(
    api: httpx.Client, fhir: httpx.Client, server: LiveServer, engine: Engine
) -> None:
    """The token is in the database: a server whose cache holds a subject's answers serves the
    new ones after another server wrote."""
    _enrolled_patient(fhir)
    subject_id = api.get(f"/studies/{NCT}/subjects").json()["subjects"][0]["subject_id"]
    cached = _check_current(api, server, engine, subject_id)
    other, thread, url = start_server(server.settings)
    try:
        with httpx.Client(base_url=f"{url}/fhir", headers=FHIR_JSON, timeout=60) as client:
            assert client.put("/AdverseEvent/p1-ae", json=AE).status_code == 201
    finally:
        stop_server(other, thread)
    now = _check_current(api, server, engine, subject_id)
    assert len(now["timeline"]["events"]) == len(cached["timeline"]["events"]) + 1


def test_a_subject_rederived_from_scratch_is_not_served_from_before(
    api: httpx.Client, fhir: httpx.Client, server: LiveServer, engine: Engine
) -> None:
    """Emptied and loaded again (same pseudonymous id), the subject gets a new token: the
    answers cached before are not served."""
    _enrolled_patient(fhir)
    subject_id = api.get(f"/studies/{NCT}/subjects").json()["subjects"][0]["subject_id"]
    first = _check_current(api, server, engine, subject_id)
    with engine.begin() as conn:  # the subject row goes with its events, as on an erasure
        conn.execute(text("DELETE FROM study_subject"))
    assert api.get(f"/studies/{NCT}/subjects/{subject_id}/timeline").status_code == 404
    _enrolled_patient(fhir)
    fhir.put("/AdverseEvent/p1-ae", json=AE)
    again = _check_current(api, server, engine, subject_id)
    assert len(again["timeline"]["events"]) == len(first["timeline"]["events"]) + 1


class _Bytes(bytes):
    pass


def test_the_cache_keeps_one_version_per_key_and_a_byte_budget() -> None:
    """A pure check of the LRU: a wrong version misses, the least recently used goes first,
    and an answer over a quarter of the budget is not kept."""
    cache: SubjectCache[bytes] = SubjectCache(100)
    cache.put("a", 1, b"x" * 20)
    cache.put("b", 1, b"y" * 20)
    assert cache.get("a", 2) is None
    assert cache.get("a", 1) == b"x" * 20  # a is now the most recently used
    cache.put("b", 2, b"z" * 20)  # replaces b's version 1
    assert cache.size_bytes == 40
    for key in ("c", "d", "e"):
        cache.put(key, 1, b"w" * 20)
    assert cache.size_bytes == 100
    cache.put("f", 1, b"v" * 20)  # over budget: a is the least recently used (b was re-put)
    assert cache.get("a", 1) is None
    assert cache.get("b", 2) == b"z" * 20
    assert cache.size_bytes == 100
    cache.put("g", 1, b"u" * 26)  # over 100 // 4
    assert cache.get("g", 1) is None
    off: SubjectCache[bytes] = SubjectCache(0)
    off.put("a", 1, b"x")
    assert off.get("a", 1) is None


# A lung-cancer candidate (NSCLC, confirmed, no clinical status): indeterminate; a rheumatoid
# arthritis diagnosis is an exclusion that is met: ineligible (as in test_webhooks).
CANDIDATE = partial(kit.condition, patient="p9", onset="2025-01-15", clinical=None)


def _eligibility(api: httpx.Client, server: LiveServer, engine: Engine, subject_id: str) -> Any:
    """The stored result read twice (the second from the cache), each equal to a fresh one."""
    first = _served(api, subject_id, "eligibility")
    again = _served(api, subject_id, "eligibility")
    assert again == first
    _same(again, _fresh(server, engine, subject_id, "eligibility"), "eligibility")
    return again


def test_a_stored_result_has_its_own_read_token_and_a_change_through_another_process_is_seen(
    api: httpx.Client, fhir: httpx.Client, server: LiveServer, engine: Engine
) -> None:
    """Every write of a candidate's stored result renews the row's own read token; a server that
    cached the answer serves the changed result written through another server process."""
    put_resources(
        fhir, kit.patient(id="p9", gender="female"), CANDIDATE(id="p9-dx", code=kit.NSCLC)
    )
    candidates = api.get(f"/studies/{NCT}/eligibility").json()["candidates"]
    assert len(candidates) == 1
    subject_id = candidates[0]["subject_id"]
    first = _eligibility(api, server, engine, subject_id)
    assert first["overall"] == "indeterminate"
    token = _token(engine, subject_id, "eligibility_result")

    # a write through this server that re-screens the candidate: a new token
    put_resources(fhir, kit.patient(id="p9", gender="female", birth_date="1960"))
    assert _token(engine, subject_id, "eligibility_result") != token
    token = _token(engine, subject_id, "eligibility_result")
    assert _eligibility(api, server, engine, subject_id)["overall"] == "indeterminate"

    # the exclusion, written through another process: the cached answer is not served again
    other, thread, url = start_server(server.settings)
    try:
        with httpx.Client(base_url=f"{url}/fhir", headers=FHIR_JSON, timeout=60) as client:
            put_resources(client, CANDIDATE(id="p9-ra", code=kit.RHEUMATOID_ARTHRITIS))
    finally:
        stop_server(other, thread)
    assert _token(engine, subject_id, "eligibility_result") != token
    changed = _eligibility(api, server, engine, subject_id)
    assert changed["overall"] == "ineligible"
    assert changed != first


def test_a_current_kept_answer_needs_no_worker_thread(
    api: httpx.Client,
    fhir: httpx.Client,
    server: LiveServer,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kept answer whose token is current is served from the event loop (SQLite's lookup on a
    connection of the loop thread's own, PostgreSQL's on an asynchronous one), and one whose
    token moved is read again in a worker thread, current."""
    _enrolled_patient(fhir)
    put_resources(
        fhir, kit.patient(id="p9", gender="female"), CANDIDATE(id="p9-dx", code=kit.NSCLC)
    )
    subject_id = api.get(f"/studies/{NCT}/subjects").json()["subjects"][0]["subject_id"]
    candidates = api.get(f"/studies/{NCT}/eligibility").json()["candidates"]
    (candidate,) = {c["subject_id"] for c in candidates} - {subject_id}  # p9
    paths = [(subject_id, "timeline"), (subject_id, "outcomes"), (candidate, "eligibility")]
    threaded: list[str] = []
    run = study_routes.run_in_threadpool  # type: ignore[attr-defined]

    async def counting(work: Any) -> Any:
        threaded.append("thread")
        return await run(work)

    monkeypatch.setattr(study_routes, "run_in_threadpool", counting)
    for who, read in paths:  # may be kept from an earlier test: read it once to be sure
        _served(api, who, read)
    threaded.clear()
    for who, read in paths:
        _same(_served(api, who, read), _fresh(server, engine, who, read), read)
    assert threaded == []

    # a new event and a new diagnosis: every token moves, each answer is read again, once
    assert api.get(f"/studies/{NCT}/subjects/{subject_id}/timeline").json()["events"]
    fhir.put("/AdverseEvent/p1-ae", json=AE)
    put_resources(fhir, CANDIDATE(id="p9-ra", code=kit.RHEUMATOID_ARTHRITIS))
    threaded.clear()
    for who, read in paths:
        _same(_served(api, who, read), _fresh(server, engine, who, read), read)
    assert len(threaded) == 3
    threaded.clear()
    for who, read in paths:
        _served(api, who, read)
    assert threaded == []
    assert _served(api, candidate, "eligibility")["overall"] == "ineligible"


def _sqlite_with_row(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO t VALUES ('a', 'one')")


LOOKUP = "SELECT v FROM t WHERE k = ?"


def test_loop_lookups_see_each_commit_and_never_wait_for_a_lock(tmp_path: Path) -> None:
    """Each lookup sees what was committed before it (no read transaction is left open between
    lookups); a lock SQLite would wait for gives "not known here" at once (busy_timeout 0), and
    the next lookup after it is answered again."""
    path = tmp_path / "loop.db"
    _sqlite_with_row(path)
    engine = make_engine(Settings(database_url=f"sqlite:///{path}"))  # WAL, as the service runs
    with engine.begin() as conn:
        conn.execute(text("SELECT 1"))
    reads = LoopReads(engine)
    assert reads.enabled
    assert reads.scalar(LOOKUP, ("a",)) == "one"
    assert reads.scalar(LOOKUP, ("b",)) is None
    with engine.begin() as conn:
        conn.execute(text("UPDATE t SET v = 'two' WHERE k = 'a'"))
    assert reads.scalar(LOOKUP, ("a",)) == "two"
    raw = reads._connection()
    assert raw is not None
    assert raw.execute("PRAGMA busy_timeout").fetchone() == (0,)
    assert raw.execute("PRAGMA query_only").fetchone() == (1,)
    engine.dispose()
    reads.close()

    # a rollback-journal database under an exclusive lock: readers would have to wait
    plain = tmp_path / "plain.db"
    _sqlite_with_row(plain)
    holder = sqlite3.connect(plain, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    locked = LoopReads(make_engine(Settings(database_url=f"sqlite:///{plain}")))
    assert locked.scalar(LOOKUP, ("a",)) is None
    holder.execute("ROLLBACK")
    assert locked.scalar(LOOKUP, ("a",)) == "one"
    holder.close()
    locked.close()


def test_loop_lookups_answer_nothing_for_a_missing_file_or_memory(tmp_path: Path) -> None:
    """A missing file is not created (a lookup is never a new empty database); an in-memory
    database is not looked up on the loop at all."""
    gone = tmp_path / "gone.db"
    missing = LoopReads(make_engine(Settings(database_url=f"sqlite:///{gone}")))
    assert missing.enabled
    assert missing.scalar(LOOKUP, ("a",)) is None
    assert not gone.exists()
    assert not LoopReads(create_engine("sqlite://")).enabled


def test_loop_lookups_on_either_backend_see_each_commit_and_no_uncommitted_change(
    engine: Engine,
) -> None:
    """On the loop, a lookup sees what was committed before it, and not another transaction's
    uncommitted change to the row (SQLite: WAL readers take no lock; PostgreSQL: MVCC)."""
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS loop_lookup"))
        conn.execute(text("CREATE TABLE loop_lookup (k VARCHAR(8) PRIMARY KEY, v VARCHAR(8))"))
        conn.execute(text("INSERT INTO loop_lookup VALUES ('a', 'one')"))
    reads = LoopReads(engine)
    sql = "SELECT v FROM loop_lookup WHERE k = ?"

    async def steps() -> list[Any]:
        seen = [await reads.lookup(sql, ("a",)), await reads.lookup(sql, ("b",))]
        with engine.begin() as conn:
            conn.execute(text("UPDATE loop_lookup SET v = 'two' WHERE k = 'a'"))
        seen.append(await reads.lookup(sql, ("a",)))
        with engine.connect() as writer:  # holds the row's lock, uncommitted
            writer.execute(text("UPDATE loop_lookup SET v = 'three' WHERE k = 'a'"))
            seen.append(await reads.lookup(sql, ("a",)))
            writer.rollback()
        await reads.aclose()
        reads.close()
        return seen

    try:
        assert asyncio.run(steps()) == ["one", None, "two", "two"]
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE loop_lookup"))


def test_an_unreachable_postgresql_answers_nothing_and_is_not_asked_again_at_once() -> None:
    """A lookup that cannot connect answers "not known here" (the thread path then reports the
    outage), and the next ones within RECONNECT_AFTER_SECONDS do not try again."""
    postgres = make_engine(Settings(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none"))
    reads = LoopReads(postgres)
    assert reads.enabled
    sql = "SELECT read_token FROM study_subject WHERE study_id = ? AND subject_id = ?"
    attempts: list[int] = []
    connect = psycopg.AsyncConnection.connect

    async def counted(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        return await connect(*args, **kwargs)

    async def steps() -> list[Any]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(psycopg.AsyncConnection, "connect", counted)
            return [await reads.lookup(sql, ("s", "x")) for _ in range(3)]

    assert asyncio.run(steps()) == [None, None, None]
    assert len(attempts) == 1
