"""Edges of the JSON API (/api/v1) over real HTTP on both backends: each answer is a documented one.

U+0000 anywhere, as_of out of range, unparseable bodies, the body limit, 405 `Allow`, content
negotiation of the deviation log, filters that cannot match, weak If-None-Match on plots, PATCH
idempotence and If-Match lists, blank secrets. A refused request writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from service.infra.settings import Settings
from service.notifications import outbound
from tests.conftest import LiveServer, counts, refuse_server_errors, start_server, stop_server
from tests.kit.cohort import fresh_outcomes
from tests.kit.nct import NCT, deviations
from tests.test_deviation_api import late_surgery_subject, one

SUBSCRIPTION = {"url": "https://ctms.example.org/hooks", "events": ["deviation.opened"]}
INVALID = "the request is not valid"


@pytest.fixture
def api(server: LiveServer, fhir: httpx.Client) -> Iterator[httpx.Client]:
    """A client on /api/v1 of an empty store (the `fhir` fixture empties it); a 5xx fails the test."""
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=60) as client:
        refuse_server_errors(client)
        yield client


@pytest.fixture
def public_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Receiver host names resolve to a public address (the server runs in this process)."""
    monkeypatch.setattr(outbound, "resolve_host", lambda host: ["93.184.216.34"])


@pytest.fixture
def deviation(api: httpx.Client, fhir: httpx.Client) -> dict[str, Any]:
    """One subject operated on Day 31: a single surgery_window deviation, at version 1."""
    late_surgery_subject(fhir)
    [found] = deviations(api)
    return found


def error(status: int, code: str, message: str, details: list[Any] | None = None) -> Any:
    """The documented JSON error body."""
    return {"error": {"status": status, "code": code, "message": message, "details": details or []}}


def nul_query(name: str) -> Any:
    """The 422 for U+0000 in query parameter `name`, like any other bad parameter."""
    return error(422, "invalid_request", INVALID, [{"loc": ["query", name], "msg": NUL}])


NUL = "must not contain U+0000"


# -- 1. U+0000 ---------------------------------------------------------------------------------------


def test_nul_anywhere_is_a_documented_error_not_a_500(
    api: httpx.Client, deviation: dict[str, Any], engine: Engine
) -> None:
    """PostgreSQL cannot store or compare U+0000: query 422, path id 404, body 422, cursor 400."""
    before = counts(engine)
    study = f"/studies/{NCT}"
    dev_url = f"{study}/deviations/{deviation['id']}"
    for path, name in (
        (f"{study}/subjects", "status"),
        (f"{study}/subjects", "subject_number"),
        (f"{study}/deviations", "rule"),
        (f"{study}/deviations", "subject"),
        (f"{study}/eligibility", "cursor"),
    ):
        answer = api.get(path, params={name: "a\x00"})
        assert (answer.status_code, answer.json()) == (422, nul_query(name)), (path, name)

    not_ours = error(400, "invalid_cursor", "the cursor is not one this service issued")
    for path, cursor in (
        (f"{study}/subjects", "Uy0A"),  # "S-\0"
        (f"{study}/eligibility", "Uy0A"),
        (f"{study}/deviations", "REVWLQA"),  # "DEV-\0"
    ):
        answer = api.get(path, params={"cursor": cursor})
        assert (answer.status_code, answer.json()) == (400, not_ours), path

    for method, path, code, message in (
        ("GET", f"{study}/subjects/%00/timeline", "subject_not_found", "no subject '\\x00'"),
        ("GET", f"{study}/subjects/%00/outcomes", "subject_not_found", "no subject '\\x00'"),
        ("GET", f"{study}/subjects/S-%00/eligibility", "subject_not_found", "no subject 'S-\\x00'"),
        ("GET", f"{study}/deviations/%00", "deviation_not_found", "no deviation '\\x00'"),
        ("DELETE", "/subscriptions/%00", "subscription_not_found", "no subscription '\\x00'"),
    ):
        answer = api.request(method, path)
        assert (answer.status_code, answer.json()) == (404, error(404, code, message)), path

    patch = api.patch(
        dev_url,
        json={"by": "\x00", "status": "acknowledged"},
        headers={"If-Match": 'W/"1"'},
    )
    assert (patch.status_code, patch.json()) == (
        422,
        error(422, "invalid_request", INVALID, [{"loc": ["body", "by"], "msg": NUL}]),
    )
    secret = api.post("/subscriptions", json={**SUBSCRIPTION, "secret": "\x00" * 16})
    assert (secret.status_code, secret.json()) == (
        422,
        error(422, "invalid_request", INVALID, [{"loc": ["body", "secret"], "msg": NUL}]),
    )
    assert counts(engine) == before
    assert one(api, deviation["id"])[0]["version"] == 1


