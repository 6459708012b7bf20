"""Search and NDJSON edge input found by an audit: each once answered 500 or split good lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from service.infra.db import make_engine
from service.infra.settings import Settings
from tests.conftest import counts
from tests.kit.cli import run_trialbridge

NDJSON = {"content-type": "application/fhir+ndjson"}

# One NDJSON body, lines numbered as a client counts them (split at "\n" only):
#   1 good, with raw U+2028 inside a string     4 malformed JSON
#   2 blank (skipped, still counted)            5 raw U+001C inside a string (JSON forbids it)
#   3 good, raw U+2029 and U+0085, ends "\r\n"  6 good
#   7 only a raw U+2028: not JSON whitespace, so not blank: malformed
#   8 spaces and a tab: blank (skipped, still counted)
NAMES = {"x": "a\u2028b", "y": "c\u2029d\u0085e", "w": "plain"}
NDJSON_BODY = (
    json.dumps(
        {"resourceType": "Patient", "id": "x", "name": [{"text": NAMES["x"]}]}, ensure_ascii=False
    )
    + "\n\n"
    + json.dumps(
        {"resourceType": "Patient", "id": "y", "name": [{"text": NAMES["y"]}]}, ensure_ascii=False
    )
    + "\r\n"
    + '{"resourceType":"Patient",\n'
    + '{"resourceType":"Patient","id":"v","name":[{"text":"f\x1cg"}]}\n'
    + json.dumps({"resourceType": "Patient", "id": "w", "name": [{"text": NAMES["w"]}]})
    + "\n\u2028\n \t\n"
).encode()


def assert_outcome(
    response: httpx.Response, status: int, code: str, expression: str
) -> dict[str, Any]:
    """Exact status, an OperationOutcome with issue[0].code and issue[0].expression."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"][0]["code"] == code, body
    assert body["issue"][0]["expression"] == [expression], body
    return body


def total(fhir: httpx.Client, path: str, **params: str) -> int:
    """Bundle.total of a search that must succeed."""
    response = fhir.get(path, params=params)
    assert response.status_code == 200, response.text
    bundle: dict[str, Any] = response.json()
    assert bundle["type"] == "searchset", bundle
    return int(bundle["total"])


# -- 1. _count takes ASCII digits only --------------------------------------------------------


@pytest.mark.parametrize("value", ["\u00b2", "1\u00b2", "\u0661", "\uff15", "\U0001d7d9"])
def test_count_of_non_ascii_digits_is_refused(fhir: httpx.Client, value: str) -> None:
    assert value.isdigit() or value[1:].isdigit()  # the trap: str.isdigit() takes them all
    response = fhir.get("/Patient", params={"_count": value})
    body = assert_outcome(response, 400, "invalid", "_count")
    assert body["issue"][0]["diagnostics"].startswith("search parameter _count: "), body


def test_count_of_thousands_of_digits_is_capped_not_a_crash(fhir: httpx.Client) -> None:
    created = fhir.post("/Patient", content=b'{"resourceType":"Patient"}')
    assert created.status_code == 201, created.text
    for value, echoed in (("9" * 5000, "1000"), ("0" * 5000 + "7", "7"), ("0" * 5000, "0")):
        response = fhir.get("/Patient", params={"_count": value})
        assert response.status_code == 200, response.text
        bundle = response.json()
        assert bundle["total"] == 1
        assert len(bundle.get("entry", [])) == (0 if echoed == "0" else 1)
        assert bundle["link"][0]["url"].endswith(f"_count={echoed}"), bundle["link"]


# -- 2. _lastUpdated at the ends of time: the open end is unbounded ---------------------------


