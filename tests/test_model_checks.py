"""Bundles whose models are checked in a worker process answer and store exactly as in place.

Two live servers on the same database: one checks every model in place, the other sends every
atomic Bundle's model checks to its worker process. The same requests must get the same status,
the same OperationOutcome and the same rows, bad and good alike.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import Engine, text

from fhir_mapping.bundles import owed_checker, parse_bundle
from fhir_mapping.issues import Issue
from fhir_mapping.json_codec import loads
from service.errors import FhirError
from service.fhir import validation_workers
from service.fhir.interactions import FhirService
from service.fhir.spooled import RequestBytes
from service.fhir.validation_workers import Claims, ModelChecks, PendingVerdicts, default_processes
from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from tests.conftest import FHIR_JSON, clear_store, counts, start_server, stop_server
from tests.kit import fhir as kit

NO_ZONE = "2020-01-01T10:00:00"  # valid JSON, a valid string: only the model refuses it


@dataclass
class Served:
    """A live server and its model-check pool."""

    client: httpx.Client
    checks: ModelChecks


@pytest.fixture(scope="module")
def servers(database_url: str) -> Iterator[tuple[Served, Served]]:
    """(models in place, models in a worker) on the backend's database."""
    started: list[tuple[uvicorn.Server, Any]] = []
    served = []
    for processes in (0, 1):
        settings = Settings(
            database_url=database_url, model_check_processes=processes, model_check_min_entries=1
        )
        srv, thread, url = start_server(settings)
        started.append((srv, thread))
        app = srv.config.app
        assert isinstance(app, FastAPI)
        checks: ModelChecks = app.state.store.model_checks
        assert checks.processes == processes
        assert checks.wait_ready(120) is (processes == 1)
        served.append(Served(httpx.Client(base_url=f"{url}/fhir", headers=FHIR_JSON), checks))
    yield served[0], served[1]
    pids = served[1].checks.worker_pids()
    for (srv, thread), s in zip(started, served, strict=True):
        s.client.close()
        stop_server(srv, thread)
    for pid in pids:  # the worker stopped with its server
        with pytest.raises(ProcessLookupError):
            _wait_gone(pid)


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        os.kill(pid, 0)
        time.sleep(0.05)


def _wait_idle(checks: ModelChecks) -> None:
    """Until no job is in flight (an answer nobody asked for may still be running)."""
    deadline = time.monotonic() + 30
    while checks.busy():
        assert time.monotonic() < deadline, "a model-check job never finished"
        time.sleep(0.01)


def _post_both(
    servers: tuple[Served, Served], engine: Engine, body: bytes, *, offloaded: bool = True
) -> tuple[httpx.Response, httpx.Response, dict[str, int], dict[str, int]]:
    """Post to each server on an empty store; responses and row counts after each."""
    out: list[Any] = []
    for served in servers:
        clear_store(engine)
        _wait_idle(served.checks)
        before = served.checks.submitted
        response = served.client.post("", content=body)
        sent = served.checks.submitted - before
        assert sent == (served.checks.processes if offloaded else 0)
        out.append((response, counts(engine)))
    (in_place, in_place_rows), (worker, worker_rows) = out
    return in_place, worker, in_place_rows, worker_rows


def _empty(engine: Engine) -> dict[str, int]:
    clear_store(engine)
    return counts(engine)


