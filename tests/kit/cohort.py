"""Cohort outcomes over HTTP, as a test needs them: computed from everything written so far.

The servers compute cohort snapshots in the background, so a read right after a write may
answer the previous snapshot (`stale: true`) or, before the first one, 503 `cohort_not_ready`.
`fresh_outcomes` asks for `?fresh=true` (admin scope: the tests' servers run with authentication
off, which is admin), which waits for a snapshot reflecting every change committed before it.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from service.reads.cohort_reports import CohortReports

API = "/api/v1"


def outcomes_path(client: httpx.Client, study: str) -> str:
    """The outcomes path of `study` for a client based on /api/v1 or on the server's root."""
    prefix = "" if client.base_url.path.rstrip("/").endswith(API) else API
    return f"{prefix}/studies/{study}/outcomes"


def fresh_response(
    client: httpx.Client, study: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """GET the study's outcomes with `fresh=true`: 200 with a snapshot that reflects every write."""
    response = client.get(
        outcomes_path(client, study), params={"fresh": "true"}, headers=headers, timeout=300
    )
    assert response.status_code == 200, response.text[:2000]
    assert response.json()["stale"] is False, "a write ran concurrently with the fresh read"
    return response


def fresh_outcomes(client: httpx.Client, study: str) -> dict[str, Any]:
    """The study's whole outcomes answer (`study`, `computed_at`, `data_as_of`, `stale`, `plots`,
    `outcomes`), reflecting every write made before the call."""
    body: dict[str, Any] = fresh_response(client, study).json()
    return body


def settle(app: FastAPI, *studies: str, timeout: float = 120) -> None:
    """Wait in process (no request, so nothing in the access log) until the running app's
    snapshots of these studies reflect every write so far."""
    reports = app.state.reports
    assert isinstance(reports, CohortReports)
    for study in studies:
        assert reports.refresher.wait_fresh(study, timeout) is not None, study


def fresh_get(
    client: httpx.Client,
    study: str,
    part: str,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """GET a part of the study's snapshot (`subjects`, `report.html`) with `fresh=true`: 200,
    reflecting every write made before the call."""
    response = client.get(
        f"{outcomes_path(client, study)}/{part}",
        params={**(params or {}), "fresh": "true"},
        headers=headers,
        timeout=300,
    )
    assert response.status_code == 200, response.text[:2000]
    return response


def fresh_listing(
    client: httpx.Client, study: str, *, limit: int | None = None, cursor: str | None = None
) -> dict[str, Any]:
    """One page of the study's per-subject listing from a snapshot reflecting every write."""
    params: dict[str, Any] = {}
    if limit is not None:
        params["limit"] = limit
    if cursor is not None:
        params["cursor"] = cursor
    body: dict[str, Any] = fresh_get(client, study, "subjects", params).json()
    assert body["stale"] is False, "a write ran concurrently with the fresh read"
    return body


def every_row(client: httpx.Client, study: str, listing: str) -> list[dict[str, Any]]:
    """Every row of one of the snapshot's listings (`subjects`, `swimmer`, `excluded`), page by
    page, from a snapshot reflecting every write made before the call."""
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": 500, **({"cursor": cursor} if cursor is not None else {})}
        page = fresh_get(client, study, listing, params).json()
        assert page["stale"] is False, "a write ran concurrently with the fresh read"
        rows += page[listing]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


def fresh_report(client: httpx.Client, study: str) -> httpx.Response:
    """The study's report.html from a snapshot reflecting every write."""
    return fresh_get(client, study, "report.html")