@pytest.mark.parametrize(
    ("value", "matches"),
    [
        ("9999-12-31", 0),
        ("9999-12-31T23:59:59Z", 0),
        ("9999-12-31T23:59:59.999Z", 0),
        ("9999-12", 0),
        ("9999", 0),
        ("eq9999-12-31", 0),
        ("ne9999-12-31", 1),
        ("gt9999-12-31", 0),
        ("sa9999-12-31T23:59:59Z", 0),
        ("ge9999-12-31", 0),
        ("le9999-12-31", 1),
        ("le9999-12-31T23:59:59Z", 1),
        ("lt9999-12-31T23:59:59Z", 1),
        ("eb9999", 1),
        ("le9999", 1),
        # starts after 9999-12-31T23:59:59.999999Z once in UTC
        ("9999-12-31T23:59:59-01:00", 0),
        ("ge9999-12-31T23:59:59-01:00", 0),
        ("lt9999-12-31T23:59:59-01:00", 1),
        # ends before 0001-01-01T00:00:00Z once in UTC
        ("0001-01-01T00:00:00+01:00", 0),
        ("lt0001-01-01T00:30:00+01:00", 0),
        ("le0001-01-01T00:30:00+01:00", 0),
        ("gt0001-01-01T00:30:00+01:00", 1),
        ("ne0001-01-01T00:30:00+01:00", 1),
        ("ge0001", 1),
        ("lt0001", 0),
        ("0001", 0),
    ],
)
def test_last_updated_at_the_ends_of_time(fhir: httpx.Client, value: str, matches: int) -> None:
    created = fhir.post("/Patient", content=b'{"resourceType":"Patient"}')
    assert created.status_code == 201, created.text
    assert total(fhir, "/Patient", _lastUpdated=value) == matches


def test_last_updated_ordinary_ranges_still_hold(fhir: httpx.Client) -> None:
    created = fhir.post("/Patient", content=b'{"resourceType":"Patient"}')
    assert created.status_code == 201, created.text
    stamp = created.json()["meta"]["lastUpdated"]  # e.g. 2025-06-01T10:00:00.123Z
    year, month, day = stamp[:4], stamp[:7], stamp[:10]
    for value in (year, month, day, stamp, f"ge{stamp}", f"le{stamp}", "gt2000", "ne2000"):
        assert total(fhir, "/Patient", _lastUpdated=value) == 1, value
    for value in (f"gt{stamp}", f"lt{stamp}", f"ne{stamp}", "lt2000", "2000-02", "2000-12-31"):
        assert total(fhir, "/Patient", _lastUpdated=value) == 0, value


@pytest.mark.parametrize(
    "value", ["\uff12\uff10\uff12\uff15", "\u0662\u0660\u0662\u0665-01", "10000", "2025-02-29"]
)
def test_last_updated_needs_ascii_digits_and_a_real_date(fhir: httpx.Client, value: str) -> None:
    response = fhir.get("/Patient", params={"_lastUpdated": value})
    assert_outcome(response, 400, "invalid", "_lastUpdated")


# -- 3. NUL in any search value: 400 on both backends ----------------------------------------


@pytest.mark.parametrize(
    ("path", "param", "value"),
    [
        ("/Patient", "identifier", "a\x00b"),
        ("/Patient", "identifier", "urn:mrn|a\x00b"),
        ("/Patient", "identifier", "urn:mr\x00n|"),
        ("/Patient", "_id", "a\x00b"),
        ("/Patient", "_id", "p1,\x00"),
        ("/Patient", "_lastUpdated", "2025\x00"),
        ("/Patient", "_count", "1\x00"),
        ("/Patient", "_cursor", "a\x00b"),
        ("/Patient", "_total", "none\x00"),
        ("/Observation", "subject", "Patient/a\x00b"),
        ("/Observation", "subject:Patient", "a\x00b"),
        ("/Observation", "patient", "a\x00b"),
    ],
)
def test_nul_in_a_search_value_is_refused(
    fhir: httpx.Client, path: str, param: str, value: str
) -> None:
    created = fhir.post(
        "/Patient",
        content=b'{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"ab"}]}',
    )
    assert created.status_code == 201, created.text
    response = fhir.get(path, params={param: value})
    body = assert_outcome(response, 400, "invalid", param.partition(":")[0])
    assert "U+0000" in body["issue"][0]["diagnostics"], body