URN = "urn:uuid:6f1c1a8e-27a4-4c55-9a3b-2f8d1d0c0101"
REFUSED = {
    "model only": (
        kit.transaction(
            kit.post_entry(kit.patient(mrn="m-1"), full_url=URN),
            kit.post_entry(kit.viable_tumour(subject=URN, effectiveDateTime=NO_ZONE)),
        ),
        400,
        ["Bundle.entry[1].resource.effectiveDateTime"],
    ),
    "walk and model": (
        kit.transaction(
            kit.post_entry(kit.patient(mrn="m-2", active="yes")),
            kit.post_entry(kit.viable_tumour(subject="Patient/x")),
            kit.entry(
                method="POST",
                url="Observation",
                resource={"resourceType": "Observation", "status": "final"},
            ),
        ),
        400,
        ["Bundle.entry[0].resource.active", "Bundle.entry[2].resource.code"],
    ),
    # in place the model fails first, so the dangling urn:uuid is never reached
    "model before a dangling reference": (
        kit.transaction(
            kit.post_entry(
                kit.viable_tumour(subject="urn:uuid:00000000-0000-4000-8000-00000000dead")
            ),
            kit.post_entry(kit.viable_tumour(subject="Patient/x", effectiveDateTime=NO_ZONE)),
        ),
        400,
        ["Bundle.entry[1].resource.effectiveDateTime"],
    ),
    "model before a missing conditional match": (
        kit.transaction(
            kit.post_entry(
                kit.viable_tumour(
                    subject="Patient?identifier=urn:mrn|nobody", effectiveDateTime=NO_ZONE
                )
            )
        ),
        400,
        ["Bundle.entry[0].resource.effectiveDateTime"],
    ),
    "dangling reference, models valid": (
        kit.transaction(
            kit.post_entry(
                kit.viable_tumour(subject="urn:uuid:00000000-0000-4000-8000-00000000dead")
            )
        ),
        400,
        ["Bundle.entry[0].resource.subject.reference"],
    ),
    "collection": (
        kit.transaction(
            {"resource": {**kit.patient(mrn="m-3"), "id": "m3"}},
            {"resource": {**kit.patient(mrn="m-4"), "birthDate": "2020-13-45"}},
            type="collection",
        ),
        400,
        ["Bundle.entry[1].resource.birthDate"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refusals_are_the_same_and_write_nothing(
    servers: tuple[Served, Served], engine: Engine, case: str
) -> None:
    body, status, where = REFUSED[case]
    empty = _empty(engine)
    in_place, worker, in_place_rows, worker_rows = _post_both(servers, engine, body)
    assert in_place.status_code == worker.status_code == status
    assert worker.headers["content-type"].startswith("application/fhir+json")
    assert worker.json() == in_place.json()
    assert [i["expression"][0] for i in worker.json()["issue"]] == where
    assert worker_rows == in_place_rows == empty


def _big_transaction(n_observations: int) -> bytes:
    return kit.transaction(
        kit.entry(
            method="PUT", url="Patient/big", resource={**kit.patient(mrn="big"), "id": "big"}
        ),
        *(
            kit.post_entry(kit.viable_tumour(subject="Patient/big", value=i))
            for i in range(n_observations)
        ),
    )


def test_a_valid_bundle_is_stored_the_same(servers: tuple[Served, Served], engine: Engine) -> None:
    in_place, worker, in_place_rows, worker_rows = _post_both(servers, engine, _big_transaction(40))
    assert in_place.status_code == worker.status_code == 200
    assert kit.statuses(worker.json()) == kit.statuses(in_place.json()) == ["201 Created"] * 41
    assert worker_rows == in_place_rows
    assert worker_rows["fhir_resource"] == 41
    assert worker_rows["fhir_reference"] == 80  # each subject indexed as `subject` and `patient`


def test_a_lost_worker_costs_speed_not_requests(
    servers: tuple[Served, Served], engine: Engine
) -> None:
    _, offloaded = servers
    [pid] = offloaded.checks.worker_pids()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ProcessLookupError):
        _wait_gone(pid)
    clear_store(engine)
    # the first Bundle after the loss is checked in place (or, caught mid-job, checked again)
    response = offloaded.client.post("", content=_big_transaction(25))
    assert response.status_code == 200
    assert kit.statuses(response.json()) == ["201 Created"] * 26
    refused = offloaded.client.post("", content=REFUSED["model only"][0])
    assert refused.status_code == 400
    assert refused.json()["issue"][0]["expression"] == [
        "Bundle.entry[1].resource.effectiveDateTime"
    ]
    assert counts(engine)["fhir_resource"] == 26
    # and a fresh worker takes over
    assert offloaded.checks.wait_ready(120)
    [fresh] = offloaded.checks.worker_pids()
    assert fresh != pid
    before = offloaded.checks.submitted
    again = offloaded.client.post("", content=REFUSED["model only"][0])
    assert again.status_code == 400
    assert offloaded.checks.submitted == before + 1


def test_a_batch_keeps_its_checks_in_place(servers: tuple[Served, Served], engine: Engine) -> None:
    body = kit.transaction(
        kit.post_entry(kit.patient(mrn="b-1")),
        kit.post_entry({**kit.patient(mrn="b-2"), "birthDate": "2020-13-45"}),
        type="batch",
    )
    in_place, worker, in_place_rows, worker_rows = _post_both(
        servers, engine, body, offloaded=False
    )
    assert in_place.status_code == worker.status_code == 200
    assert kit.statuses(worker.json()) == kit.statuses(in_place.json())
    assert kit.statuses(worker.json())[0] == "201 Created"
    assert kit.statuses(worker.json())[1].startswith("400")
    assert worker_rows == in_place_rows
    assert worker_rows["fhir_resource"] == 1


LOOK_ALIKES = {
    # the worker starts on the bytes before they are parsed; its answer is then never asked for
    "malformed": (
        b'{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": '
        b"{}}, " * 3 + b"]}",
        400,
    ),
    "not a Bundle": (
        json.dumps({**kit.patient(mrn="la-1"), "note": [{"resource": 1}]}).encode(),
        400,
    ),
    "a batch, spelled with an escape": (
        kit.transaction(
            kit.post_entry(kit.patient(mrn="la-2")),
            kit.post_entry({**kit.patient(mrn="la-3"), "birthDate": "2020-13-45"}),
            type="batch",
        ).replace(b'"batch"', b'"b\\u0061tch"'),
        200,
    ),
}


@pytest.mark.parametrize("case", list(LOOK_ALIKES))
def test_bodies_that_only_look_like_atomic_bundles(
    servers: tuple[Served, Served], engine: Engine, case: str
) -> None:
    body, status = LOOK_ALIKES[case]
    in_place, worker, in_place_rows, worker_rows = _post_both(servers, engine, body)
    assert in_place.status_code == worker.status_code == status
    if status == 200:  # a batch-response: one outcome per entry (and its own timestamps)
        assert kit.statuses(worker.json()) == kit.statuses(in_place.json())
        assert kit.statuses(worker.json())[0] == "201 Created"
        assert kit.statuses(worker.json())[1].startswith("400")
    else:
        assert worker.json() == in_place.json()
    assert worker_rows == in_place_rows
    assert worker_rows["fhir_resource"] == (1 if status == 200 else 0)
    _wait_idle(servers[1].checks)  # and the worker takes the next Bundle
    before = servers[1].checks.submitted
    assert servers[1].client.post("", content=_big_transaction(2)).status_code == 200
    assert servers[1].checks.submitted == before + 1


def _twice(body: bytes, member: bytes, nth: int = 1) -> bytes:
    """`body` with the `nth` occurrence of `"key": value` written twice (a duplicate key)."""
    at = -1
    for _ in range(nth):
        at = body.index(member, at + 1)
    return body[:at] + member + b", " + body[at:]


DUPLICATE_KEYS = {
    # strictly parsed, each body is refused for its duplicate key before anything else is looked at
    "in one entry": _twice(_big_transaction(3), b'"status": "final"', nth=2),
    "and a model failure": _twice(
        kit.transaction(
            kit.post_entry(kit.viable_tumour(subject="Patient/x", effectiveDateTime=NO_ZONE)),
            kit.post_entry(kit.viable_tumour(subject="Patient/y")),
        ),
        b'"status": "final"',
        nth=2,
    ),
    "and a walk failure": _twice(
        kit.transaction(
            kit.post_entry(kit.patient(mrn="dk-1", active="yes")),
            kit.post_entry(kit.viable_tumour(subject="Patient/y")),
        ),
        b'"status": "final"',
    ),
    "and a dangling urn:uuid": _twice(
        kit.transaction(
            kit.post_entry(
                kit.viable_tumour(subject="urn:uuid:00000000-0000-4000-8000-00000000dead")
            )
        ),
        b'"status": "final"',
    ),
    "that would make it a batch": _big_transaction(2).replace(
        b'"type": "transaction"', b'"type": "transaction", "type": "b\\u0061tch"'
    ),
    "in the envelope": _big_transaction(2).replace(
        b'"resourceType": "Bundle"', b'"resourceType": "Patient", "resourceType": "Bundle"'
    ),
}


@pytest.mark.parametrize("case", list(DUPLICATE_KEYS))
def test_duplicate_keys_are_refused_before_anything_else(
    servers: tuple[Served, Served], engine: Engine, case: str
) -> None:
    """The request thread parses a worker's Bundle without the duplicate-key check; the worker's
    strict parse answers for it."""
    body = DUPLICATE_KEYS[case]
    empty = _empty(engine)
    in_place, worker, in_place_rows, worker_rows = _post_both(servers, engine, body)
    assert in_place.status_code == worker.status_code == 400
    assert worker.json() == in_place.json()
    [issue] = worker.json()["issue"]
    assert issue["code"] == "structure"
    assert "duplicate key(s)" in issue["diagnostics"]
    assert worker_rows == in_place_rows == empty


class _AnswerlessChecks(ModelChecks):
    """A pool whose worker is lost during every job: each Bundle's checks fall back in place."""

    def __init__(self) -> None:
        super().__init__(1, 1)
        self.sent: list[bytes | str] = []

    def wanted(self, raw: bytes) -> bool:
        return True

    def submit(self, raw: bytes | str) -> PendingVerdicts | None:
        self.submitted += 1
        self.sent.append(raw)
        return PendingVerdicts(_done(error=BrokenProcessPool("lost")), lambda: None)


def test_without_the_workers_answer_the_bytes_are_parsed_strictly_here(
    engine: Engine, database_url: str
) -> None:
    checks = _AnswerlessChecks()
    store = FhirService(engine, Settings(database_url=database_url), model_checks=checks)
    empty = _empty(engine)
    with pytest.raises(FhirError) as caught:
        store.bundle_json(DUPLICATE_KEYS["in one entry"], ctx=store.context("test"))
    assert caught.value.status == 400
    assert "duplicate key(s) 'status'" in caught.value.issues[0].diagnostics
    assert counts(engine) == empty
    kind, results = store.bundle_json(_big_transaction(3), ctx=store.context("test"))
    assert (kind, [r.status for r in results]) == ("transaction-response", [201] * 4)
    assert checks.submitted == 2


def _spooled(data: bytes, folder: Path) -> RequestBytes:
    body, fd = RequestBytes.spool(str(folder))
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return body


def test_a_spooled_body_goes_to_the_worker_by_path_and_is_reparsed_from_its_file(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    """A large body waits on disk: the worker is sent its path, and without the worker's answer
    the strict parse reads the file again, with the same refusal as for bytes in memory."""
    checks = _AnswerlessChecks()
    store = FhirService(engine, Settings(database_url=database_url), model_checks=checks)
    empty = _empty(engine)
    with _spooled(DUPLICATE_KEYS["in one entry"], tmp_path) as refused:
        with pytest.raises(FhirError) as caught:
            store.bundle_json(refused, ctx=store.context("test"))
        assert checks.sent == [str(refused.path)]
    assert caught.value.status == 400
    assert "duplicate key(s) 'status'" in caught.value.issues[0].diagnostics
    assert counts(engine) == empty
    with _spooled(_big_transaction(3), tmp_path) as accepted:
        # a response without representations: the results do not keep what was stored
        kind, results = store.bundle_json(accepted, ctx=store.context("test", keep_content=False))
    assert (kind, [r.status for r in results]) == ("transaction-response", [201] * 4)
    assert [r.content for r in results] == [None] * 4
    assert list(tmp_path.iterdir()) == []  # closing deleted each file


def _thresholds(database_url: str, processes: int, alone: int) -> Settings:
    """Settings sending Bundles of 20 entries or more to a worker, and `alone` when alone."""
    return Settings(
        database_url=database_url,
        model_check_processes=processes,
        model_check_min_entries=20,
        model_check_min_entries_alone=alone,
    )


def test_small_bundles_stay_in_place(database_url: str) -> None:
    # (alone in the process a smaller one may go: see the next test)
    checks = ModelChecks.for_settings(_thresholds(database_url, processes=2, alone=20))
    assert (checks.processes, checks.min_entries) == (2, 20)
    patients = [kit.post_entry(kit.patient(mrn=f"s-{i}")) for i in range(20)]
    assert not checks.wanted(kit.transaction(*patients[:19]))
    assert checks.wanted(kit.transaction(*patients))
    assert checks.wanted(kit.transaction(*patients, type="collection"))
    assert not checks.wanted(kit.transaction(*patients, type="batch"))
    assert not ModelChecks(0, 1).wanted(kit.transaction(*patients * 500))


def test_a_small_bundle_goes_to_a_worker_only_while_it_is_the_one_being_written(
    database_url: str,
) -> None:
    checks = ModelChecks.for_settings(_thresholds(database_url, processes=1, alone=10))
    assert (checks.min_entries, checks.min_entries_alone) == (20, 10)
    patients = [kit.post_entry(kit.patient(mrn=f"a-{i}")) for i in range(20)]
    small, tiny, large = (kit.transaction(*patients[:n]) for n in (17, 9, 20))
    with checks.writing():  # this Bundle, alone in the process
        assert (checks.wanted(small), checks.wanted(tiny), checks.wanted(large)) == (
            True,
            False,
            True,
        )
        with checks.writing():  # and another one written at the same time
            assert (checks.wanted(small), checks.wanted(large)) == (False, True)
        assert checks.wanted(small)  # alone again
    assert ModelChecks(1, 20).min_entries_alone == 20  # not given: small Bundles stay in place


def test_a_one_patient_transaction_is_checked_in_the_worker_when_alone(
    engine: Engine, database_url: str
) -> None:
    settings = _thresholds(database_url, processes=1, alone=10)
    checks = ModelChecks.for_settings(settings)
    store = FhirService(engine, settings, model_checks=checks)
    try:
        assert checks.wait_ready(120)
        clear_store(engine)
        alone, beside = (
            kit.transaction(*[kit.post_entry(kit.patient(mrn=f"{who}-{i}")) for i in range(17)])
            for who in ("alone", "beside")
        )
        kind, results = store.bundle_json(alone, ctx=store.context("test"))
        assert (kind, [r.status for r in results], checks.submitted) == (
            "transaction-response",
            [201] * 17,
            1,
        )
        _wait_idle(checks)
        with checks.writing():  # another request of this process is writing a Bundle
            kind, results = store.bundle_json(beside, ctx=store.context("test"))
        assert ([r.status for r in results], checks.submitted) == ([201] * 17, 1)
    finally:
        checks.close()


@pytest.mark.parametrize(("cpus", "expected"), [({0}, 0), ({0, 1}, 1), (set(range(16)), 1)])
def test_one_worker_when_a_second_cpu_is_usable(
    monkeypatch: pytest.MonkeyPatch, cpus: set[int], expected: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: cpus, raising=False)
    assert default_processes() == expected
    assert ModelChecks.for_settings(Settings()).processes == expected
    assert ModelChecks.for_settings(Settings(model_check_processes=3)).processes == 3


def test_worker_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="model_check_processes"):
        Settings(model_check_processes=-1)
    with pytest.raises(ValidationError, match="model_check_min_entries"):
        Settings(model_check_min_entries=0)


def test_a_pool_without_workers_is_off() -> None:
    checks = ModelChecks(0, 1)
    assert checks.state() == "off"
    assert checks.submit(b"{}") is None
    assert checks.wait_ready(1) is False
    assert checks.submitted == 0


def _done(value: Any = None, error: BaseException | None = None) -> Future[Any]:
    future: Future[Any] = Future()
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)
    return future


@pytest.mark.parametrize(
    ("error", "pool_dropped"),
    [(BrokenProcessPool("worker died"), True), (ValueError("job failed"), False)],
)
def test_a_worker_that_cannot_answer_is_replaced_by_the_check_in_place(
    error: BaseException, pool_dropped: bool
) -> None:
    lost: list[bool] = []
    pending = PendingVerdicts(_done(error=error), lambda: lost.append(True))
    in_place = {3: [Issue("value", "checked here")]}
    asked: list[Any] = []

    def check_here(only: Any) -> dict[int, list[Issue]]:
        asked.append(only)
        return in_place

    assert pending.result(check_here, 5) == in_place
    assert pending.result(lambda only: {}) == in_place  # settled once
    assert asked == [None]  # every entry, checked here
    assert lost == ([True] if pool_dropped else [])
    assert not pending.answered_by_worker  # so the bytes were not parsed strictly there either


def test_a_worker_answer_is_taken_as_it_is() -> None:
    answer = {1: [Issue("required", "from the worker")]}
    pending = PendingVerdicts(_done(answer), lambda: None)
    assert not pending.answered_by_worker  # not asked yet
    assert pending.result(lambda only: pytest.fail("not needed"), 7) == answer
    assert pending.answered_by_worker


def _cells(slots: int = 1) -> Any:
    return multiprocessing.get_context("spawn").RawArray("q", 2 * slots)


def test_claims_meet_and_leave_no_entry_out() -> None:
    for entries in range(8):
        for worker_steps in range(
            entries + 2
        ):  # the worker runs ahead this far, then they alternate
            claims = Claims(_cells(), 0)
            claims.reset()
            worker: list[int] = []
            here: list[int] = []
            turn, worker_done, here_done = 0, False, False
            while not (worker_done and here_done):
                if not worker_done and (turn < worker_steps or turn % 2 or here_done):
                    ahead = len(worker)
                    if ahead < entries and claims.take_front(ahead):
                        worker.append(ahead)
                    else:
                        worker_done = True
                elif not here_done:
                    behind = claims.take_back(entries)
                    if behind is None:
                        here_done = True
                    else:
                        here.append(behind)
                turn += 1
            assert sorted(worker + here) == list(range(entries))  # each entry checked exactly once
            assert claims.front() == len(worker)


def test_a_second_slot_is_claimed_apart_from_the_first() -> None:
    cells = _cells(2)
    first, second = Claims(cells, 0), Claims(cells, 1)
    first.reset()
    second.reset()
    assert first.take_front(0)
    assert first.take_front(1)
    assert second.take_back(4) == 3
    assert (first.front(), second.front()) == (2, 0)
    assert first.take_back(4) == 3  # the first slot's back is still open


def test_the_request_checks_from_the_back_while_the_worker_is_busy() -> None:
    claims = Claims(_cells(), 0)
    claims.reset()
    assert claims.take_front(0)
    assert claims.take_front(1)  # the worker is on entry 1
    future: Future[dict[int, list[Issue]]] = Future()
    asked: list[Any] = []

    def in_place(only: Any) -> dict[int, list[Issue]]:
        asked.append(only)
        if only == [2]:  # they meet: the worker finds nothing left and answers
            assert not claims.take_front(2)
            future.set_result({0: [Issue("value", "worker")]})
        return {only[0]: [Issue("value", "here")]} if only == [4] else {}

    pending = PendingVerdicts(future, lambda: None, claims)
    verdicts = pending.result(in_place, 6)
    assert asked == [[5], [4], [3], [2]]
    assert verdicts == {0: [Issue("value", "worker")], 4: [Issue("value", "here")]}


def test_a_request_that_checked_every_entry_does_not_wait_for_the_worker() -> None:
    claims = Claims(_cells(), 0)
    claims.reset()
    never: Future[dict[int, list[Issue]]] = Future()  # a worker still parsing
    asked: list[Any] = []

    def in_place(only: Any) -> dict[int, list[Issue]]:
        asked.append(only)
        return {1: [Issue("value", "here")]} if only == [1] else {}

    pending = PendingVerdicts(never, lambda: pytest.fail("not lost"), claims)
    assert pending.result(in_place, 3) == {1: [Issue("value", "here")]}
    assert asked == [[2], [1], [0]]
    assert not pending.answered_by_worker
    assert not claims.take_front(0)  # the worker, when it gets there, stops at once
    assert claims.front() == 0


def test_a_busy_worker_and_the_request_thread_share_a_bundle() -> None:
    body = _big_transaction(1500)
    obj = json.loads(body)
    for i in (1, 700, 1500):  # model failures at the front, in the middle and at the back
        obj["entry"][i]["resource"]["effectiveDateTime"] = NO_ZONE
    raw = json.dumps(obj).encode()
    parsed = parse_bundle(loads(raw), check_models=False)
    expected = owed_checker(loads(raw), parsed)(None)
    assert sorted(expected) == [1, 700, 1500]
    checks = ModelChecks(1, 1)
    try:
        assert checks.wait_ready(120)
        pending = checks.submit(raw)
        assert pending is not None
        here: list[int] = []
        check_here = owed_checker(loads(raw), parsed)

        def in_place(only: Any) -> dict[int, list[Issue]]:
            assert only is not None, "the worker answers"
            here.extend(only)
            return check_here(only)

        # asked at once, while the worker is still parsing: this thread takes entries at the back
        assert pending.result(in_place, len(obj["entry"])) == expected
        assert here == list(range(len(obj["entry"]) - 1, len(obj["entry"]) - 1 - len(here), -1))
        assert here  # some, from the back down, in order
    finally:
        checks.close()


def test_the_worker_starts_on_a_bundle_while_the_request_thread_holds_the_gil() -> None:
    """The request thread writes a Bundle to the worker's pipe itself: no helper thread of the
    server's, which would first need the GIL the request thread holds while it walks and writes
    the Bundle, stands between the submit and the worker starting (a ProcessPoolExecutor's two
    did: a one-patient transaction's worker started ~0.7 ms late, docs/performance.md)."""
    checks = ModelChecks(1, 1)
    try:
        assert checks.wait_ready(120)
        switch = sys.getswitchinterval()
        sys.setswitchinterval(5.0)  # no other thread of this process runs while this one spins
        try:
            pending = checks.submit(_big_transaction(2000))
            assert pending is not None
            deadline = time.monotonic() + 2.0
            while pending._claims is not None and pending._claims.front() == 0:
                if time.monotonic() > deadline:
                    break
            claimed = pending._claims.front() if pending._claims is not None else 0
        finally:
            sys.setswitchinterval(switch)
        assert claimed > 0  # the worker had parsed the Bundle and begun its entries meanwhile
        assert pending.result(lambda only: pytest.fail("the worker answers")) == {}
    finally:
        checks.close()


def test_a_worker_that_stops_answering_is_given_up_after_the_stall_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(validation_workers, "STALL_SECONDS", 0.2)
    claims = Claims(_cells(), 0)
    claims.reset()
    assert claims.take_front(0)  # the worker holds entry 0, then never answers
    lost: list[bool] = []
    asked: list[Any] = []

    def in_place(only: Any) -> dict[int, list[Issue]]:
        indexes = list(only)
        asked.append(indexes)
        return {i: [Issue("value", f"here {i}")] for i in indexes if i in (0, 2)}

    pending = PendingVerdicts(Future(), lambda: lost.append(True), claims)
    started = time.monotonic()
    assert pending.result(in_place, 3) == {
        0: [Issue("value", "here 0")],
        2: [Issue("value", "here 2")],
    }
    assert 0.2 <= time.monotonic() - started < 10
    assert asked == [[2], [1], [0]]  # its own share, then (given up) only what the worker held
    assert lost == [True]  # the pool is dropped
    assert not pending.answered_by_worker


def test_a_lost_worker_leaves_its_entries_and_the_gap_to_be_checked_here() -> None:
    claims = Claims(_cells(), 0)
    claims.reset()
    assert claims.take_front(0)
    assert claims.take_front(1)  # the worker is on entry 1 when it dies
    future: Future[dict[int, list[Issue]]] = Future()
    asked: list[list[int]] = []
    lost: list[bool] = []

    def in_place(only: Any) -> dict[int, list[Issue]]:
        indexes = list(only)
        asked.append(indexes)
        if indexes == [5]:  # the pipe ends while this thread checks its first entry
            future.set_exception(BrokenProcessPool("worker died"))
        return {i: [Issue("value", f"here {i}")] for i in indexes if i in (1, 3, 5)}

    pending = PendingVerdicts(future, lambda: lost.append(True), claims)
    verdicts = pending.result(in_place, 6)
    # the worker's entries and the ones between them and this thread's share: nothing left out
    assert asked == [[5], [0, 1, 2, 3, 4]]
    assert sorted(verdicts) == [1, 3, 5]
    assert lost == [True]


def test_a_worker_stopped_mid_bundle_is_killed_and_the_bundle_checked_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(validation_workers, "STALL_SECONDS", 1.0)
    obj = json.loads(_big_transaction(1500))
    for i in (1, 1500):
        obj["entry"][i]["resource"]["effectiveDateTime"] = NO_ZONE
    raw = json.dumps(obj).encode()
    check_here = owed_checker(loads(raw), parse_bundle(loads(raw), check_models=False))
    expected = check_here(None)
    assert sorted(expected) == [1, 1500]
    checks = ModelChecks(1, 1)
    pid = 0
    try:
        assert checks.wait_ready(120)
        (pid,) = checks.worker_pids()
        pending = checks.submit(raw)
        assert pending is not None
        assert pending._claims is not None
        deadline = time.monotonic() + 30
        while pending._claims.front() == 0 and time.monotonic() < deadline:
            time.sleep(0.0005)
        assert pending._claims.front() > 0  # the worker is checking entries
        os.kill(pid, signal.SIGSTOP)
        assert pending.result(check_here, len(obj["entry"])) == expected
        assert not pending.answered_by_worker
        with pytest.raises(ProcessLookupError):  # killed although stopped (SIGTERM would wait)
            _wait_gone(pid)
        assert checks.state() == "idle"  # dropped: the next Bundle starts a new pool
    finally:
        if pid:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        checks.close()


def test_workers_that_cannot_start_leave_bundles_in_place(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A server where no worker process can start (a daemonic parent, process limits) checks
    Bundles in place and says so once; the next attempt waits for the back-off."""
    started: list[int] = []

    def refuse(self: Any, processes: int, cells: Any) -> None:
        started.append(processes)
        raise AssertionError("daemonic processes are not allowed to have children")

    monkeypatch.setattr(validation_workers._PipePool, "__init__", refuse)
    checks = ModelChecks(1, 1)
    assert checks.submit(b"{}") is None
    assert checks.state() == "failed"
    assert checks.submit(b"{}") is None  # backing off: no second attempt yet
    assert started == [1]
    assert caplog.text.count("model-check workers could not be started") == 1
    checks.close()


def test_a_bundle_goes_to_a_worker_only_when_one_is_idle() -> None:
    checks = ModelChecks(1, 1)
    try:
        assert checks.state() == "idle"
        assert checks.submit(b"{}") is None  # starts the pool; not warm yet: in place
        assert checks.wait_ready(120)
        assert checks.state() == "ready"
        big = _big_transaction(3000)
        first = checks.submit(big)
        assert first is not None
        assert checks.submit(big) is None  # the only worker is busy: check in place
        verdicts = first.result(lambda only: pytest.fail("the worker answers"))
        assert verdicts == {}
        deadline = time.monotonic() + 10
        while (again := checks.submit(b"{}")) is None:  # free once its done-callback has run
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert again.result(lambda only: pytest.fail("the worker answers")) == {}
        assert checks.submitted == 2
    finally:
        checks.close()
    assert checks.state() == "off"
    assert checks.submit(b"{}") is None  # closed for good
    assert checks.submitted == 2


def test_a_refused_bundle_leaves_nothing_behind(new_database: Any, backend: str) -> None:
    settings = Settings(database_url=new_database(backend))
    engine = make_engine(settings)
    migrate.upgrade(engine)
    checks = ModelChecks(1, 1)
    store = FhirService(engine, settings, model_checks=checks)
    try:
        assert checks.wait_ready(120)
        empty = counts(engine)
        refused_body, _, where = REFUSED["model only"]
        with pytest.raises(FhirError) as caught:
            store.bundle_json(refused_body, ctx=store.context("test"))
        assert caught.value.status == 400
        assert [i.expression[0] for i in caught.value.issues] == where
        assert checks.submitted == 1  # checked in the worker
        assert counts(engine) == empty
        assert _secrets(engine) == 0  # the subject key its derivation made was rolled back too
        kind, results = store.bundle_json(_big_transaction(2), ctx=store.context("test"))
        assert (kind, [r.status for r in results]) == ("transaction-response", [201] * 3)
        assert checks.submitted == 2
        assert counts(engine)["fhir_resource"] == 3
        assert _secrets(engine) == 1  # the same derivation, committed this time
    finally:
        checks.close()
        engine.dispose()


def _secrets(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM service_secret")).scalar_one())
