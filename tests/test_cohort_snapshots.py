"""Cohort outcomes served from snapshots computed off the request path.

A write marks the studies it changed (a `study_change` row in its transaction); reads answer the
last snapshot with `computed_at`, `data_as_of` and `stale`, an ETag, and 503 `cohort_not_ready`
before the first one; `?fresh=true` (admin) waits for a fresh one; the refresher recomputes in
the background, once per change even with two server processes on one database.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pypdf import PdfReader
from sqlalchemy import text

from service.access.clients import add_client
from service.infra.settings import Settings
from service.protocol.schema import StudyProtocol
from service.reads.cohort_refresher import kind_report
from service.reads.cohort_reports import CohortReports
from service.studies.kind import CohortData, CohortReport
from tests.conftest import FHIR_JSON, clear_store
from tests.kit import fhir as kit
from tests.kit.auth import access_token, bearer, ec_key, jwks
from tests.kit.cli import run_trialbridge
from tests.kit.client import put_resources
from tests.kit.cohort import fresh_listing, fresh_outcomes, fresh_report, fresh_response, settle
from tests.kit.live import Served, running_servers, served
from tests.test_metrics import scrape, value

NCT = "NCT06088771"
CIRAE = "cirae-dupilumab"
STUDY = kit.research_study(id="nct", system=None)
NOT_READY = {
    "status": 503,
    "code": "cohort_not_ready",
    "message": f"the cohort outcomes of {NCT} have not been computed yet",
    "details": [],
}


def enrolled(pid: str, *, icb: bool = False) -> list[dict[str, Any]]:
    """An NCT06088771 subject (its ResearchSubject names the study); with `icb`, a cemiplimab
    dose too, which also makes the patient a member of the cirAE cohort."""
    out = [
        kit.patient(id=pid, gender="female", birth_date="1960-01-01"),
        kit.research_subject(id=f"{pid}-rs", patient=pid, study_id="nct", start="2025-03-03"),
    ]
    if icb:
        out.append(
            kit.medication_administration(
                id=f"{pid}-icb", patient=pid, medication="cemiplimab", effective="2025-03-10"
            )
        )
    return out


def subjects_in(body: dict[str, Any]) -> int:
    """How many subjects NCT06088771's outcomes count."""
    return int(body["outcomes"]["counts"]["subjects"])


@dataclass
class Manual:
    """A server whose refresher computes only when asked (`?fresh=true`), so stale stays stale."""

    running: Served
    database_url: str
    api: httpx.Client
    fhir: httpx.Client


@pytest.fixture(scope="module")
def manual_server(backend: str, new_database: Any) -> Iterator[tuple[Served, str]]:
    url = str(new_database(backend))
    settings = Settings(
        database_url=url, webhook_interval_seconds=0, cohort_refresh_interval_seconds=0
    )
    with served(settings) as running:
        yield running, url


@pytest.fixture
def manual(manual_server: tuple[Served, str]) -> Iterator[Manual]:
    running, url = manual_server
    clear_store(running.engine)
    with (
        httpx.Client(base_url=f"{running.url}/api/v1", timeout=120) as api,
        httpx.Client(base_url=f"{running.url}/fhir", headers=FHIR_JSON, timeout=120) as fhir,
    ):
        put_resources(fhir, STUDY)
        yield Manual(running, url, api, fhir)


def test_before_the_first_snapshot_reads_answer_503_cohort_not_ready(manual: Manual) -> None:
    """No snapshot yet: the documented error body and Retry-After; the reader never computes."""
    for path in (
        f"/studies/{NCT}/outcomes",
        f"/studies/{NCT}/outcomes/plots/efs.svg",
        f"/studies/{NCT}/outcomes/subjects",
        f"/studies/{NCT}/outcomes/swimmer",
        f"/studies/{NCT}/outcomes/report.html",
        f"/studies/{NCT}/outcomes/report.pdf",
    ):
        answer = manual.api.get(path)
        assert answer.status_code == 503, answer.text
        assert answer.json() == {"error": NOT_READY}
        assert answer.headers["retry-after"] == "1"  # debounce 1 s, no polling here
    body = fresh_outcomes(manual.api, NCT)
    assert (body["data_as_of"], body["stale"], subjects_in(body)) == (0, False, 0)
    assert manual.api.get(f"/studies/{NCT}/outcomes/plots/efs.svg").status_code == 200


