"""Cohort outcomes of NCT06088771 over HTTP: figures from posted FHIR, plots, caching, errors."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from scipy.stats import binomtest

from tests.conftest import LiveServer
from tests.kit import fhir as kit
from tests.kit import nct
from tests.kit.client import put_resources
from tests.kit.cohort import fresh_outcomes


def _subject(
    pid: str, *, dosed: bool, viable: int | None, died: str | None
) -> list[dict[str, Any]]:
    """One enrolled patient: Day 1 on 2025-03-10, lobectomy on Day 18, a visit on 2025-04-28."""
    out: list[dict[str, Any]] = [
        kit.patient(id=pid, gender="female", deceasedDateTime=died)
        if died
        else kit.patient(id=pid, gender="female"),
        kit.research_subject(id=f"{pid}-rs", patient=pid, study_id="nct", start="2025-03-03"),
        kit.encounter(id=f"{pid}-visit", patient=pid, start="2025-04-28", end="2025-04-28"),
    ]
    if not dosed:
        return out
    for drug, mg in (("Dupixent 300 MG", 300), ("Dupixent 300 MG", 300), ("cemiplimab", 350)):
        out.append(
            kit.medication_administration(
                id=f"{pid}-dose-{len(out)}",
                patient=pid,
                medication=drug,
                effective="2025-03-10T09:00:00-04:00",
                dose=kit.quantity(mg, "mg"),
            )
        )
    out += nct.surgery(pid).values()
    if viable is not None:
        out += nct.viable_tumour(pid, viable).values()
    return out


STUDY = kit.research_study(id="nct", system=None)


@pytest.fixture
def api(server: LiveServer, fhir: httpx.Client) -> Iterator[httpx.Client]:
    """A client on /api/v1 over a store holding four enrolled subjects."""
    put_resources(
        fhir,
        STUDY,
        *_subject("a", dosed=True, viable=5, died=None),
        *_subject("b", dosed=True, viable=50, died="2025-09-01T10:00:00Z"),
        *_subject("c", dosed=True, viable=None, died=None),
        *_subject("d", dosed=False, viable=None, died=None),
    )
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=120) as client:
        yield client


def _exact(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return round(float(ci.low), 4), round(float(ci.high), 4)


def test_trial_cohort_outcomes_from_posted_fhir(api: httpx.Client) -> None:
    """4 enrolled, 3 dosed, 3 operated on Day 18; MPR 1/3; 1 death; figures from stored events."""
    body = fresh_outcomes(api, "NCT06088771")
    assert body["study"] == {"id": "NCT06088771", "version": "2.0.0", "kind": "interventional"}
    assert set(body["plots"]) == {"efs", "os", "swimmer"}
    assert body["plots"]["os"]["svg"] == "/api/v1/studies/NCT06088771/outcomes/plots/os.svg"
    out = body["outcomes"]
    counts = out["counts"]
    assert (counts["subjects"], counts["dosed"], counts["operated"]) == (4, 3, 3)
    assert counts["with_response_assessment"] == 2
    mpr = out["mpr"]
    assert (mpr["met"], mpr["not_met"], mpr["not_evaluable"]) == (1, 1, 1)
    assert (mpr["rate"]["successes"], mpr["rate"]["n"]) == (1, 3)
    assert (mpr["rate"]["ci_lower"], mpr["rate"]["ci_upper"]) == _exact(1, 3)
    assert (mpr["evaluable_rate"]["successes"], mpr["evaluable_rate"]["n"]) == (1, 2)
    assert out["feasibility"]["successes"] == 3
    assert out["time_to_surgery"]["median_days"] == 17
    assert (out["os"]["n"], out["os"]["events"], out["os"]["censored"]) == (3, 1, 2)
    # summaries only: the per-subject and swimmer rows are paged at their own endpoints
    assert not {"subjects", "swimmer"} & set(out)
    swimmer = api.get("/studies/NCT06088771/outcomes/swimmer").json()
    assert (swimmer["data_as_of"], swimmer["next_cursor"]) == (body["data_as_of"], None)
    rows = swimmer["swimmer"]
    assert len(rows) == 3  # the dosed subjects, in subject-id order
    assert [r["subject_id"] for r in rows] == sorted(r["subject_id"] for r in rows)
    assert [r["surgery_day"] for r in rows] == [17, 17, 17]  # Day 18, Day 1 being day 0
    assert sorted(r["mpr"] for r in rows) == ["met", "not_evaluable", "not_met"]
    assert sum(r["death_day"] is not None for r in rows) == 1
    listed = api.get("/studies/NCT06088771/outcomes/subjects").json()["subjects"]
    assert len(listed) == 4  # every subject, dosed or not
    assert {r["subject_id"] for r in rows} < {r["subject_id"] for r in listed}


def test_swimmer_rows_are_paged_and_a_cohort_study_has_none(api: httpx.Client) -> None:
    """Pages of one row follow each other by cursor to the same rows as one page; the cirAE
    cohort has no swimmer plot (404 not_applicable), NCT06088771 excludes no one that way."""
    fresh_outcomes(api, "NCT06088771")
    whole = api.get("/studies/NCT06088771/outcomes/swimmer").json()["swimmer"]
    paged, cursor = [], None
    for _ in range(len(whole) + 1):
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = api.get("/studies/NCT06088771/outcomes/swimmer", params=params).json()
        paged += page["swimmer"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert (len(whole), paged) == (3, whole)
    for study, listing in (("cirae-dupilumab", "swimmer"), ("NCT06088771", "excluded")):
        answer = api.get(f"/studies/{study}/outcomes/{listing}")
        assert (answer.status_code, answer.json()["error"]["code"]) == (404, "not_applicable")


def test_report_follows_new_data(api: httpx.Client, fhir: httpx.Client) -> None:
    """The snapshot is served as it is until a write changes the study's events."""
    first = fresh_outcomes(api, "NCT06088771")
    again = api.get("/studies/NCT06088771/outcomes").json()
    assert (again["computed_at"], again["data_as_of"]) == (
        first["computed_at"],
        first["data_as_of"],
    )
    put_resources(fhir, *_subject("e", dosed=True, viable=0, died=None))
    second = fresh_outcomes(api, "NCT06088771")["outcomes"]
    assert (second["counts"]["subjects"], second["counts"]["dosed"]) == (5, 4)
    assert second["mpr"]["rate"]["successes"] == 2


