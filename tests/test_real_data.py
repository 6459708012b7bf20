"""Real data end to end: every official HL7 R4 example and the Synthea bulk export, over HTTP.

Expectations are computed from each file itself (its type, its Bundle.type, the types of its
entries), never hard-coded per file, so a new example file is checked by the same rules.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from fhir_mapping.events.context import MappingContext, MemoryLookup
from fhir_mapping.events.model import SourceRef
from fhir_mapping.events.registry import map_resource
from fhir_mapping.resource_types import SUPPORTED_TYPES
from service.protocol.terminology import build_terminology
from tests.conftest import TEST_DATA, counts
from tests.kit.store import store_counts

EXAMPLES_DIR = TEST_DATA / "fhir-r4-examples"
SYNTHEA_DIR = TEST_DATA / "synthea-10"
EXAMPLE_FILES = sorted(EXAMPLES_DIR.glob("*.json"))
SYNTHEA_FILES = sorted(SYNTHEA_DIR.glob("*.ndjson"))
SYNTHEA_LINES = 5842
ACCEPTED_BUNDLE_TYPES = ("transaction", "batch", "collection", "message")
NDJSON = {"content-type": "application/fhir+ndjson"}
EMPTY_STORE = store_counts()
# A resource type in a request URL: the first CamelCase path segment ("Patient", "ValueSet").
_TYPE_SEGMENT = re.compile(r"^[A-Z][A-Za-z]+$")


class _Decimal(str):
    """A JSON number's text, so that `0.10` and `0.1` compare as different values."""

    __slots__ = ()


def _parse(raw: bytes) -> Any:
    """Parse JSON keeping every number's lexical form (byte-faithful comparison)."""
    return json.loads(raw, parse_float=_Decimal, parse_int=_Decimal)


def _load(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_bytes())
    assert isinstance(doc, dict)
    return doc