def test_a_write_makes_the_snapshot_stale_until_a_refresh_pass(manual: Manual) -> None:
    """The old snapshot is served, marked stale, until `trialbridge refresh-cohorts` runs."""
    before = fresh_outcomes(manual.api, NCT)
    fresh_outcomes(manual.api, CIRAE)
    put_resources(manual.fhir, *enrolled("a"))  # an NCT06088771 subject, not in the cirAE cohort
    stale = manual.api.get(f"/studies/{NCT}/outcomes").json()
    assert stale["stale"] is True
    assert (stale["computed_at"], stale["data_as_of"]) == (
        before["computed_at"],
        before["data_as_of"],
    )
    assert subjects_in(stale) == 0
    assert manual.api.get(f"/studies/{CIRAE}/outcomes").json()["stale"] is False

    done = run_trialbridge(manual.database_url, "refresh-cohorts")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    computed = re.fullmatch(rf"{NCT}: computed in \d+\.\d\d s, data as of change (\d+)", lines[0])
    assert computed is not None, lines
    assert lines[1] == f"{CIRAE}: fresh, data as of change {before['data_as_of']}"

    after = manual.api.get(f"/studies/{NCT}/outcomes").json()
    assert after["stale"] is False
    assert after["data_as_of"] == int(computed[1]) > before["data_as_of"]
    assert subjects_in(after) == 1


def test_the_listing_and_the_report_are_served_from_the_snapshot(manual: Manual) -> None:
    """After a write, the listing and the reports (HTML, PDF) still show the last snapshot (stale,
    same cut-off, the old rows) and answer the outcomes' ETag; `fresh=true` shows the new data."""
    put_resources(manual.fhir, *enrolled("a"))
    outcomes = fresh_response(manual.api, NCT)
    listing = fresh_listing(manual.api, NCT)
    report = fresh_report(manual.api, NCT)
    tag = outcomes.headers["etag"]
    assert listing["stale"] is False
    assert (listing["computed_at"], listing["data_as_of"]) == (
        outcomes.json()["computed_at"],
        outcomes.json()["data_as_of"],
    )
    assert len(listing["subjects"]) == 1
    assert report.headers["etag"] == tag
    cut_off = (
        f"{outcomes.json()['computed_at']} (the data the service held when these results were "
        f"computed: every change up to number {outcomes.json()['data_as_of']})"
    )
    assert cut_off in report.text
    for path in ("subjects", "swimmer", "report.html", "report.pdf"):
        again = manual.api.get(f"/studies/{NCT}/outcomes/{path}", headers={"If-None-Match": tag})
        assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", tag)

    put_resources(manual.fhir, *enrolled("b"))
    stale = manual.api.get(f"/studies/{NCT}/outcomes/subjects")
    assert stale.status_code == 200
    assert stale.headers["etag"] != tag
    body = stale.json()
    assert (body["stale"], body["data_as_of"], len(body["subjects"])) == (
        True,
        listing["data_as_of"],
        1,
    )
    old_page = manual.api.get(f"/studies/{NCT}/outcomes/report.html")
    assert old_page.headers["etag"] == stale.headers["etag"]
    assert cut_off in old_page.text
    assert "Data changed since this cut-off" in old_page.text
    assert "Data changed since this cut-off" not in report.text
    old_pdf = manual.api.get(f"/studies/{NCT}/outcomes/report.pdf")
    assert old_pdf.headers["etag"] == stale.headers["etag"]
    pdf_text = " ".join(
        " ".join(p.extract_text() for p in PdfReader(io.BytesIO(old_pdf.content)).pages).split()
    )
    assert cut_off in pdf_text
    assert "Data changed since this cut-off" in pdf_text
    newer = fresh_listing(manual.api, NCT)
    assert (newer["stale"], len(newer["subjects"])) == (False, 2)
    assert newer["data_as_of"] > listing["data_as_of"]