def test_nul_in_conditional_criteria_is_refused_and_writes_nothing(
    fhir: httpx.Client, engine: Engine
) -> None:
    created = fhir.post(
        "/Patient",
        content=b'{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"ab"}]}',
    )
    assert created.status_code == 201, created.text
    before = counts(engine)
    body = b'{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"cd"}]}'
    update = fhir.put("/Patient", params={"identifier": "urn:mrn|a\x00b"}, content=body)
    assert_outcome(update, 400, "invalid", "identifier")
    create = fhir.post("/Patient", content=body, headers={"if-none-exist": "identifier=a%00b"})
    assert_outcome(create, 400, "invalid", "identifier")
    delete = fhir.delete("/Patient", params={"_id": "a\x00b"})
    assert_outcome(delete, 400, "invalid", "_id")
    assert counts(engine) == before


# -- 4. NDJSON lines end at "\n" only: $import and `trialbridge load` -------------------------


def stored_names(engine: Engine) -> dict[str, str]:
    """Current Patient id -> name[0].text, read back from the stored JSON."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT v.resource_id, v.content FROM fhir_resource_version v "
                "JOIN fhir_resource h ON h.resource_type = v.resource_type "
                "AND h.resource_id = v.resource_id AND h.version_id = v.version_id "
                "WHERE v.resource_type = 'Patient'"
            )
        ).all()
    return {rid: json.loads(content)["name"][0]["text"] for rid, content in rows}


def test_import_splits_lines_at_newline_only(fhir: httpx.Client, engine: Engine) -> None:
    response = fhir.post("/$import", content=NDJSON_BODY, headers=NDJSON)
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "batch-response"
    entries = [e["response"] for e in bundle["entry"]]
    assert [e["status"].split(" ")[0] for e in entries] == [
        "201",
        "201",
        "400",
        "400",
        "201",
        "400",
    ]
    assert [e.get("location") for e in entries] == [
        "Patient/x/_history/1",
        "Patient/y/_history/1",
        None,
        None,
        "Patient/w/_history/1",
        None,
    ]
    bad = [e["outcome"]["issue"][0] for e in (*entries[2:4], entries[5])]
    assert bad[0]["code"] == "structure"
    assert bad[0]["diagnostics"].startswith("line 4: malformed JSON"), bad[0]
    assert bad[1]["code"] == "structure"
    assert bad[1]["diagnostics"].startswith("line 5: malformed JSON: Invalid control"), bad[1]
    assert bad[2]["code"] == "structure"
    assert bad[2]["diagnostics"].startswith("line 7: malformed JSON: Expecting value"), bad[2]
    assert stored_names(engine) == NAMES
    for rid, name in NAMES.items():
        read = fhir.get(f"/Patient/{rid}")
        assert read.status_code == 200, read.text
        assert read.json()["name"] == [{"text": name}]
    assert counts(engine)["fhir_resource"] == 3


def test_cli_load_splits_ndjson_lines_at_newline_only(
    backend: str, new_database: object, tmp_path: Path
) -> None:
    url = str(new_database(backend))  # type: ignore[operator]
    feed = tmp_path / "feed.ndjson"
    feed.write_bytes(NDJSON_BODY)
    result = run_trialbridge(url, "load", str(feed), cwd=tmp_path, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == "loaded 1 file(s): 3 created, 3 rejected\n"
    errors = [line for line in result.stderr.split("\n") if line.startswith(str(feed))]
    assert len(errors) == 3, result.stderr
    assert errors[0].startswith(f"{feed}:4: 400 line 4: malformed JSON"), errors[0]
    assert errors[1].startswith(f"{feed}:5: 400 line 5: malformed JSON: Invalid control"), errors[1]
    assert errors[2].startswith(f"{feed}:7: 400 line 7: malformed JSON: Expecting value"), errors[2]
    engine = make_engine(Settings(database_url=url))
    try:
        assert stored_names(engine) == NAMES
        assert counts(engine)["fhir_resource"] == 3
    finally:
        engine.dispose()