def _without_server_meta(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource minus meta.versionId / meta.lastUpdated (and meta when that empties it)."""
    out = dict(resource)
    meta = out.get("meta")
    if isinstance(meta, dict):
        rest = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        if rest:
            out["meta"] = rest
        else:
            del out["meta"]
    return out


def _names(expression: str, index: int) -> bool:
    """True when a FHIRPath expression points at Bundle.entry[index] or inside it."""
    prefix = f"Bundle.entry[{index}]"
    return expression == prefix or expression.startswith(prefix + ".")


def _assert_outcome(body: Any, element: str) -> None:
    """An OperationOutcome whose every issue locates the problem: expression or diagnostics."""
    assert isinstance(body, dict)
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"], body
    for issue in body["issue"]:
        assert issue["severity"] in ("fatal", "error"), issue
        assert issue["code"], issue
        assert issue.get("expression") or element in issue.get("diagnostics", ""), issue


def _assert_error_response(response: httpx.Response, element: str) -> Any:
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    _assert_outcome(body, element)
    return body


def _request_type(url: str) -> str | None:
    """The resource type a Bundle.entry.request.url targets (relative or absolute URL)."""
    path = url.split("?", 1)[0]
    if "://" in path:
        path = path.split("://", 1)[1].partition("/")[2]
    for segment in path.split("/"):
        if _TYPE_SEGMENT.match(segment):
            return segment
    return None


def _unsupported_entries(bundle: dict[str, Any]) -> list[int]:
    """Indices of entries whose resource, or whose request target, is a type we do not serve."""
    kind = bundle["type"]
    bad: list[int] = []
    for i, entry in enumerate(bundle.get("entry", [])):
        resource = entry.get("resource")
        if kind == "message" and i == 0:
            assert resource["resourceType"] == "MessageHeader"  # the envelope is not stored
            continue
        types: list[str | None] = []
        if isinstance(resource, dict):
            types.append(resource.get("resourceType"))
        request = entry.get("request")
        if kind in ("transaction", "batch") and isinstance(request, dict):
            types.append(_request_type(str(request.get("url", ""))))
        if any(t not in SUPPORTED_TYPES for t in types):
            bad.append(i)
    return bad


def _expected_statuses(entries: list[dict[str, Any]]) -> list[str]:
    """Into an empty store each identity is created once; a later entry with it updates it."""
    seen: set[tuple[str, str]] = set()
    out: list[str] = []
    for entry in entries:
        resource = entry.get("resource")
        if resource is None:  # a transaction's DELETE (of nothing) or GET (of what it wrote)
            out.append("204 No Content" if entry["request"]["method"] == "DELETE" else "200 OK")
            continue
        key = (resource["resourceType"], resource.get("id") or entry.get("fullUrl") or "")
        out.append("200 OK" if key in seen and key[1] else "201 Created")
        seen.add(key)
    return out


# -- the corpus is what we think it is ---------------------------------------------------------


def test_example_corpus_is_complete() -> None:
    kinds = Counter(_load(p)["resourceType"] == "Bundle" for p in EXAMPLE_FILES)
    assert len(EXAMPLE_FILES) == 301
    assert kinds == {False: 269, True: 32}
    assert len(SYNTHEA_FILES) == 9
    assert sum(len(p.read_bytes().splitlines()) for p in SYNTHEA_FILES) == SYNTHEA_LINES


# -- every official example --------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.name for p in EXAMPLE_FILES])
def test_official_example(fhir: httpx.Client, engine: Engine, path: Path) -> None:
    raw = path.read_bytes()
    doc = _load(path)
    rtype = doc["resourceType"]
    if rtype == "Bundle":
        _check_bundle(fhir, engine, doc, raw)
    else:
        _check_resource(fhir, engine, doc, raw)


def _check_resource(fhir: httpx.Client, engine: Engine, doc: dict[str, Any], raw: bytes) -> None:
    rtype, rid = doc["resourceType"], doc["id"]
    response = fhir.put(f"/{rtype}/{rid}", content=raw)
    assert response.status_code < 500, response.text
    if rtype not in SUPPORTED_TYPES:
        body = _assert_error_response(response, rtype)
        assert response.status_code == 404
        assert [i["code"] for i in body["issue"]] == ["not-supported"]
        assert counts(engine) == EMPTY_STORE
        return
    # A valid official example of a type we serve is stored as sent.
    assert response.status_code == 201, response.text
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"].endswith(f"/fhir/{rtype}/{rid}/_history/1")
    read = fhir.get(f"/{rtype}/{rid}")
    assert read.status_code == 200
    stored = _parse(read.content)
    assert stored["meta"]["versionId"] == "1"
    assert _without_server_meta(stored) == _without_server_meta(_parse(raw))
    assert counts(engine)["fhir_resource_version"] == 1


def _check_bundle(fhir: httpx.Client, engine: Engine, doc: dict[str, Any], raw: bytes) -> None:
    kind = doc.get("type")
    response = fhir.post(str(fhir.base_url).rstrip("/"), content=raw)
    assert response.status_code < 500, response.text
    if kind not in ACCEPTED_BUNDLE_TYPES:
        body = _assert_error_response(response, "Bundle.type")
        assert response.status_code == 422
        assert [(i["code"], i["expression"]) for i in body["issue"]] == [
            ("not-supported", ["Bundle.type"])
        ]
        assert counts(engine) == EMPTY_STORE
        return

    entries = doc.get("entry", [])
    bad = _unsupported_entries(doc)
    if kind == "batch":
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["type"] == "batch-response"
        assert len(result["entry"]) == len(entries)
        for i in bad:
            answer = result["entry"][i]["response"]
            assert answer["status"].startswith("4"), answer
            _assert_outcome(answer["outcome"], f"Bundle.entry[{i}]")
            expressions = [
                e for issue in answer["outcome"]["issue"] for e in issue.get("expression", [])
            ]
            assert any(_names(e, i) for e in expressions), answer
        for answer in (e["response"] for e in result["entry"]):
            if not answer["status"].startswith("2"):
                _assert_outcome(answer["outcome"], "Bundle.entry")
        return

    if bad:
        # transaction / collection / message are atomic: one entry we cannot take refuses all.
        body = _assert_error_response(response, "Bundle.entry")
        expressions = [e for issue in body["issue"] for e in issue.get("expression", [])]
        for i in bad:
            assert any(_names(e, i) for e in expressions), (i, body)
        assert counts(engine) == EMPTY_STORE
        return

    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    stored = entries[1:] if kind == "message" else entries
    expected = _expected_statuses(stored)
    assert [e["response"]["status"] for e in result["entry"]] == expected
    # Each identity stored once; a message's MessageHeader (the envelope) is not stored.
    assert counts(engine)["fhir_resource"] == expected.count("201 Created")


# -- the NSCLC case the trial logic depends on -------------------------------------------------

NSCLC = ("Patient-f001.json", "Condition-f002.json", "Procedure-f002.json")


def test_nsclc_case_is_stored_and_read_back_unchanged(fhir: httpx.Client, engine: Engine) -> None:
    for name in NSCLC:
        raw = (EXAMPLES_DIR / name).read_bytes()
        doc = _load(EXAMPLES_DIR / name)
        put = fhir.put(f"/{doc['resourceType']}/{doc['id']}", content=raw)
        assert put.status_code == 201, put.text
    assert counts(engine)["fhir_resource"] == 3
    for name in NSCLC:
        raw = (EXAMPLES_DIR / name).read_bytes()
        doc = _load(EXAMPLES_DIR / name)
        read = fhir.get(f"/{doc['resourceType']}/{doc['id']}")
        assert read.status_code == 200
        stored = _parse(read.content)
        assert stored["meta"]["versionId"] == "1"
        assert stored["meta"]["lastUpdated"]
        assert _without_server_meta(stored) == _without_server_meta(_parse(raw))


# -- Synthea bulk export -----------------------------------------------------------------------


def _import_all(fhir: httpx.Client) -> Counter[str]:
    statuses: Counter[str] = Counter()
    for path in SYNTHEA_FILES:
        response = fhir.post("/$import", content=path.read_bytes(), headers=NDJSON)
        assert response.status_code == 200, response.text
        bundle = response.json()
        assert bundle["type"] == "batch-response"
        assert len(bundle["entry"]) == len(path.read_bytes().splitlines())
        statuses.update(e["response"]["status"] for e in bundle["entry"])
    return statuses


def test_synthea_import_is_complete_and_idempotent(fhir: httpx.Client, engine: Engine) -> None:
    assert _import_all(fhir) == {"201 Created": SYNTHEA_LINES}
    assert counts(engine)["fhir_resource_version"] == SYNTHEA_LINES
    assert counts(engine)["fhir_resource"] == SYNTHEA_LINES
    assert _import_all(fhir) == {"200 OK": SYNTHEA_LINES}
    assert counts(engine)["fhir_resource_version"] == SYNTHEA_LINES


def _first_patient_encounters() -> tuple[str, list[str]]:
    with (SYNTHEA_DIR / "Patient.000.ndjson").open("rb") as fh:
        patient_id = str(json.loads(fh.readline())["id"])
    wanted = {f"Patient/{patient_id}", f"urn:uuid:{patient_id}"}
    encounters = [
        json.loads(line)
        for line in (SYNTHEA_DIR / "Encounter.000.ndjson").read_bytes().splitlines()
    ]
    ids = [str(e["id"]) for e in encounters if e["subject"]["reference"] in wanted]
    return patient_id, ids


def test_synthea_encounters_of_a_patient_are_found_and_paged(fhir: httpx.Client) -> None:
    patient_id, expected = _first_patient_encounters()
    assert len(expected) == 90  # the fact the paging below relies on: two pages of 50
    for name in ("Patient.000.ndjson", "Encounter.000.ndjson"):
        imported = fhir.post("/$import", content=(SYNTHEA_DIR / name).read_bytes(), headers=NDJSON)
        assert imported.status_code == 200, imported.text

    total = fhir.get("/Encounter", params={"patient": patient_id, "_count": "0"})
    assert total.status_code == 200, total.text
    assert total.json()["total"] == len(expected)
    assert total.json().get("entry", []) == []

    seen: list[str] = []
    page_sizes: list[int] = []
    url: str | None = f"{fhir.base_url}Encounter?patient={patient_id}&_count=50"
    while url is not None:
        assert len(page_sizes) < 10, "paging does not end"
        page = fhir.get(url)
        assert page.status_code == 200, page.text
        bundle = page.json()
        assert bundle["type"] == "searchset"
        assert bundle["total"] == len(expected)
        resources = [e["resource"] for e in bundle.get("entry", [])]
        assert all(r["subject"]["reference"] == f"Patient/{patient_id}" for r in resources)
        seen.extend(r["id"] for r in resources)
        page_sizes.append(len(resources))
        nexts = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        url = nexts[0] if nexts else None
    assert page_sizes == [50, 40]
    assert Counter(seen) == Counter(expected)
    assert len(set(seen)) == len(seen)


def _pure_events_by_kind() -> Counter[str]:
    """Map the Synthea export in memory, with no database, as the reference answer."""
    resources = [json.loads(line) for p in SYNTHEA_FILES for line in p.read_bytes().splitlines()]
    ctx = MappingContext(build_terminology(), MemoryLookup(resources))
    kinds: Counter[str] = Counter()
    for r in resources:
        source = SourceRef(r["resourceType"], r["id"], 1)
        kinds.update(e.kind.value for e in map_resource(r["resourceType"], r, source, ctx))
    return kinds


def test_synthea_events_derived_on_ingest_equal_the_pure_mapping(
    fhir: httpx.Client, engine: Engine
) -> None:
    """What ingest derives inside its transactions is exactly what the mappers say, once."""
    expected = _pure_events_by_kind()
    assert expected["demographics"] == 13  # Patient.000.ndjson has 13 patients
    assert _import_all(fhir) == {"201 Created": SYNTHEA_LINES}
    with engine.connect() as conn:
        stored = Counter(
            {
                row.kind: int(row.n)
                for row in conn.execute(
                    text("SELECT kind, count(*) AS n FROM trial_event GROUP BY kind")
                )
            }
        )
    assert stored == expected
    assert counts(engine)["study_subject"] == 0  # no ResearchSubject and no checkpoint inhibitor
    assert _import_all(fhir) == {"200 OK": SYNTHEA_LINES}
    assert counts(engine)["trial_event"] == sum(expected.values())