def test_fresh_waits_at_most_its_timeout_then_answers_503_cohort_not_fresh(
    manual: Manual,
) -> None:
    """While another process holds the study's computation lease, `fresh=true` cannot get a fresh
    snapshot: after `TRIALBRIDGE_COHORT_FRESH_TIMEOUT_SECONDS` it answers 503 `cohort_not_fresh`
    with Retry-After (never waits longer); once the lease is gone it computes and answers 200."""
    fresh_outcomes(manual.api, NCT)
    put_resources(manual.fhir, *enrolled("a"))  # a change the snapshot does not reflect yet
    reports = manual.running.app.state.reports
    assert isinstance(reports, CohortReports)
    timeout, reports.fresh_timeout = reports.fresh_timeout, 0.5
    lease = {"s": NCT, "o": "another-process", "u": "2999-01-01 00:00:00+00:00"}
    try:
        with manual.running.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO cohort_lease (study_id, owner, until) VALUES (:s, :o, :u)"),
                lease,
            )
        started = time.monotonic()
        answer = manual.api.get(f"/studies/{NCT}/outcomes", params={"fresh": "true"})
        waited = time.monotonic() - started
        assert (answer.status_code, answer.json()["error"]["code"]) == (503, "cohort_not_fresh")
        assert answer.headers["retry-after"] == "1"
        assert 0.5 <= waited < 30  # bounded by the timeout (30: a loaded CI machine's margin)
        stale = manual.api.get(f"/studies/{NCT}/outcomes").json()  # the old snapshot meanwhile
        assert (stale["stale"], subjects_in(stale)) == (True, 0)
    finally:
        with manual.running.engine.begin() as conn:
            conn.execute(text("DELETE FROM cohort_lease WHERE study_id = :s"), {"s": NCT})
        reports.fresh_timeout = timeout
    assert subjects_in(fresh_outcomes(manual.api, NCT)) == 1


def test_a_lease_whose_owner_stopped_renewing_it_is_taken_over(manual: Manual) -> None:
    """A process that died mid-computation leaves its lease behind; once the lease's time has
    passed, this process computes the study (fresh=true answers 200 with the change in it)."""
    fresh_outcomes(manual.api, NCT)
    put_resources(manual.fhir, *enrolled("a"))
    lapsed = {"s": NCT, "o": "a-process-that-died", "u": "2000-01-01 00:00:00+00:00"}
    with manual.running.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO cohort_lease (study_id, owner, until) VALUES (:s, :o, :u)"), lapsed
        )
    body = fresh_outcomes(manual.api, NCT)
    assert (body["stale"], subjects_in(body)) == (False, 1)
    with manual.running.engine.connect() as conn:
        owners = conn.execute(
            text("SELECT owner FROM cohort_lease WHERE study_id = :s"), {"s": NCT}
        ).scalars()
        assert "a-process-that-died" not in list(owners)


def test_data_as_of_advances_with_each_change_and_not_with_a_no_op(manual: Manual) -> None:
    """Each write that changes the study moves data_as_of; resending the same data changes nothing."""
    put_resources(manual.fhir, *enrolled("a"))
    first = fresh_outcomes(manual.api, NCT)
    put_resources(manual.fhir, *enrolled("b"))
    second = fresh_outcomes(manual.api, NCT)
    assert second["data_as_of"] > first["data_as_of"]
    assert (subjects_in(first), subjects_in(second)) == (1, 2)
    put_resources(manual.fhir, *enrolled("b"))  # the same versions: nothing is written
    same = manual.api.get(f"/studies/{NCT}/outcomes").json()
    assert (same["stale"], same["data_as_of"], same["computed_at"]) == (
        False,
        second["data_as_of"],
        second["computed_at"],
    )


