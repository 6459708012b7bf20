"""GET …/outcomes/report.html for both studies: a self-contained page a statistician can attach.

Parsed with the standard library's html.parser: the tables, the flow and the figures it shows must
say what the JSON outcomes say; the page has no script and no external asset, escapes what the
data says, and shows no internal code (control_1, OMB race codes …) and no identifier (subject
ids, patient ids), in its text or in its figures.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.kit import fhir as kit
from tests.kit import nct
from tests.kit.client import put_resources
from tests.kit.cohort import fresh_outcomes, fresh_report
from tests.synthetic_cirae import generate

CIRAE = "/studies/cirae-dupilumab"
TRIAL = "/studies/NCT06088771"
SYNTHETIC = generate(150, seed=11)
POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
TRICKY = "Rash <script>alert(1)</script> & itch"
SUBJECT_ID = re.compile(r"S-[A-Z2-7]{16}")
INTERNAL = (
    "control_1",
    "control_2",
    "km_groups",
    "dupilumab_vs",
    "unadjusted_fixed_group",
    "2106-3",
    "2054-5",
    "icb_type",
    "cancer_type",
)


@dataclass
class Table:
    caption: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


class Page(HTMLParser):
    """What a reader sees: text, tables (caption, header, rows), images and every tag opened."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.tables: list[Table] = []
        self.images: list[dict[str, str | None]] = []
        self._in: list[str] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += attrs
        if tag not in ("img", "meta"):
            self._in.append(tag)
        if tag == "table":
            self.tables.append(Table())
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            self._in.pop()
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self.tables:
            table = self.tables[-1]
            if "thead" in self._in:
                table.header = self._row
            elif "tfoot" not in self._in:
                table.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if "style" in self._in:
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if "caption" in self._in and self.tables:
            self.tables[-1].caption += data

    def table(self, caption: str) -> Table:
        found = [t for t in self.tables if t.caption.strip() == caption]
        assert len(found) == 1, [t.caption for t in self.tables]
        return found[0]

    def svgs(self) -> list[str]:
        out = []
        for image in self.images:
            src = str(image["src"])
            assert src.startswith("data:image/svg+xml;base64,"), src[:60]
            out.append(base64.b64decode(src.split(",", 1)[1]).decode())
        return out


def _page(api: httpx.Client, study: str) -> tuple[Page, str, httpx.Response]:
    response = fresh_report(api, study.removeprefix("/studies/"))
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == POLICY
    assert response.headers["cache-control"] == "no-cache"
    assert response.text.startswith("<!DOCTYPE html>")
    page = Page()
    page.feed(response.text)
    page.close()
    return page, " ".join(" ".join(page.text).split()), response


def _self_contained(page: Page, html: str) -> None:
    """No script, no external asset: nothing the page fetches, nothing it runs."""
    assert not {"script", "link", "iframe", "object", "embed", "base"} & set(page.tags)
    assert not any(k.startswith("on") for k, _ in page.attributes)
    assert all(k != "href" for k, _ in page.attributes)
    outside_images = re.sub(r'src="data:image/svg\+xml;base64,[^"]*"', "", html)
    assert "http:" not in outside_images
    assert "https:" not in outside_images
    assert "url(" not in outside_images


def _no_codes_or_ids(text: str, svgs: list[str], *ids: str) -> None:
    figure_text = " ".join(" ".join(re.findall(r"<!-- (.*?) -->", s)) for s in svgs)
    for where in (text, figure_text):
        for code in INTERNAL:
            assert code not in where, code
        assert not SUBJECT_ID.search(where)
        for identifier in ids:
            assert identifier not in where


@pytest.fixture
def cirae_api(server: LiveServer, fhir: httpx.Client) -> Iterator[httpx.Client]:
    """The synthetic cohort and one cirAE whose term carries markup."""
    for body in SYNTHETIC.bundles(50):
        assert fhir.post("", content=json.dumps(body)).status_code == 200
    put_resources(
        fhir,
        kit.patient(id="tricky", gender="female", birth_date="1957-02-02"),
        kit.medication_administration(
            id="tricky-icb", patient="tricky", medication="nivolumab 240 MG", effective="2020-02-03"
        ),
        kit.condition(id="tricky-rash", patient="tricky", code=TRICKY, onset="2020-03-01"),
        kit.encounter(id="tricky-last", patient="tricky", start="2021-02-03", end="2021-02-03"),
    )
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=300) as client:
        yield client


def _smd_cell(smd: dict[str, Any]) -> str:
    return f"{smd['value']:.3f}" + ("" if smd["balanced"] else " *")


