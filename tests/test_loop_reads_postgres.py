"""PostgreSQL lookups on the event loop (service.infra.loop_reads.PostgresLookups) against the
real server: each lookup has a connection to itself, one given up on never holds up another, an
error closes only a connection that is no longer usable, and the connection parameters reach
libpq as the engine's own connections get them (passwords, options) and never reach the logs."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from sqlalchemy import create_engine

from service.infra import loop_reads
from service.infra.db import make_engine
from service.infra.loop_reads import LoopReads, PostgresLookups, postgres_connect_kwargs
from service.infra.settings import Settings
from tests.conftest import POSTGRES_ADMIN_URL

SLOW = "SELECT v FROM (SELECT ?::text AS v) AS q, pg_sleep(?)"
PID = "SELECT pg_backend_pid()"


def _url(**query: str) -> str:
    """The test server's URL with a password that does not survive being rendered as a string
    (trust authentication ignores it, so the server still lets us in) and the given options."""
    url = make_engine(Settings(database_url=POSTGRES_ADMIN_URL)).url.set(password="p w%d @x")
    return url.update_query_dict(query).render_as_string(hide_password=False)


@pytest.fixture
def name() -> str:
    """An application name of this test's own, to count its connections in pg_stat_activity."""
    return f"tb-loop-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def lookups(name: str) -> PostgresLookups:
    reads = LoopReads(make_engine(Settings(database_url=_url(application_name=name))))
    assert reads.postgres is not None
    return reads.postgres


def _backends(name: str) -> int:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def _terminate(pid: int) -> None:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_connect_parameters_come_from_the_dialect_not_a_rendered_url() -> None:
    """A password with a space, a `%` and an `@`, and a URL's own `options`, reach psycopg as
    they are; the statement timeout is added to the options and the defaults leave the URL's
    own choices alone."""
    engine = create_engine(
        "postgresql+psycopg://us%20er:p%20w%25d%20%40x@db.example:6543/trial"
        "?options=-c%20work_mem%3D7MB&application_name=mine&connect_timeout=9"
    )
    kwargs = postgres_connect_kwargs(engine)
    assert kwargs is not None
    assert kwargs["user"] == "us er"
    assert kwargs["password"] == "p w%d @x"
    assert (kwargs["host"], kwargs["port"], kwargs["dbname"]) == ("db.example", 6543, "trial")
    assert kwargs["options"] == "-c work_mem=7MB -c statement_timeout=1000"
    assert kwargs["application_name"] == "mine"
    assert kwargs["connect_timeout"] == "9"
    assert "context" not in kwargs
    plain = postgres_connect_kwargs(create_engine("postgresql+psycopg://u@h/d"))
    assert plain is not None
    assert plain["options"] == "-c statement_timeout=1000"
    assert plain["application_name"] == loop_reads.APPLICATION_NAME
    assert postgres_connect_kwargs(create_engine("sqlite://")) is None


def test_a_lookup_runs_with_the_url_options_and_the_statement_timeout(name: str) -> None:
    """Against the server: the URL's options and application name, and our statement timeout,
    are in force on the lookup's connection (its password had a space, a `%` and an `@`)."""
    engine = make_engine(
        Settings(database_url=_url(options="-c work_mem=7MB", application_name=name))
    )
    reads = LoopReads(engine)
    setting = "SELECT current_setting(?)"

    async def steps() -> list[Any]:
        seen = [
            await reads.lookup(setting, (key,))
            for key in ("work_mem", "statement_timeout", "application_name")
        ]
        await reads.aclose()
        return seen

    assert asyncio.run(steps()) == ["7MB", "1s", name]


def test_a_failed_connect_puts_no_password_in_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing a connection attempt logs, ours or psycopg's, carries the password."""
    secret = "S3cret word%"
    url = f"postgresql+psycopg://nobody:{quote(secret)}@127.0.0.1:1/none"
    reads = LoopReads(make_engine(Settings(database_url=url)))
    caplog.set_level(logging.DEBUG)
    assert asyncio.run(reads.lookup(PID, ())) is None
    assert any("OperationalError" in record.getMessage() for record in caplog.records)
    assert not [r for r in caplog.records if "S3cret" in r.getMessage()]