def test_etag_answers_304_until_the_snapshot_or_its_staleness_changes(manual: Manual) -> None:
    """If-None-Match (strong, weak, in a list, `*`) → 304; a write makes the answer (stale) differ."""
    url = f"/studies/{NCT}/outcomes"
    first = fresh_response(manual.api, NCT)
    tag = first.headers["etag"]
    assert first.headers["cache-control"] == "no-cache"
    plain = manual.api.get(url)
    assert (plain.headers["etag"], plain.content) == (tag, first.content)
    for header in (tag, f"W/{tag}", f'"other", {tag}', "*"):
        again = manual.api.get(url, headers={"If-None-Match": header})
        assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", tag)
    assert manual.api.get(url, headers={"If-None-Match": '"other"'}).status_code == 200

    put_resources(manual.fhir, *enrolled("a"))
    stale = manual.api.get(url, headers={"If-None-Match": tag})
    assert stale.status_code == 200
    assert stale.json()["stale"] is True
    assert stale.headers["etag"] != tag
    fresh = fresh_response(manual.api, NCT, headers={"If-None-Match": stale.headers["etag"]})
    assert fresh.headers["etag"] not in (tag, stale.headers["etag"])
    unchanged = manual.api.get(url, headers={"If-None-Match": fresh.headers["etag"]})
    assert unchanged.status_code == 304


def test_the_outcomes_body_is_the_documented_shape(manual: Manual) -> None:
    """The snapshot's header fields around the stored outcomes, as JSON."""
    put_resources(manual.fhir, *enrolled("a", icb=True))
    body = fresh_outcomes(manual.api, CIRAE)
    assert list(body) == ["study", "computed_at", "data_as_of", "stale", "plots", "outcomes"]
    assert body["study"] == {"id": CIRAE, "version": "2.0.0", "kind": "cohort"}  # revision 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", body["computed_at"])
    assert body["plots"] == {
        name: {
            "png": f"/api/v1/studies/{CIRAE}/outcomes/plots/{name}.png",
            "svg": f"/api/v1/studies/{CIRAE}/outcomes/plots/{name}.svg",
        }
        for name in ("os", "os_matched_control_1", "os_matched_control_2")
    }
    assert sum(body["outcomes"]["groups"].values()) == 1
    png = manual.api.get(f"/studies/{CIRAE}/outcomes/plots/os.png")
    assert (png.status_code, png.content[:8]) == (200, b"\x89PNG\r\n\x1a\n")


def test_a_snapshot_stores_figure_data_and_reads_draw_each_figure_once(manual: Manual) -> None:
    """A refresh stores each figure's data, no rendering; the first read draws it, later reads
    of the same snapshot answer the kept drawing with the same ETag, and a new snapshot's
    figure has a new ETag (an old one no longer answers 304)."""
    put_resources(manual.fhir, *enrolled("a"))
    fresh_outcomes(manual.api, NCT)
    with manual.running.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT name, format FROM cohort_figure WHERE study_id = :s ORDER BY name"),
            {"s": NCT},
        ).all()
    assert [tuple(r) for r in rows] == [("efs", "data"), ("os", "data"), ("swimmer", "data")]
    cache = manual.running.app.state.reports.figures
    url = f"/studies/{NCT}/outcomes/plots/os.svg"
    before = cache.draws
    first, again = manual.api.get(url), manual.api.get(url)
    assert (first.status_code, again.status_code) == (200, 200)
    assert (again.content, again.headers["etag"]) == (first.content, first.headers["etag"])
    assert cache.draws == before + 1
    put_resources(manual.fhir, *enrolled("b"))
    fresh_outcomes(manual.api, NCT)
    after = manual.api.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert after.status_code == 200
    assert after.headers["etag"] != first.headers["etag"]
    assert cache.draws == before + 2


# -- fresh=true is for admins ------------------------------------------------------------------------


READER_KEY, ADMIN_KEY = ec_key("reader-1"), ec_key("admin-1")