# -- 2. as_of ----------------------------------------------------------------------------------------


def test_as_of_outside_the_supported_years_or_not_ascii_is_invalid_as_of(
    api: httpx.Client, deviation: dict[str, Any]
) -> None:
    """Counting 8 weeks back from 0001-01-01 overflowed (500); '٢٠٢٥' was read as 2025."""
    path = f"/studies/{NCT}/subjects/{deviation['subject_id']}/eligibility"
    for bad in (
        "0001-01-01",
        "1899-12-31",
        "9001-01-01",
        "9999-12-31",
        "\u0662\u0660\u0662\u0665-03-15",
    ):
        answer = api.get(path, params={"as_of": bad})
        message = (
            f"as_of {bad!r} must be a date (2025-03-15) or a dateTime with a zone, "
            "from 1900-01-01 to 9000-12-31"
        )
        assert (answer.status_code, answer.json()) == (400, error(400, "invalid_as_of", message))
    for good in ("1900-01-01", "9000-12-31", "9000-12-31T23:59:59-05:00"):
        answer = api.get(path, params={"as_of": good})
        assert answer.status_code == 200, (good, answer.text)
        assert answer.json()["as_of"] == good[:10]


# -- 3. bodies json.loads cannot read ----------------------------------------------------------------


def test_unparseable_bodies_answer_like_malformed_json(
    api: httpx.Client, deviation: dict[str, Any], engine: Engine
) -> None:
    """Not UTF-8, or nested 100 000 deep: 422 invalid_request at ["body"], as malformed JSON is."""
    before = counts(engine)
    unparseable = error(
        422,
        "invalid_request",
        INVALID,
        [
            {
                "loc": ["body"],
                "msg": "cannot be parsed as JSON (bytes that are not UTF-8, or nested too deeply)",
            }
        ],
    )
    json_type = {"content-type": "application/json"}
    url = f"/studies/{NCT}/deviations/{deviation['id']}"
    latin1 = api.patch(
        url,
        content=b'{"by":"\xe9","status":"acknowledged"}',
        headers={**json_type, "If-Match": 'W/"1"'},
    )
    assert (latin1.status_code, latin1.json()) == (422, unparseable)
    deep = api.post("/subscriptions", content=b"[" * 100_000, headers=json_type)
    assert (deep.status_code, deep.json()) == (422, unparseable)
    malformed = api.post("/subscriptions", content=b"{", headers=json_type)
    assert (malformed.status_code, malformed.json()["error"]["code"]) == (422, "invalid_request")
    assert counts(engine) == before


# -- 4. TRIALBRIDGE_MAX_BODY_BYTES -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_limit(database_url: str) -> Iterator[str]:
    """The app with a 1000-byte body limit, on the backend's shared database."""
    settings = Settings(database_url=database_url, max_body_bytes=1000, webhook_interval_seconds=0)
    srv, thread, url = start_server(settings)
    yield f"{url}/api/v1"
    stop_server(srv, thread)


def test_bodies_over_the_limit_are_413_declared_or_streamed(
    small_limit: str, fhir: httpx.Client, engine: Engine, public_dns: None
) -> None:
    """Refused from Content-Length before reading, or as soon as a chunked body passes the limit."""
    before = counts(engine)
    too_large = error(413, "body_too_large", "the request body exceeds the limit of 1000 bytes")
    body = (str(SUBSCRIPTION).replace("'", '"') + " " * 2000).encode()
    json_type = {"content-type": "application/json"}
    with httpx.Client(base_url=small_limit, timeout=60) as client:
        declared = client.post("/subscriptions", content=body, headers=json_type)
        assert (declared.status_code, declared.json()) == (413, too_large)
        streamed = client.post(
            "/subscriptions",
            content=iter([body[:600], body[600:1200], body[1200:]]),
            headers=json_type,
        )
        assert "content-length" not in streamed.request.headers
        assert (streamed.status_code, streamed.json()) == (413, too_large)
        within = client.post("/subscriptions", content=b"{", headers=json_type)
        assert within.status_code == 422  # under the limit the body is read and judged
    assert counts(engine) == before


# -- 5. 405 ------------------------------------------------------------------------------------------


def test_wrong_method_names_the_allowed_ones(api: httpx.Client) -> None:
    """RFC 9110: a 405 carries `Allow`."""
    answer = api.delete("/studies")
    assert (answer.status_code, answer.json()) == (
        405,
        error(405, "http_error", "Method Not Allowed"),
    )
    assert answer.headers["allow"] == "GET"