def test_concurrent_lookups_each_have_a_connection_and_the_next_waits_its_turn(
    lookups: PostgresLookups, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAX_CONNECTIONS slow lookups at once run on as many connections; one more waits for one
    of them to come free (no connection is opened past the cap, none is shared), and one that
    cannot get a turn within its bound answers "not known here" while the slow ones still run."""
    monkeypatch.setattr(loop_reads, "LOOKUP_TIMEOUT_SECONDS", 10)
    width = loop_reads.MAX_CONNECTIONS

    async def busy(tag: str) -> list[asyncio.Task[Any]]:
        slow = [asyncio.create_task(lookups.lookup(SLOW, (f"{tag}{i}", 0.6))) for i in range(width)]
        for _ in range(100):  # until all have connected (a few ms each)
            await asyncio.sleep(0.02)
            if _backends(name) == width:
                break
        return slow

    async def steps() -> tuple[list[Any], Any, int, Any, bool]:
        slow = await busy("a")
        waited = await lookups.lookup(SLOW, ("next", 0))
        answers = list(await asyncio.gather(*slow))
        peak = _backends(name)
        slow = await busy("b")
        monkeypatch.setattr(loop_reads, "LOOKUP_TIMEOUT_SECONDS", 0.1)
        no_turn = await lookups.lookup(SLOW, ("late", 0))
        all_running = not any(task.done() for task in slow)
        answers += await asyncio.gather(*slow)
        await lookups.aclose()
        return answers, waited, peak, no_turn, all_running

    answers, waited, peak, no_turn, all_running = asyncio.run(steps())
    assert answers == [f"{tag}{i}" for tag in "ab" for i in range(width)]
    assert waited == "next"
    assert peak == width
    assert no_turn is None
    assert all_running  # the lookup without a turn came back while every slow one still ran
    assert _backends(name) == 0  # aclose closed them


def test_a_lookup_past_its_bound_is_given_up_and_its_connection_comes_back(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup slower than LOOKUP_TIMEOUT_SECONDS answers nothing while its query still runs
    (never waiting for a cancel to drain); the server's statement timeout ends the query, and the
    same connection serves the next lookup."""
    monkeypatch.setattr(loop_reads, "LOOKUP_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(loop_reads, "STATEMENT_TIMEOUT_MS", 700)
    reads = LoopReads(make_engine(Settings(database_url=_url(application_name=name))))
    lookups = reads.postgres
    assert lookups is not None

    async def steps() -> tuple[Any, bool, Any, Any, int]:
        pid = await lookups.lookup(PID, ())
        given_up = await lookups.lookup(SLOW, ("late", 30))
        still_running = len(lookups._tasks) == 1
        await lookups.settled()
        again = await lookups.lookup(PID, ())
        connections = lookups.connections
        await lookups.aclose()
        return given_up, still_running, pid, again, connections

    given_up, still_running, pid, again, connections = asyncio.run(steps())
    assert given_up is None
    assert still_running
    assert again == pid
    assert connections == 1


def test_with_every_connection_held_by_an_overdue_query_a_lookup_does_not_wait_a_turn(
    lookups: PostgresLookups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once each connection's query has been given up on (a server answering nothing in time), a
    lookup goes to the thread path at once: it would otherwise wait out its whole bound for a turn
    on every cached read. When those queries end, lookups are answered on the loop again."""
    monkeypatch.setattr(loop_reads, "LOOKUP_TIMEOUT_SECONDS", 0.2)
    width = loop_reads.MAX_CONNECTIONS

    async def steps() -> tuple[list[Any], int, Any, Any]:
        given_up = [await lookups.lookup(SLOW, (f"s{i}", 1.5)) for i in range(width)]
        overdue = len(lookups._overdue)
        # a bound long enough to outlast the slow queries: waiting a turn would answer "x"
        monkeypatch.setattr(loop_reads, "LOOKUP_TIMEOUT_SECONDS", 10)
        skipped = await lookups.lookup(SLOW, ("x", 0))
        await lookups.settled()
        again = await lookups.lookup(SLOW, ("y", 0))
        await lookups.aclose()
        return given_up, overdue, skipped, again

    given_up, overdue, skipped, again = asyncio.run(steps())
    assert given_up == [None] * width
    assert overdue == width
    assert skipped is None
    assert again == "y"


def test_aclose_closes_every_connection_even_those_in_use_or_handed_over(
    lookups: PostgresLookups, name: str
) -> None:
    """aclose while lookups run and one waits its turn: the waiting one goes to the thread path,
    the running ones answer and their connections are closed as they end (none is kept idle
    after aclose), and a lookup afterwards opens none."""
    width = loop_reads.MAX_CONNECTIONS

    async def steps() -> tuple[list[Any], int, Any]:
        running = [
            asyncio.create_task(lookups.lookup(SLOW, (f"r{i}", 0.3))) for i in range(width + 1)
        ]
        await asyncio.sleep(0.05)
        await lookups.aclose()
        answers = list(await asyncio.gather(*running))
        after = await lookups.lookup(SLOW, ("late", 0))
        return answers, lookups.connections, after

    answers, connections, after = asyncio.run(steps())
    assert sorted(a for a in answers if a is not None) == [f"r{i}" for i in range(width)]
    assert answers.count(None) == 1  # the one that waited its turn
    assert connections == 0
    assert after is None
    assert _backends(name) == 0


def test_a_parameter_the_driver_cannot_encode_is_not_known_here(
    lookups: PostgresLookups, caplog: pytest.LogCaptureFixture
) -> None:
    """A lone surrogate cannot be sent to the server: the lookup answers "not known here" (the
    thread path decides), instead of raising into the request; the connection serves on."""

    async def steps() -> tuple[Any, Any, Any]:
        pid = await lookups.lookup(PID, ())
        odd = await lookups.lookup("SELECT ?::text", ("\udcff",))
        again = await lookups.lookup(PID, ())
        await lookups.aclose()
        return pid, odd, again

    with caplog.at_level(logging.INFO, logger=loop_reads.__name__):
        pid, odd, again = asyncio.run(steps())
    assert odd is None
    assert again == pid
    assert "UnicodeEncodeError" in caplog.text


def test_a_request_cancelled_mid_lookup_leaves_its_query_counted_as_overdue(
    lookups: PostgresLookups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests cancelled while their queries run (a client gone) leave those queries holding
    the connections: with all of them so held, the next lookup does not wait a turn."""
    width = loop_reads.MAX_CONNECTIONS

    async def steps() -> tuple[int, Any]:
        waiting = [asyncio.create_task(lookups.lookup(SLOW, (f"c{i}", 1.5))) for i in range(width)]
        await asyncio.sleep(0.3)  # all connected and running
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        overdue = len(lookups._overdue)
        monkeypatch.setattr(loop_reads, "LOOKUP_TIMEOUT_SECONDS", 10)
        skipped = await lookups.lookup(SLOW, ("x", 0))  # a turn would come: it would say "x"
        await lookups.aclose()
        return overdue, skipped

    overdue, skipped = asyncio.run(steps())
    assert overdue == width
    assert skipped is None


def test_a_request_cancelled_mid_lookup_leaves_a_usable_connection(
    lookups: PostgresLookups,
) -> None:
    """A client that goes away cancels the request, not the query: the connection comes back
    when the query is done and serves the next lookup."""

    async def steps() -> tuple[Any, Any, Any, int]:
        pid = await lookups.lookup(PID, ())
        request = asyncio.create_task(lookups.lookup(SLOW, ("gone", 0.3)))
        await asyncio.sleep(0.1)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await lookups.settled()
        answer = await lookups.lookup(SLOW, ("here", 0))
        again = await lookups.lookup(PID, ())
        connections = lookups.connections
        await lookups.aclose()
        return pid, answer, again, connections

    pid, answer, again, connections = asyncio.run(steps())
    assert answer == "here"
    assert again == pid
    assert connections == 1


def test_an_error_keeps_the_connection_and_a_lost_one_is_replaced_after_the_pause(
    lookups: PostgresLookups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement error leaves the connection usable, so it is kept (and the others are not
    stopped); a connection the server ended is closed, no new one is tried for
    RECONNECT_AFTER_SECONDS, and after that a new one answers."""
    monkeypatch.setattr(loop_reads, "RECONNECT_AFTER_SECONDS", 0.3)
    attempts: list[int] = []
    connect = psycopg.AsyncConnection.connect

    async def counted(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        return await connect(*args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", counted)

    async def steps() -> list[Any]:
        pid = await lookups.lookup(PID, ())
        seen: list[Any] = [await lookups.lookup("SELECT v FROM no_such_table WHERE k = ?", ("a",))]
        seen.append(await lookups.lookup(PID, ()) == pid)
        assert isinstance(pid, int)
        _terminate(pid)
        seen.append(await lookups.lookup(PID, ()))  # the server ended it: not answered
        seen.append(lookups.connections)
        seen.append(await lookups.lookup(PID, ()))  # within the pause: not tried
        seen.append(len(attempts))
        await asyncio.sleep(0.35)
        replaced = await lookups.lookup(PID, ())
        seen.append(isinstance(replaced, int) and replaced != pid)
        seen.append(len(attempts))
        await lookups.aclose()
        return seen

    assert asyncio.run(steps()) == [None, True, None, 0, None, 1, True, 2]


def test_a_lost_connection_sends_the_waiting_lookups_to_the_thread_path(
    lookups: PostgresLookups, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup waiting for a turn is answered "not known here" as soon as a connection is lost,
    not when its bound runs out; the lookups on the other connections are answered."""
    monkeypatch.setattr(loop_reads, "LOOKUP_TIMEOUT_SECONDS", 10)
    width = loop_reads.MAX_CONNECTIONS

    async def steps() -> tuple[list[Any], Any, bool]:
        slow = [asyncio.create_task(lookups.lookup(SLOW, (f"v{i}", 0.8))) for i in range(width)]
        for _ in range(100):
            await asyncio.sleep(0.02)
            if _backends(name) == width:
                break
        waiting = asyncio.create_task(lookups.lookup(SLOW, ("waiting", 0)))
        await asyncio.sleep(0.05)
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND query LIKE %s LIMIT 1",
                (name, "%pg_sleep%"),
            )
        answer = await waiting
        await asyncio.sleep(0.05)  # for the ended one's request to see its task's outcome
        others_running = sum(not task.done() for task in slow) == width - 1
        answers = list(await asyncio.gather(*slow))
        await lookups.aclose()
        return answers, answer, others_running

    answers, answer, others_running = asyncio.run(steps())
    assert answer is None
    assert others_running
    assert answers.count(None) == 1  # the one whose connection was ended
    assert [a for a in answers if a is not None] == [
        f"v{i}" for i, a in enumerate(answers) if a is not None
    ]


def test_placeholders_are_checked_once_converted() -> None:
    """Only our own literal-free SQL is converted, and its placeholders must match the values."""
    lookups = PostgresLookups({})
    with pytest.raises(ValueError, match="placeholders"):
        asyncio.run(lookups.lookup("SELECT v FROM t WHERE k = ? AND j = ?", ("a",)))
    with pytest.raises(ValueError, match="literals"):
        asyncio.run(lookups.lookup("SELECT v FROM t WHERE k LIKE 'a%' AND j = ?", ("a",)))
    assert loop_reads._pyformat("SELECT v FROM t WHERE k = ? AND j = ?") == (
        "SELECT v FROM t WHERE k = %s AND j = %s"
    )