def test_report_follows_an_update_of_the_newest_resource(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Re-deriving the newest event rows (same count, same last id on SQLite) invalidates too."""
    resources = _subject("e", dosed=True, viable=0, died=None)
    viable = next(r for r in resources if r["id"] == "e-viable")
    put_resources(fhir, *[r for r in resources if r is not viable])
    put_resources(fhir, viable)  # its event is now the newest row
    before = fresh_outcomes(api, "NCT06088771")["outcomes"]
    assert before["mpr"]["rate"]["successes"] == 2
    changed = {**viable, "valueQuantity": {**viable["valueQuantity"], "value": 60}}
    assert fhir.put("Observation/e-viable", json=changed).status_code == 200
    after = fresh_outcomes(api, "NCT06088771")["outcomes"]
    assert after["mpr"]["rate"]["successes"] == 1
    assert (after["mpr"]["met"], after["mpr"]["not_met"]) == (1, 2)


@pytest.mark.parametrize("name", ["efs", "os", "swimmer"])
def test_plots_render_as_png_and_svg(api: httpx.Client, name: str) -> None:
    """Each figure is a real PNG and a parseable SVG, with an ETag that answers 304 when unchanged."""
    fresh_outcomes(api, "NCT06088771")
    png = api.get(f"/studies/NCT06088771/outcomes/plots/{name}.png")
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png.content) > 10_000
    svg = api.get(f"/studies/NCT06088771/outcomes/plots/{name}.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(svg.content)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(root.findall(".//{http://www.w3.org/2000/svg}path")) > 10
    again = api.get(
        f"/studies/NCT06088771/outcomes/plots/{name}.svg",
        headers={"If-None-Match": svg.headers["etag"]},
    )
    assert (again.status_code, again.content) == (304, b"")


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/studies/NCT06088771/outcomes/plots/kaplan.png", "plot_not_found"),
        ("/studies/NCT06088771/outcomes/plots/os.gif", "plot_not_found"),
        ("/studies/NCT06088771/outcomes/plots/os", "plot_not_found"),
        ("/studies/cirae-dupilumab/outcomes/plots/swimmer.png", "plot_not_found"),
        ("/studies/NCT0000/outcomes", "study_not_found"),
        ("/studies/NCT0000/outcomes/plots/os.png", "study_not_found"),
    ],
)
def test_unknown_plots_and_studies_are_404(api: httpx.Client, path: str, code: str) -> None:
    """Unknown figures, formats and studies answer the documented error body."""
    fresh_outcomes(api, "NCT06088771")
    fresh_outcomes(api, "cirae-dupilumab")
    response = api.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == code