def test_a_405_lists_every_method_served_at_the_path(api: httpx.Client, fhir: httpx.Client) -> None:
    """Not only the first route's: /subscriptions serves GET and POST from two routes."""
    subscriptions = api.put("/subscriptions", json={})
    assert (subscriptions.status_code, subscriptions.headers["allow"]) == (405, "GET, POST")
    for path, allow in (
        ("/Patient/p1", "DELETE, GET, PUT"),
        ("/Patient", "DELETE, GET, POST, PUT"),
        ("", "POST"),
    ):
        answer = fhir.patch(path, content=b"{}")
        assert (answer.status_code, answer.headers.get("allow")) == (405, allow), path
        assert answer.json()["resourceType"] == "OperationOutcome"


# -- 6. content negotiation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "served"),
    [
        (None, "json"),
        ("application/json", "json"),
        ("text/csv", "csv"),
        ("TEXT/CSV", "csv"),
        ("text/csv, application/json;q=0.5", "csv"),
        ("application/json;q=0.9, text/csv", "csv"),
        ("text/csv;q=0.5, application/json", "json"),
        ("application/json, text/csv", "json"),
        ("text/*", "csv"),
        ("*/*", "json"),
        ("*/*;q=0.1, text/csv", "csv"),
        ("text/csv;q=0, */*", "json"),
        ("application/json;q=0, text/csv;q=0.1", "csv"),
        ("image/png", None),
        ("text/csv;q=0", None),
        ("application/json;q=0, text/csv;q=0", None),
    ],
)
def test_deviation_log_negotiates_json_or_csv(
    api: httpx.Client, accept: str | None, served: str | None
) -> None:
    """Media ranges, case, q-values (q=0 refuses) and wildcards; ties go to JSON; else 406."""
    headers = {"Accept": accept} if accept is not None else {}
    answer = api.get(f"/studies/{NCT}/deviations", headers=headers)
    if served is None:
        message = f"Accept: {accept} cannot be served; this list is application/json or text/csv"
        assert (answer.status_code, answer.json()) == (406, error(406, "not_acceptable", message))
        return
    assert answer.status_code == 200, answer.text
    assert answer.headers["vary"] == "Accept"
    if served == "csv":
        assert answer.headers["content-type"] == "text/csv; charset=utf-8"
        assert answer.text.startswith("id,subject_id,rule,")
    else:
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["deviations"] == []


# -- 7. filters that cannot match --------------------------------------------------------------------


def test_filters_that_could_only_match_nothing_are_422(
    api: httpx.Client, deviation: dict[str, Any]
) -> None:
    """Unknown rule or subject status, dates not YYYY-MM-DD, or from after to: 422, not an empty list."""
    log = f"/studies/{NCT}/deviations"

    def refused(path: str, params: dict[str, str], name: str, msg: str) -> None:
        answer = api.get(path, params=params)
        details = [{"loc": ["query", name], "msg": msg}]
        assert (answer.status_code, answer.json()) == (
            422,
            error(422, "invalid_request", INVALID, details),
        ), params

    rules = (
        "dose_extra, dose_mismatch, dose_missing, followup_visit, ineligible_enrolled, "
        "prohibited_medication, screening_biopsy_count, screening_stool_missing, surgery_window"
    )
    refused(log, {"rule": "bogus"}, "rule", f"must be one of {rules}")
    day = "must be a day written YYYY-MM-DD"
    for name, value in (
        ("date_from", "86400"),
        ("date_to", "0"),
        ("date_from", "2025-04-01T00:00:00Z"),
        ("date_to", "\u0662\u0660\u0662\u0665-03-15"),
    ):
        refused(log, {name: value}, name, day)
    refused(log, {"date_from": "2025-02-30"}, "date_from", "must be a day of the calendar")
    refused(
        log,
        {"date_from": "2025-05-01", "date_to": "2025-04-01"},
        "date_from",
        "must not be after date_to",
    )
    assert [d["id"] for d in deviations(api, rule="surgery_window")] == [deviation["id"]]
    assert [d["id"] for d in deviations(api, date_from="2025-04-09", date_to="2025-04-09")] == [
        deviation["id"]
    ]

    statuses = (
        "candidate, eligible, follow-up, ineligible, not-registered, off-study, on-study, "
        "on-study-intervention, on-study-observation, pending-on-study, potential-candidate, "
        "screening, unknown, withdrawn"
    )
    refused(f"/studies/{NCT}/subjects", {"status": "bogus"}, "status", f"must be one of {statuses}")
    refused(
        "/studies/cirae-dupilumab/subjects",
        {"status": "on-study"},
        "status",
        "must be one of included",
    )
    on_study = api.get(f"/studies/{NCT}/subjects", params={"status": "on-study"}).json()
    assert [s["subject_id"] for s in on_study["subjects"]] == [deviation["subject_id"]]
    included = api.get("/studies/cirae-dupilumab/subjects", params={"status": "included"})
    assert [s["status"] for s in included.json()["subjects"]] == ["included"]  # cemiplimab: an ICB


