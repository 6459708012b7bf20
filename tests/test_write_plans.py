"""A one-patient write reads only that patient's rows: no statement scans a table (issue 19).

A write whose look-ups scan a table costs more the larger the database is; a write touching one
patient must cost about the same in any size of database. SQLite's `EXPLAIN QUERY PLAN` names a
full scan `SCAN <table>` (with or without a covering index), and its planner uses an index when
one fits even on an empty database, so a small store shows what a large one would do.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event

from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from tests.conftest import FHIR_JSON, start_server, stop_server
from tests.kit import fhir as kit
from tests.kit import nct
from tests.kit.fhir import put_all

_SCAN = re.compile(r"\bSCAN (\w+)\b(?! VIRTUAL TABLE)")  # a table, not a parameter's list


@pytest.fixture
def sqlite_server(new_database: Any) -> Iterator[tuple[str, str]]:
    """(base URL of /fhir, database file) of a fresh SQLite store served over HTTP."""
    url = new_database("sqlite")
    engine = make_engine(Settings(database_url=url))
    migrate.upgrade(engine)
    engine.dispose()
    # no background cohort refresh: only the writes' own statements are examined
    server, thread, base = start_server(
        Settings(database_url=url, cohort_refresh_interval_seconds=0)
    )
    yield f"{base}/fhir", url.removeprefix("sqlite:///")
    stop_server(server, thread)


def _statements_while(path: str, post: Any) -> list[tuple[str, Any]]:
    """The single-row statements (not executemany) that write transactions ran on the database at
    `path` during `post`."""
    seen: list[tuple[str, Any]] = []

    def note(conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, many: bool) -> None:
        if (
            not many
            and conn.engine.url.database == path
            and conn.get_execution_options().get("trialbridge_write")
        ):
            seen.append((statement, params))

    event.listen(Engine, "before_cursor_execute", note)
    try:
        post()
    finally:
        event.remove(Engine, "before_cursor_execute", note)
    return seen


def _scans(path: str, statements: list[tuple[str, Any]]) -> dict[str, str]:
    """Table → a statement whose plan scans it in full, or reads a patient's rows by an index
    that does not hold the patient."""
    found: dict[str, str] = {}
    with sqlite3.connect(path) as conn:
        for statement, params in statements:
            if not statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "WITH")):
                continue
            plan = conn.execute(f"EXPLAIN QUERY PLAN {statement}", params or ()).fetchall()
            shown = " ".join(statement.split())[:200]
            for row in plan:
                match = _SCAN.search(str(row[-1]))
                if match:
                    found.setdefault(match.group(1), shown)
            where = " ".join(statement.upper().split()).partition(" WHERE ")[2]
            by_patient = re.search(r"\bPATIENT_ID (=|IN)", where)
            if by_patient and not any("patient_id=?" in str(row[-1]) for row in plan):
                # an index on the study alone reads every row of the study
                found.setdefault(f"{_table(statement)} (not by patient)", shown)
    return found


def _table(statement: str) -> str:
    match = re.search(r"\b(?:FROM|UPDATE)\s+(\w+)", statement, re.IGNORECASE)
    return match.group(1) if match else "?"


def _heart_rates(pid: str, n: int) -> list[dict[str, Any]]:
    return [
        kit.observation(
            id=f"{pid}-hr-{i}",
            patient=pid,
            code=kit.coded(kit.LOINC, "8867-4", "Heart rate"),
            effective="2025-03-12",
            valueQuantity=kit.quantity(60 + i, "/min"),
        )
        for i in range(n)
    ]


def test_a_one_patient_write_scans_no_table(sqlite_server: tuple[str, str]) -> None:
    base, path = sqlite_server
    with httpx.Client(base_url=base, headers=FHIR_JSON, timeout=60) as fhir:

        def put(*resources: dict[str, Any]) -> int:
            answer = fhir.post("", content=put_all(*resources))
            assert answer.status_code == 200, answer.text
            return answer.status_code

        # a subject of NCT06088771 (screened, enrolled, on study) and someone who is nobody's
        put(*nct.work_up("s1").values(), *nct.on_study("s1", "101").values())
        put(kit.patient(id="n1", gender="male"), *_heart_rates("n1", 2))
        moved_surgery = nct.on_study("s1", "101", surgery_on=nct.day(19))["s1-surgery"]
        writes = [
            [kit.patient(id="n2", gender="female"), *_heart_rates("n2", 16)],  # a new patient
            _heart_rates("n1", 4),  # more of a patient's data, one observation changed
            _heart_rates("s1", 3),  # a subject's data: screening and deviations re-derived
            [moved_surgery],  # a subject's mapped resource changed: its events replaced
        ]
        statements = _statements_while(path, lambda: [put(*w) for w in writes])
    tables = {m.group(1) for s, _ in statements for m in re.finditer(r"\bFROM (\w+)", s)}
    # the look-ups the subject's write must make, so that their plans were examined
    assert {"study_subject", "deviation", "eligibility_result", "trial_event"} <= tables
    assert _scans(path, statements) == {}