def test_fresh_needs_the_admin_scope(backend: str, new_database: Any) -> None:
    """A study reader gets the last snapshot (or 503), never a computation on demand: 403."""
    settings = Settings(
        database_url=str(new_database(backend)),
        auth_disabled=False,
        webhook_interval_seconds=0,
        cohort_refresh_interval_seconds=0,
    )
    with served(settings) as running:
        add_client(running.engine, "reader", ["study/*.read"], jwks=jwks(READER_KEY))
        add_client(running.engine, "boss", ["study/*.read", "admin"], jwks=jwks(ADMIN_KEY))
        reader = bearer(access_token(running.url, READER_KEY, "reader", "study/*.read"))
        boss = bearer(access_token(running.url, ADMIN_KEY, "boss", "study/*.read admin"))
        url = f"{running.url}/api/v1/studies/{NCT}/outcomes"
        refused = httpx.get(url, params={"fresh": "true"}, headers=reader, timeout=60)
        assert refused.status_code == 403
        assert refused.json()["error"] == {
            "status": 403,
            "code": "insufficient_scope",
            "message": "this needs the scope admin",
            "details": [],
        }
        assert httpx.get(url, headers=reader, timeout=60).json() == {"error": NOT_READY}
        granted = httpx.get(url, params={"fresh": "true"}, headers=boss, timeout=120)
        assert granted.status_code == 200, granted.text
        served_to_reader = httpx.get(url, headers=reader, timeout=60)
        assert served_to_reader.status_code == 200
        assert served_to_reader.json()["computed_at"] == granted.json()["computed_at"]


# -- the background refresher ----------------------------------------------------------------------


@dataclass
class Interloper:
    """Wraps the refresher's computation of NCT06088771: during the first, a write lands; at the
    start of the second, the served answer is read (it must be the first snapshot, stale)."""

    api_url: str
    fhir_url: str
    members: list[int] = field(default_factory=list)
    seen_before_second: dict[str, Any] = field(default_factory=dict)
    error: list[str] = field(default_factory=list)

    def __call__(self, protocol: StudyProtocol, cohort: CohortData) -> CohortReport:
        if protocol.id == NCT:
            self.members.append(len(cohort.members))
            try:
                self._act(len(self.members))
            except Exception as exc:  # reported by the test, not lost in the refresher's log
                self.error.append(repr(exc))
        return kind_report(protocol, cohort)

    def _act(self, call: int) -> None:
        if call == 1:
            with httpx.Client(base_url=self.fhir_url, headers=FHIR_JSON, timeout=60) as fhir:
                put_resources(fhir, *enrolled("b"))
        elif call == 2:
            self.seen_before_second.update(
                httpx.get(f"{self.api_url}/studies/{NCT}/outcomes", timeout=60).json()
            )


