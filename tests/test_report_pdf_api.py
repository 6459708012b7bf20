"""GET …/outcomes/report.pdf for both studies: the report.html document as a PDF to download.

Read back with pypdf: the text says what the HTML report says for the same snapshot (protocol
version, cut-off, flow counts, Table 1 labels and header), the KM figures are embedded as images,
and no identifier of the patients appears. Served from the same snapshot as report.html: the same
ETag, a 304 for it, and the attachment is named by study and data cut-off.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import httpx
import pytest
from pypdf import PdfReader

from tests.conftest import LiveServer
from tests.kit import fhir as kit
from tests.kit import nct
from tests.kit.client import put_resources
from tests.kit.cohort import fresh_get, fresh_outcomes
from tests.synthetic_cirae import generate

CIRAE = "cirae-dupilumab"
TRIAL = "NCT06088771"
SUBJECT_ID = re.compile(r"S-[A-Z2-7]{16}")
INTERNAL = ("control_1", "control_2", "km_groups", "dupilumab_vs", "2106-3", "2054-5")


def _pdf(api: httpx.Client, study: str, data_as_of: int) -> tuple[str, int, httpx.Response]:
    """The report.pdf of a fresh snapshot: its text (whitespace collapsed) and image count."""
    response = fresh_get(api, study, "report.pdf")
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="{study}-data-as-of-{data_as_of}.pdf"'
    )
    assert response.content.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(response.content))
    text = " ".join(" ".join(page.extract_text() or "" for page in reader.pages).split())
    images = sum(len(page.images) for page in reader.pages)
    return text, images, response


def _no_codes_or_ids(text: str, *ids: str) -> None:
    for code in INTERNAL:
        assert code not in text, code
    assert not SUBJECT_ID.search(text)
    for identifier in ids:
        assert identifier not in text, identifier


def test_trial_pdf_says_what_the_html_report_says(server: LiveServer, fhir: httpx.Client) -> None:
    """The eleven-patient flow of tests/test_trial_flow_api.py, the response table, EFS and OS."""
    put_resources(fhir, *nct.flow_cohort())
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=120) as api:
        body = fresh_outcomes(api, TRIAL)
        text, images, response = _pdf(api, TRIAL, body["data_as_of"])
        html = fresh_get(api, TRIAL, "report.html")
        subjects = api.get(f"/studies/{TRIAL}/subjects").json()["subjects"]
        again = api.get(
            f"/studies/{TRIAL}/outcomes/report.pdf",
            headers={"If-None-Match": response.headers["etag"]},
        )
    assert response.headers["etag"] == html.headers["etag"]  # one snapshot, one validator
    assert (again.status_code, again.content) == (304, b"")
    assert "Protocol version 2.0.0" in text
    assert f"Data cut-off {body['computed_at']}" in text
    assert f"every change up to number {body['data_as_of']})" in text
    for label, n in nct.FLOW_COUNTS:
        assert f"{label} n = {n}" in text, label
        assert f"{label} n = {n}" in " ".join(re.sub(r"<[^>]+>", " ", html.text).split())
    assert "not eligible: exclusion 5 met (Autoimmune condition, active or history): 2" in text
    assert "Responses (95% exact Clopper–Pearson CI)" in text
    assert "Major pathological response 2 0 3 2/5, 40.0 (" in text
    assert images == 2  # EFS and OS; the swimmer plot names subjects and stays out
    _no_codes_or_ids(text, *(s["subject_id"] for s in subjects), "e1-", "x1-")


@pytest.fixture
def cirae_api(server: LiveServer, fhir: httpx.Client) -> Iterator[httpx.Client]:
    """A synthetic cohort of 60 and one patient whose cirAE term carries markup."""
    for body in generate(60, seed=11).bundles(30):
        assert fhir.post("", content=json.dumps(body)).status_code == 200
    put_resources(
        fhir,
        kit.patient(id="tricky", gender="female", birth_date="1957-02-02"),
        kit.medication_administration(
            id="tricky-icb", patient="tricky", medication="nivolumab 240 MG", effective="2020-02-03"
        ),
        kit.condition(
            id="tricky-rash", patient="tricky", code="Rash <b>& itch", onset="2020-03-01"
        ),
        kit.encounter(id="tricky-last", patient="tricky", start="2021-02-03", end="2021-02-03"),
    )
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=300) as client:
        yield client


def test_cirae_pdf_has_the_flow_table1_and_figures(cirae_api: httpx.Client) -> None:
    """Flow counts, Table 1's header and every row label as the JSON has them; three KM figures."""
    body = fresh_outcomes(cirae_api, CIRAE)
    out = body["outcomes"]
    text, images, _ = _pdf(cirae_api, CIRAE, body["data_as_of"])
    assert "Protocol version 2.0.0" in text
    assert f"every change up to number {body['data_as_of']})" in text
    for stage in out["flow"]["stages"]:
        for box in stage["boxes"]:
            assert f"{box['label']} n = {box['n']}" in text, box["label"]
    assert "ICB recipients n = 61" in text
    assert "Before matching: all analysed subjects" in text
    sizes = {g["key"]: g["n"] for g in out["table1"]["panels"][0]["groups"]}
    for header in (
        f"Dupilumab (n = {sizes['dupilumab']})",
        f"cirAE, no dupilumab (n = {sizes['control_1']})",
        f"No cirAE (n = {sizes['control_2']})",
    ):
        assert header in text, header
    for variable in out["table1"]["panels"][0]["rows"]:
        assert variable["label"] in text, variable["name"]
    assert "Age at ICB initiation, years" in text
    assert "Rash <b>& itch" in text
    assert images == 3
    _no_codes_or_ids(text, "syn-cirae", "tricky")


def test_report_pdf_of_an_unknown_study_is_404(server: LiveServer) -> None:
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as api:
        response = api.get("/studies/NCT0000/outcomes/report.pdf")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "study_not_found"