def test_cirae_report_says_what_the_outcomes_say(cirae_api: httpx.Client) -> None:
    """Flow, Table 1, hazard ratios and figures as in the JSON; words, not codes; no identifiers."""
    body = fresh_outcomes(cirae_api, CIRAE.removeprefix("/studies/"))
    out = body["outcomes"]
    page, text, response = _page(cirae_api, CIRAE)
    _self_contained(page, response.text)
    assert "Protocol version 2.0.0" in text  # CLINICAL.md revision 2
    assert f"Data cut-off {body['computed_at']}" in text
    assert f"every change up to number {body['data_as_of']})" in text
    # the flow: every box's label and count
    for stage in out["flow"]["stages"]:
        for box in stage["boxes"]:
            assert f"{box['label']} n = {box['n']}" in text, box["label"]
    assert "ICB recipients n = 151" in text
    # Table 1: group sizes in the header, each variable's SMDs, as the JSON has them
    before = page.table("Before matching: all analysed subjects")
    sizes = {g["key"]: g["n"] for g in out["table1"]["panels"][0]["groups"]}
    assert before.header == [
        "Characteristic",
        f"Dupilumab (n = {sizes['dupilumab']})",
        f"cirAE, no dupilumab (n = {sizes['control_1']})",
        f"No cirAE (n = {sizes['control_2']})",
        "SMD, Dupilumab vs cirAE, no dupilumab",
        "SMD, Dupilumab vs No cirAE",
    ]
    rows = {r[0]: r for r in before.rows}
    for variable in out["table1"]["panels"][0]["rows"]:
        smd = variable["smd"]
        assert rows[variable["label"]][4:] == [
            _smd_cell(smd["dupilumab_vs_control_1"]),
            _smd_cell(smd["dupilumab_vs_control_2"]),
        ], variable["name"]
    assert "White" in rows
    assert "Black or African American" in rows
    for control, label in (("control_1", "cirAE, no dupilumab"), ("control_2", "No cirAE")):
        matched = page.table(f"After matching: Dupilumab vs {label}")
        age = next(r for r in matched.rows if r[0] == "Age at ICB initiation, years")
        panel = next(p for p in out["table1"]["panels"] if p["key"] == f"matched_{control}")
        age_smd = next(r for r in panel["rows"] if r["name"] == "age")["smd"]
        assert age[-1] == _smd_cell(age_smd[f"dupilumab_vs_{control}"])
    # the hazard ratios of each matched comparison
    hazard_tables = [t for t in page.tables if t.caption == "Dupilumab hazard ratios for death"]
    assert len(hazard_tables) == 2
    for table, control in zip(hazard_tables, ("control_1", "control_2"), strict=True):
        fixed = out["comparisons"][control]["hazard_ratios"]["unadjusted_fixed_group"]
        row = next(r for r in table.rows if r[0] == "Unadjusted, group fixed at ICB initiation")
        assert row[1] == f"{fixed['hr']:.2f} ({fixed['ci_lower']:.2f}–{fixed['ci_upper']:.2f})"
    # the markup in a cirAE term is text, not markup
    assert TRICKY in text
    assert "<script" not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; itch" in response.text
    # figures: the three KM plots, with numbers at risk and groups in words
    svgs = page.svgs()
    assert len(svgs) == 3
    for svg in svgs:
        assert "Number at risk" in svg
        assert "Dupilumab" in svg
    assert "No cirAE" in svgs[1]
    assert "cirAE, no dupilumab" in svgs[0]
    _no_codes_or_ids(text, svgs, "syn-cirae", "tricky")


def test_trial_report_flow_tables_and_figures(server: LiveServer, fhir: httpx.Client) -> None:
    """The eleven-patient flow of tests/test_trial_flow_api.py in the page; EFS and OS figures."""
    put_resources(fhir, *nct.flow_cohort())
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=120) as api:
        body = fresh_outcomes(api, TRIAL.removeprefix("/studies/"))
        page, text, response = _page(api, TRIAL)
        subjects = api.get(f"{TRIAL}/subjects").json()["subjects"]
    _self_contained(page, response.text)
    assert "Protocol version 2.0.0" in text
    assert f"Data cut-off {body['computed_at']}" in text
    assert f"every change up to number {body['data_as_of']})" in text
    for label, n in nct.FLOW_COUNTS:
        assert f"{label} n = {n}" in text, label
    assert "not eligible: exclusion 5 met (Autoimmune condition, active or history): 2" in text
    responses = page.table("Responses (95% exact Clopper–Pearson CI)")
    mpr = next(r for r in responses.rows if r[0] == "Major pathological response")
    assert mpr[1:4] == ["2", "0", "3"]
    assert mpr[4].startswith("2/5, 40.0 (")
    svgs = page.svgs()
    assert len(svgs) == 2  # EFS and OS; the swimmer plot names subjects and stays out
    assert all("Number at risk" in s for s in svgs)
    _no_codes_or_ids(text, svgs, *(s["subject_id"] for s in subjects), "e1-", "x1-")


def test_report_of_an_unknown_study_is_404(server: LiveServer) -> None:
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as api:
        response = api.get("/studies/NCT0000/outcomes/report.html")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "study_not_found"


def test_a_cohort_without_dupilumab_reports_not_estimable_in_words(
    server: LiveServer, fhir: httpx.Client
) -> None:
    """Six patients, none given dupilumab: the page renders, says why, and names no code."""
    for body in generate(6, seed=7).bundles(6):
        assert fhir.post("", content=json.dumps(body)).status_code == 200
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=120) as api:
        out = fresh_outcomes(api, CIRAE.removeprefix("/studies/"))["outcomes"]
        page, text, response = _page(api, CIRAE)
    assert out["groups"] == {"dupilumab": 0, "control_1": 3, "control_2": 3}
    assert out["cox"]["control_1"]["primary"]["reason"] == "the dupilumab group is empty"
    _self_contained(page, response.text)
    assert "Dupilumab n = 0" in text
    assert "not estimable (the dupilumab group is empty)" in text
    assert len(page.svgs()) == 3  # the empty matched figures say "no data"
    _no_codes_or_ids(text, page.svgs(), "syn-cirae")