def wait_until(check: Any, seconds: float = 60) -> Any:
    """Poll `check()` until it returns something truthy; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_write_during_a_computation_leaves_it_stale_and_another_pass_follows(
    backend: str, new_database: Any
) -> None:
    """The change committed mid-computation is not consumed: the stored snapshot says stale, and
    the refresher computes again by itself (no fresh request), this time with both subjects."""
    settings = Settings(
        database_url=str(new_database(backend)),
        webhook_interval_seconds=0,
        cohort_refresh_interval_seconds=0.2,
        cohort_debounce_seconds=0.2,
    )
    with served(settings) as running:
        with httpx.Client(base_url=f"{running.url}/fhir", headers=FHIR_JSON, timeout=60) as fhir:
            put_resources(fhir, STUDY)
            settle(running.app, NCT, CIRAE)
            reports = running.app.state.reports
            assert isinstance(reports, CohortReports)
            interloper = Interloper(f"{running.url}/api/v1", f"{running.url}/fhir")
            reports.refresher.report_of = interloper
            put_resources(fhir, *enrolled("a"))

        def settled() -> dict[str, Any] | None:
            body: dict[str, Any] = httpx.get(
                f"{running.url}/api/v1/studies/{NCT}/outcomes", timeout=60
            ).json()
            return body if body["stale"] is False and subjects_in(body) == 2 else None

        final = wait_until(settled)
        time.sleep(1.0)  # a third computation, if any, would start within debounce + interval
    assert interloper.error == []
    assert interloper.members == [1, 2]
    seen = interloper.seen_before_second
    assert (seen["stale"], subjects_in(seen)) == (True, 1)
    assert final["data_as_of"] > seen["data_as_of"]


def _stored(samples: dict[Any, float], study: str) -> float:
    return value(samples, "trialbridge_cohort_computations_total", study=study, outcome="stored")


def test_metrics_show_each_snapshot_age_staleness_and_waiting_changes(manual: Manual) -> None:
    """Scrape-time gauges from the snapshot tables, exact for a stale and a fresh study."""
    fresh_outcomes(manual.api, NCT)
    fresh_outcomes(manual.api, CIRAE)
    put_resources(manual.fhir, *enrolled("a"))
    put_resources(manual.fhir, *enrolled("b"))
    samples = scrape(manual.running.url)
    assert value(samples, "trialbridge_cohort_snapshot_stale", study=NCT) == 1
    assert value(samples, "trialbridge_cohort_changes_pending", study=NCT) == 2
    assert value(samples, "trialbridge_cohort_snapshot_stale", study=CIRAE) == 0
    assert value(samples, "trialbridge_cohort_changes_pending", study=CIRAE) == 0
    age = value(samples, "trialbridge_cohort_snapshot_age_seconds", study=NCT)
    assert 0 <= age < 120
    before = _stored(samples, NCT)
    fresh_outcomes(manual.api, NCT)
    after = scrape(manual.running.url)
    assert value(after, "trialbridge_cohort_snapshot_stale", study=NCT) == 0
    assert value(after, "trialbridge_cohort_changes_pending", study=NCT) == 0
    assert _stored(after, NCT) - before == 1
    took = value(after, "trialbridge_cohort_snapshot_compute_seconds", study=NCT)
    assert 0 < took < 60


# -- several processes -------------------------------------------------------------------------------


def _computations(urls: Sequence[str], study: str) -> float:
    return sum(_stored(scrape(url), study) for url in urls)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_server_processes_compute_each_study_once_per_change(
    new_database: Any, tmp_path: Path
) -> None:
    """Both processes watch both studies; the lease and the check after taking it mean one
    computation per study at start and one per write, whichever process received the write."""
    url = str(new_database("postgres"))
    env = {
        "TRIALBRIDGE_COHORT_REFRESH_INTERVAL_SECONDS": "0.2",
        "TRIALBRIDGE_COHORT_DEBOUNCE_SECONDS": "0.3",
    }
    with running_servers(url, 2, tmp_path, env=env) as processes:
        urls = [p.url for p in processes]

        def snapshot(study: str, base: str) -> dict[str, Any] | None:
            answer = httpx.get(f"{base}/api/v1/studies/{study}/outcomes", timeout=60)
            return answer.json() if answer.status_code == 200 else None

        def fresh_everywhere(after: int) -> bool:
            bodies = [snapshot(s, u) for s in (NCT, CIRAE) for u in urls]
            return all(
                b is not None and not b["stale"] and b["data_as_of"] >= after for b in bodies
            )

        wait_until(lambda: fresh_everywhere(0))
        for n, base in enumerate(urls):  # one write to each process, each changing both studies
            with httpx.Client(base_url=f"{base}/fhir", headers=FHIR_JSON, timeout=60) as fhir:
                put_resources(fhir, STUDY, *enrolled(f"p{n}", icb=True))
            before = snapshot(NCT, base)
            assert before is not None
            newer = int(before["data_as_of"]) + 1
            wait_until(lambda newer=newer: fresh_everywhere(newer))
        time.sleep(1.5)  # any late duplicate would have run by now
        for study in (NCT, CIRAE):
            assert _computations(urls, study) == 3, study  # the first, then one per write
        final = snapshot(NCT, urls[0])
        assert final is not None
        assert subjects_in(final) == 2


# -- the command -------------------------------------------------------------------------------------


def test_refresh_cohorts_force_recomputes_fresh_studies(manual: Manual) -> None:
    """`--force` computes every study even when fresh; without it a fresh study is left alone."""
    fresh_outcomes(manual.api, NCT)
    fresh_outcomes(manual.api, CIRAE)
    idle = run_trialbridge(manual.database_url, "refresh-cohorts")
    assert idle.returncode == 0, idle.stderr
    assert [line.split(":")[1].split(",")[0] for line in idle.stdout.splitlines()] == [
        " fresh",
        " fresh",
    ]
    forced = run_trialbridge(manual.database_url, "refresh-cohorts", "--force")
    assert forced.returncode == 0, forced.stderr
    assert [line.split(":")[1].split(" in ")[0] for line in forced.stdout.splitlines()] == [
        " computed",
        " computed",
    ]
