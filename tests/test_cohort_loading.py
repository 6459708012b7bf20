"""The cohort refresher's loading path gives the same cohort, and so the same reports, as the
plain decoding it replaced (every event of every member through `TrialEvent.from_json`); and its
streamed path (a kind's members reduced chunk by chunk, their events dropped) the same reports."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from sqlalchemy import Engine, event, text

from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.partial_dates import parse_partial_date
from service.derivation.catalog import load_catalog
from service.infra.db import make_engine
from service.infra.settings import Settings
from service.reads.access import read
from service.reads.cohort_refresher import _cohort, _records, _screened, _stored, kind_report
from service.repositories import sql, study_subjects, trial_events
from service.studies.cirae.reduction import reduce_member
from service.studies.kind import CohortData, CohortReport, ListingRow, Member
from service.studies.registry import kind_of
from tests.kit.cli import run_trialbridge

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "bench" / "generate.py"
STUDIES = ("NCT06088771", "cirae-dupilumab")
# The site's zone (the generated dates are calendar days, so it moves none of them).
ZONE = ZoneInfo("America/New_York")


@pytest.fixture(scope="module")
def loaded(
    backend: str, new_database: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Engine, Settings]]:
    """A generated cohort (60 patients of seed 5: subjects, candidates, every cirAE group) loaded
    with `trialbridge load`, as the benchmarks load theirs."""
    folder = tmp_path_factory.mktemp("generated")
    command = [sys.executable, str(GENERATOR), "--out", str(folder), "--patients", "60"]
    subprocess.run([*command, "--seed", "5"], check=True, capture_output=True, timeout=120)
    url = str(new_database(backend))
    files = [str(p) for p in sorted(folder.glob("part-*.ndjson"))]
    done = run_trialbridge(url, "load", *files, cwd=folder)
    assert done.returncode == 0, done.stderr[-2000:]
    settings = Settings(database_url=url)
    engine = make_engine(settings)
    yield engine, settings
    engine.dispose()


def _plain_cohort(engine: Engine, study_id: str) -> CohortData:
    """The cohort as the refresher read it before: whole rows, every payload decoded in full."""
    with engine.connect() as conn:
        subjects = conn.execute(
            text(
                "SELECT patient_id, subject_id, status, day1 FROM study_subject "
                "WHERE study_id = :s ORDER BY subject_id"
            ),
            {"s": study_id},
        ).all()
        events: dict[str, list[TrialEvent]] = {r.patient_id: [] for r in subjects}
        for row in conn.execute(text("SELECT patient_id, payload FROM trial_event ORDER BY pk")):
            if row.patient_id in events:
                event = TrialEvent.from_json(orjson.loads(row.payload), row.patient_id)
                events[row.patient_id].append(event.in_zone(ZONE))
        screened = conn.execute(
            text("SELECT * FROM eligibility_result WHERE study_id = :s ORDER BY patient_id"),
            {"s": study_id},
        ).all()
    members = [
        Member(
            r.patient_id,
            r.subject_id,
            r.status,
            r.day1
            if isinstance(r.day1, dt.date) or r.day1 is None
            else dt.date.fromisoformat(r.day1),
            events[r.patient_id],
        )
        for r in subjects
    ]
    return CohortData(members, [_screened(r) for r in screened])


def _seal(study_id: str, cited: Any) -> str:
    """A deterministic stand-in for evidence sealing (the cited source, as text)."""
    return repr(cited)


@pytest.mark.parametrize("study_id", STUDIES)
def test_loaded_cohort_and_report_equal_those_of_plain_decoding(
    loaded: tuple[Engine, Settings], study_id: str
) -> None:
    """Same members (ids, status, Day 1, every event equal, in the same order), same screening
    list, and the same stored report (outcomes, figures' data, listing, document)."""
    engine, settings = loaded
    protocol = load_catalog(settings).protocols[study_id]
    plain = _plain_cohort(engine, study_id)
    cohort = read(engine, lambda s: _cohort(s, study_id, ZONE))
    assert len(cohort.members) == len(plain.members) > 0
    assert len(cohort.screened) == len(plain.screened)
    if study_id == "NCT06088771":
        assert len(plain.screened) > 0
    for new, old in zip(cohort.members, plain.members, strict=True):
        assert (new.patient_id, new.subject_id, new.status, new.day1) == (
            old.patient_id,
            old.subject_id,
            old.status,
            old.day1,
        )
        assert list(new.events) == list(old.events)
    assert list(cohort.screened) == list(plain.screened)
    new_report = _stored(study_id, kind_report(protocol, cohort), _seal, kind_of(protocol).listings)
    old_report = _stored(study_id, kind_report(protocol, plain), _seal, kind_of(protocol).listings)
    assert new_report == old_report


@pytest.mark.parametrize("chunk", [7, 400])
def test_streamed_cohort_gives_the_plain_report(
    loaded: tuple[Engine, Settings], chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cirAE reduces its members as their chunk is read (7: six chunks, the last of 5; 400: one):
    the records equal the plain members' reductions, in subject order, and the stored report
    (outcomes, figures' data, listing, document) equals the plain one."""
    monkeypatch.setattr(sql, "CHUNK", chunk)
    engine, settings = loaded
    study_id = "cirae-dupilumab"
    protocol = load_catalog(settings).protocols[study_id]
    assert kind_of(protocol).reduce_member is reduce_member
    plain = _plain_cohort(engine, study_id)
    streamed = read(engine, lambda s: _cohort(s, study_id, ZONE, protocol))
    assert streamed.members == ()
    assert streamed.records is not None
    assert len(streamed.records) == len(plain.members) == 40
    assert list(streamed.records) == [reduce_member(protocol, m) for m in plain.members]
    assert sum(r.episode is not None for r in streamed.records) > 0  # cirAE subjects described
    assert list(streamed.screened) == list(plain.screened)
    new_report = _stored(
        study_id, kind_report(protocol, streamed), _seal, kind_of(protocol).listings
    )
    old_report = _stored(study_id, kind_report(protocol, plain), _seal, kind_of(protocol).listings)
    assert new_report == old_report


def test_a_kind_without_a_reduction_keeps_its_members(loaded: tuple[Engine, Settings]) -> None:
    """NCT06088771 has no `reduce_member`: given its protocol, the refresher still hands its
    report every member with all of its events."""
    engine, settings = loaded
    study_id = "NCT06088771"
    protocol = load_catalog(settings).protocols[study_id]
    assert kind_of(protocol).reduce_member is None
    cohort = read(engine, lambda s: _cohort(s, study_id, ZONE, protocol))
    plain = _plain_cohort(engine, study_id)
    assert cohort.records is None
    assert [(m.patient_id, list(m.events)) for m in cohort.members] == [
        (m.patient_id, list(m.events)) for m in plain.members
    ]


def test_events_and_days_by_chunk_yields_each_chunk_of_patients_once(
    loaded: tuple[Engine, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One dict per chunk of 7 patients (every patient a key, even without events), together
    the events `events_of` reads, in the same order."""
    monkeypatch.setattr(sql, "CHUNK", 7)
    engine, _ = loaded
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(text("SELECT DISTINCT patient_id FROM trial_event"))]
    ids = [*sorted(ids), "no-such-patient"]

    def both(session: Any) -> tuple[list[dict[str, list[TrialEvent]]], dict[str, Any]]:
        streamed = trial_events.events_and_days_by_chunk(session, ids, zone=ZONE, days_only=())
        chunks = [events for events, _ in streamed]
        return chunks, trial_events.events_of(session, ids, zone=ZONE)

    chunks, whole = read(engine, both)
    assert [list(c) for c in chunks] == [ids[i : i + 7] for i in range(0, len(ids), 7)]
    assert {p: e for c in chunks for p, e in c.items()} == whole
    assert chunks[-1]["no-such-patient"] == []


def _patients_with_events(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT DISTINCT patient_id FROM trial_event"))
        return sorted(r[0] for r in rows)


def test_the_next_chunk_is_fetched_ahead_and_closing_waits_for_it(
    loaded: tuple[Engine, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the caller holds one chunk, the next one's statement has already been sent on the
    helper thread (the database works while Python decodes); closing the stream early waits for
    that fetch to end (it is using the connection), fetches nothing more, and leaves the session
    usable, on both backends (issue 19)."""
    monkeypatch.setattr(sql, "CHUNK", 7)
    engine, _ = loaded
    ids = _patients_with_events(engine)
    assert len(ids) > 14  # three chunks at least
    fetched: list[tuple[str, str]] = []  # (thread, first patient of the chunk), as sent
    second_sent, release = threading.Event(), threading.Event()
    original = trial_events._fetch_payloads

    def noted(cursor: Any, postgres: bool, chunk: Any, kinds: Any) -> Any:
        fetched.append((threading.current_thread().name, chunk[0]))
        if len(fetched) == 2:
            second_sent.set()
            assert release.wait(30)  # held until the test lets it go
        return original(cursor, postgres, chunk, kinds)

    monkeypatch.setattr(trial_events, "_fetch_payloads", noted)

    def first_then_close(session: Any) -> tuple[list[str], bool, bool, int]:
        stream = trial_events.events_and_days_by_chunk(session, ids, zone=ZONE, days_only=())
        first, _ = next(stream)
        assert second_sent.wait(30)  # sent without the caller asking for it
        closer = threading.Thread(target=stream.close)
        closer.start()
        closer.join(0.2)
        waited = closer.is_alive()  # close() is waiting for the fetch in flight
        release.set()
        closer.join(30)
        closed = not closer.is_alive()
        count = session.execute(text("SELECT COUNT(*) FROM trial_event")).scalar_one()
        return list(first), waited, closed, count

    first, waited, closed, count = read(engine, first_then_close)
    assert first == ids[:7]
    assert (waited, closed) == (True, True)
    assert [patient for _, patient in fetched] == [ids[0], ids[7]]  # not the third chunk
    assert all(thread.startswith("event-prefetch") for thread, _ in fetched)
    with engine.connect() as conn:
        assert count == conn.execute(text("SELECT COUNT(*) FROM trial_event")).scalar_one()


def test_a_failing_reduction_ends_the_fetch_ahead_before_the_session_ends(
    loaded: tuple[Engine, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kind's reduction that raises on the first member: the fetch of the next chunk (slowed
    here) has ended before the session gives its connection back to the pool, so no statement
    runs on a connection another request may then hold (issue 19)."""
    monkeypatch.setattr(sql, "CHUNK", 7)
    engine, settings = loaded
    protocol = load_catalog(settings).protocols["cirae-dupilumab"]
    in_flight: list[int] = [0]
    at_checkin: list[int] = []
    original = trial_events._fetch_payloads

    def slowed(cursor: Any, postgres: bool, chunk: Any, kinds: Any) -> Any:
        in_flight[0] += 1
        try:
            time.sleep(0.2)  # the window in which an early check-in would overlap it
            return original(cursor, postgres, chunk, kinds)
        finally:
            in_flight[0] -= 1

    def failing(_protocol: Any, _member: Member) -> Any:
        raise RuntimeError("the reduction failed")

    def reduce_all(session: Any) -> Any:
        rows = study_subjects.study_subjects(session, "cirae-dupilumab")
        assert len(rows) > 7  # a second chunk to fetch ahead
        return _records(session, rows, ZONE, protocol, failing)

    monkeypatch.setattr(trial_events, "_fetch_payloads", slowed)
    listener = lambda *_: at_checkin.append(in_flight[0])  # noqa: E731
    event.listen(engine.pool, "checkin", listener)
    try:
        with pytest.raises(RuntimeError, match="the reduction failed"):
            read(engine, reduce_all)
    finally:
        event.remove(engine.pool, "checkin", listener)
    assert at_checkin == [0]


def test_a_kind_read_only_for_its_day_gives_the_day_its_event_would() -> None:
    """A visit or lab result streamed for its day only (`days_only`) gives the day its decoded
    event gives as a day seen (cirAE's last data point): 01:30Z on 3 July is 2 July in New York,
    a month-precision result and a request give no day, and a patient keeps its latest day."""
    source = SourceRef("Observation", "o", 1)

    def stored(kind: EventKind, date: str, values: dict[str, Any]) -> dict[str, Any]:
        event = TrialEvent(kind, "p", source, parse_partial_date(date), None, values)
        data: dict[str, Any] = orjson.loads(orjson.dumps(event.to_json()))  # as stored
        return data

    rows = [
        (stored(EventKind.DATA_POINT, "2022-07-03T01:30:00Z", {}), dt.date(2022, 7, 2)),
        (stored(EventKind.ENCOUNTER, "2022-07-03T01:30:00+02:00", {}), dt.date(2022, 7, 3)),
        (stored(EventKind.DATA_POINT, "2022-08", {}), None),
        (stored(EventKind.DATA_POINT, "2022-09-01", {"intent": "order"}), None),
        (stored(EventKind.ENCOUNTER, "2022-06-30", {"class": "AMB"}), dt.date(2022, 6, 30)),
    ]
    decode = trial_events._Decoder(ZONE)
    for data, day in rows:
        event = decode.event(data, "p")
        request = isinstance(event.values.get("intent"), str)
        as_event = None if request or event.date is None else event.date.day
        assert decode.day_seen(data) == as_event == day, data


def test_rows_of_a_listing_the_kind_does_not_serve_are_refused() -> None:
    """A report with swimmer rows for a kind that serves only `subjects` would store rows no
    endpoint answers (404 not_applicable): the refresher refuses it instead of storing it."""
    rows = (ListingRow("S-1", {"dose_days": [0]}),)
    report = CohortReport({"counts": {}}, {}, swimmer=rows)
    stored = _stored("x", report, _seal, frozenset({"subjects", "swimmer"}))
    assert {n: [(r.subject_id, r.body) for r in rows] for n, rows in stored.listings.items()} == {
        "swimmer": [("S-1", '{"subject_id":"S-1","dose_days":[0]}')]
    }
    with pytest.raises(ValueError, match="swimmer"):
        _stored("x", report, _seal, frozenset({"subjects"}))