# -- 8. plots: weak If-None-Match --------------------------------------------------------------------


def test_plot_if_none_match_compares_weakly_lists_and_star(api: httpx.Client) -> None:
    """`W/"tag"`, a list naming the tag, and `*` are all "unchanged" (RFC 9110 13.1.2)."""
    url = f"/studies/{NCT}/outcomes/plots/efs.svg"
    fresh_outcomes(api, NCT)
    first = api.get(url)
    assert first.status_code == 200, first.text
    tag = first.headers["etag"]
    for header in (tag, f"W/{tag}", f'"other", {tag}', f'W/"other", W/{tag}', "*"):
        again = api.get(url, headers={"If-None-Match": header})
        assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", tag), header
    changed = api.get(url, headers={"If-None-Match": '"other"'})
    assert (changed.status_code, changed.content) == (200, first.content)


# -- 9. PATCH: blank `by`, acknowledging twice, If-Match ---------------------------------------------


def test_patch_refuses_blank_by_and_a_second_acknowledge_and_reads_if_match_lists(
    api: httpx.Client, deviation: dict[str, Any], engine: Engine
) -> None:
    """The first acknowledgement stands; `*` and lists match; malformed tags are 400, echoed short."""
    url = f"/studies/{NCT}/deviations/{deviation['id']}"
    ack = {"by": "j.doe@site.org", "status": "acknowledged"}
    before = counts(engine)
    blank = api.patch(url, json={**ack, "by": " \t "}, headers={"If-Match": 'W/"1"'})
    assert (blank.status_code, blank.json()) == (
        422,
        error(
            422,
            "invalid_request",
            INVALID,
            [{"loc": ["body", "by"], "msg": "must not be only whitespace"}],
        ),
    )
    for tag in ('W/"1x"', 'W/"\u00b9"', "1", 'W/"1" W/"2"', 'W/"1",', "x" * 5000):
        bad = api.patch(url, json=ack, headers={b"If-Match": tag.encode("latin-1")})
        shown = tag if len(tag) <= 100 else tag[:100] + "…"
        message = f'If-Match {shown!r} is not an ETag of ours (W/"<version>"), a list of them, or *'
        assert (bad.status_code, bad.json()) == (400, error(400, "invalid_if_match", message)), tag
    assert counts(engine) == before

    listed = api.patch(url, json=ack, headers={"If-Match": 'W/"7", "1"'})
    assert listed.status_code == 200, listed.text
    first = listed.json()
    assert (first["version"], first["acknowledged_by"]) == (2, "j.doe@site.org")

    again = api.patch(url, json={**ack, "by": "m.roe@site.org"}, headers={"If-Match": "*"})
    assert (again.status_code, again.json()) == (
        409,
        error(
            409,
            "already_acknowledged",
            "the deviation was acknowledged by j.doe@site.org; send a comment alone to add to it",
        ),
    )
    after, etag = one(api, deviation["id"])
    assert after == first
    assert etag == 'W/"2"'
    assert [h["action"] for h in after["history"]] == ["opened", "acknowledged"]

    comment = api.patch(
        url, json={"by": "m.roe@site.org", "comment": "seen"}, headers={"If-Match": "*"}
    )
    assert comment.status_code == 200, comment.text
    assert comment.json()["acknowledged_by"] == "j.doe@site.org"
    stale = api.patch(url, json={"by": "x", "comment": "y"}, headers={"If-Match": 'W/"1", W/"2"'})
    assert (stale.status_code, stale.json()["error"]["details"]) == (
        412,
        [{"current_etag": 'W/"3"'}],
    )


# -- 10. subscription secret -------------------------------------------------------------------------


def test_a_secret_of_only_whitespace_is_refused(
    api: httpx.Client, engine: Engine, public_dns: None
) -> None:
    """Sixteen spaces are sixteen characters, and no secret at all."""
    before = counts(engine)
    answer = api.post("/subscriptions", json={**SUBSCRIPTION, "secret": " " * 16 + "\t\n"})
    assert (answer.status_code, answer.json()) == (
        422,
        error(
            422,
            "invalid_request",
            INVALID,
            [{"loc": ["body", "secret"], "msg": "must not be only whitespace"}],
        ),
    )
    assert counts(engine) == before
    created = api.post("/subscriptions", json={**SUBSCRIPTION, "secret": " padded secret 16 "})
    assert created.status_code == 201, created.text  # spaces inside a real secret are fine
