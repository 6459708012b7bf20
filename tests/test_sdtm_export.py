"""The SDTM export of NCT06088771: hand-written rows, the official Dataset-JSON schema, XPT, checks.

The cohort is posted through the FHIR API. Every expected row below is written by hand from
SDTMIG 3.4 and CLINICAL.md (study day: date − Day 1 + 1 on or after Day 1, date − Day 1 before it,
no day 0; partial dates kept and given no study day). Its dates are site-local (New York offsets)
and no study drug precedes enrollment, so Day 1 is the same whether it is read as "first study
drug" or "first study drug on or after enrollment".
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pyreadstat
import pytest
from sqlalchemy import Engine

from fhir_mapping.partial_dates import parse_partial_date
from service.export.sdtm.conformance import check
from service.export.sdtm.dates import Epochs, is_iso8601, sdtm_study_day
from service.export.sdtm.export import SdtmExporter
from service.export.sdtm.metadata import metadata
from service.export.sdtm.model import Dataset, Package
from service.protocol.terminology import build_terminology
from service.studies.registry import load_protocols
from tests.conftest import LiveServer
from tests.kit import fhir as kit
from tests.kit.cli import run_trialbridge
from tests.kit.client import put_resources

NCT = "NCT06088771"
EXPORT = f"/studies/{NCT}/export/sdtm"
A, B, C = "pat-alpha-7731", "pat-bravo-5512", "pat-charlie-9043"
MRNS = ("MRN-ALPHA-7731", "MRN-BRAVO-5512", "MRN-CHARLIE-9043")
IV = kit.coded(kit.SNOMED, "47625008", "Intravenous route")
SEVERITY = f"{kit.HL7}/adverse-event-severity"
RESOLVE_DATE = f"{kit.AE_BACKPORT}/resolve-date"


def _omb(url: str, *codes: tuple[str, str]) -> dict[str, Any]:
    """A US Core race or ethnicity extension with these OMB categories."""
    parts: list[dict[str, Any]] = [
        {"url": "ombCategory", "valueCoding": {"system": kit.OMB, "code": c, "display": d}}
        for c, d in codes
    ]
    parts.append({"url": "text", "valueString": ", ".join(d for _, d in codes)})
    return {"url": url, "extension": parts}


def _meddra(code: str, display: str, text: str | None = None) -> dict[str, Any]:
    return {
        "coding": [{"system": kit.MDR, "code": code, "display": display}],
        **({"text": text} if text else {}),
    }


def _given(pid: str, rid: str, drug: str, when: str, amount: Any, unit: str, **extra: Any) -> Any:
    return kit.medication_administration(
        id=rid,
        medication=drug,
        patient=pid,
        effective=when,
        dose=kit.quantity(amount, unit),
        **extra,
    )


COHORT = [
    kit.research_study(),
    # A: enrolled 2025-03-03, Day 1 2025-03-10, lobectomy on Day 18, 8 % viable tumour.
    kit.patient(
        id=A,
        mrn=MRNS[0],
        gender="female",
        birth_date="1960-05-20",
        extension=[
            _omb(kit.US_CORE_RACE, ("2106-3", "White")),
            _omb(kit.US_CORE_ETHNICITY, ("2186-5", "Not Hispanic or Latino")),
        ],
    ),
    kit.research_subject(id="rs-alpha", patient=A, number="101-001", start="2025-03-03"),
    kit.condition(id="a-htn", code=kit.HYPERTENSION, patient=A, onset="2014-05"),
    kit.condition(id="a-nsclc", code=kit.NSCLC, patient=A, onset="2025-01-21"),
    kit.procedure(
        id="a-cnb", code=kit.LUNG_BIOPSY, patient=A, performed="2025-02-19T10:12:00-05:00"
    ),
    _given(
        A,
        "a-ondan",
        "ondansetron 8 MG Oral Tablet",
        "2025-03-10T08:30:00-04:00",
        8,
        "mg",
        route=kit.ORAL,
    ),
    _given(
        A,
        "a-dupi-1",
        "Dupixent 300 MG",
        "2025-03-10T09:00:00-04:00",
        300,
        "mg",
        route=kit.SUBCUTANEOUS,
    ),
    _given(A, "a-dupi-2", "Dupixent 300 MG", "2025-03-10T09:05:00-04:00", 300, "mg"),
    kit.medication_administration(
        id="a-cemi",
        medication="cemiplimab 350 MG/7ML",
        patient=A,
        effectivePeriod={"start": "2025-03-10T10:00:00-04:00", "end": "2025-03-10T10:30:00-04:00"},
        dose=kit.quantity(350, "mg"),
        route=IV,
    ),
    kit.medication_statement(
        id="a-metformin",
        medication="metformin 500 MG Oral Tablet",
        patient=A,
        effectivePeriod={"start": "2019-06"},
    ),
    kit.adverse_event(
        id="a-rash",
        event=_meddra("10037868", "Rash maculo-papular", "Maculopapular rash"),
        patient=A,
        date="2025-03-14",
        outcome="resolved",
        severity={"coding": [{"system": SEVERITY, "code": "moderate"}]},
        seriousness={"coding": [{"system": kit.AE_SERIOUSNESS, "code": "non-serious"}]},
        extension=[
            {"url": kit.AE_GRADE, "valueCodeableConcept": {"coding": [{"code": "2"}]}},
            {"url": RESOLVE_DATE, "valueDateTime": "2025-03-28"},
        ],
    ),
    kit.adverse_event(
        id="a-fatigue", event=_meddra("10016256", "Fatigue"), patient=A, date="2025-04", grade="1"
    ),
    kit.procedure(id="a-lob", code=kit.LOBECTOMY, patient=A, performed="2025-03-27T08:30:00-04:00"),
    kit.observation(
        id="a-vt-primary",
        code="Percent viable tumor, primary",
        patient=A,
        effective="2025-04-02",
        valueQuantity=kit.quantity(8, "%"),
    ),
    kit.observation(
        id="a-vt-nodes",
        code="Percent viable tumor in lymph nodes",
        patient=A,
        effective="2025-04-02",
        valueQuantity=kit.quantity(0, "%"),
    ),
    # B: two races, born in 1955, enrolled 2025-03-31, Day 1 2025-04-07, graded pneumonitis
    # recorded as a Condition, died in September 2025 (month only).
    kit.patient(
        id=B,
        mrn=MRNS[1],
        gender="male",
        birth_date="1955",
        deceasedDateTime="2025-09",
        extension=[
            _omb(kit.US_CORE_RACE, ("2028-9", "Asian"), ("2054-5", "Black or African American"))
        ],
    ),
    kit.research_subject(id="rs-bravo", patient=B, number="101-002", start="2025-03-31"),
    kit.condition(id="b-nsclc", code=kit.NSCLC, patient=B, onset="2025-02"),
    _given(B, "b-cemi", "Libtayo", "2025-04-07T09:00:00-04:00", 0.35, "g", route=IV),
    _given(
        B,
        "b-dupi",
        "dupilumab 300 MG in 2 ML Prefilled Syringe",
        "2025-04-07T09:30:00-04:00",
        600,
        "mg",
        route=kit.SUBCUTANEOUS,
    ),
    kit.condition(
        id="b-pneumonitis",
        code=_meddra("10035742", "Pneumonitis", "Immune-related pneumonitis"),
        patient=B,
        onset="2025-05-01",
        extension=[{"url": kit.LEGACY_CTCAE_GRADE, "valueInteger": 3}],
    ),
    # C: a screen failure (ineligible), never dosed.
    kit.patient(
        id=C,
        mrn=MRNS[2],
        gender="other",
        extension=[_omb(kit.US_CORE_ETHNICITY, ("2135-2", "Hispanic or Latino"))],
    ),
    kit.research_subject(
        id="rs-charlie",
        patient=C,
        number="101-003",
        status="ineligible",
        start="2025-04-14",
        end="2025-04-20",
    ),
]


@pytest.fixture
def api(server: LiveServer, fhir: httpx.Client) -> Iterator[httpx.Client]:
    """The cohort posted through /fhir; a client on /api/v1."""
    put_resources(fhir, *COHORT)
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=60) as client:
        yield client


def _ids(api: httpx.Client) -> dict[str, str]:
    """Each subject number's pseudonymous subject id (the USUBJID)."""
    body = api.get(f"/studies/{NCT}/subjects").json()
    return {s["subject_number"]: s["subject_id"] for s in body["subjects"]}


def _json(api: httpx.Client, name: str) -> dict[str, Any]:
    response = api.get(f"{EXPORT}/{name}.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return dict(response.json())


def _records(document: dict[str, Any]) -> list[dict[str, Any]]:
    names = [c["name"] for c in document["columns"]]
    return [dict(zip(names, row, strict=True)) for row in document["rows"]]


def _of(rows: list[dict[str, Any]], usubjid: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["USUBJID"] == usubjid]


def _head(domain: str, usubjid: str) -> dict[str, Any]:
    return {"STUDYID": NCT, "DOMAIN": domain, "USUBJID": usubjid}


def test_hand_written_rows(api: httpx.Client) -> None:
    """DM, EX, PR, AE and DS of three subjects, value for value, in SDTMIG order."""
    ids = _ids(api)
    a, b, c = ids["101-001"], ids["101-002"], ids["101-003"]
    assert all(s.startswith("S-") and len(s) == 18 for s in (a, b, c))

    dm = _json(api, "dm")
    assert [col["name"] for col in dm["columns"]] == [
        "STUDYID", "DOMAIN", "USUBJID", "SUBJID", "RFSTDTC", "RFENDTC", "RFXSTDTC", "RFXENDTC",
        "RFICDTC", "RFPENDTC", "DTHDTC", "DTHFL", "SITEID", "AGE", "AGEU", "SEX", "RACE",
        "ETHNIC", "ARMCD", "ARM", "ACTARMCD", "ACTARM", "ARMNRS", "ACTARMUD", "COUNTRY",
    ]  # fmt: skip
    arm = {"ARMCD": "DUPCEM", "ARM": "Dupilumab + Cemiplimab"}
    treated = {**arm, "ACTARMCD": "DUPCEM", "ACTARM": "Dupilumab + Cemiplimab", "ARMNRS": None}
    expected_dm = {
        a: {
            **_head("DM", a), "SUBJID": "101-001", "RFSTDTC": "2025-03-10",
            "RFENDTC": "2025-03-10T10:30:00-04:00", "RFXSTDTC": "2025-03-10T09:00:00-04:00",
            "RFXENDTC": "2025-03-10T10:30:00-04:00", "RFICDTC": None, "RFPENDTC": None,
            "DTHDTC": None, "DTHFL": None, "SITEID": "01", "AGE": 64, "AGEU": "YEARS",
            "SEX": "F", "RACE": "WHITE", "ETHNIC": "NOT HISPANIC OR LATINO", **treated,
            "ACTARMUD": None, "COUNTRY": "USA",
        },
        b: {
            **_head("DM", b), "SUBJID": "101-002", "RFSTDTC": "2025-04-07",
            "RFENDTC": "2025-04-07T09:30:00-04:00", "RFXSTDTC": "2025-04-07T09:00:00-04:00",
            "RFXENDTC": "2025-04-07T09:30:00-04:00", "RFICDTC": None, "RFPENDTC": "2025-09",
            "DTHDTC": "2025-09", "DTHFL": "Y", "SITEID": "01", "AGE": 69, "AGEU": "YEARS",
            "SEX": "M", "RACE": "MULTIPLE", "ETHNIC": None, **treated, "ACTARMUD": None,
            "COUNTRY": "USA",
        },
        c: {
            **_head("DM", c), "SUBJID": "101-003", "RFSTDTC": None, "RFENDTC": None,
            "RFXSTDTC": None, "RFXENDTC": None, "RFICDTC": None, "RFPENDTC": "2025-04-20",
            "DTHDTC": None, "DTHFL": None, "SITEID": "01", "AGE": None, "AGEU": None,
            "SEX": "U", "RACE": None, "ETHNIC": "HISPANIC OR LATINO", "ARMCD": None,
            "ARM": None, "ACTARMCD": None, "ACTARM": None, "ARMNRS": "SCREEN FAILURE",
            "ACTARMUD": None, "COUNTRY": "USA",
        },
    }  # fmt: skip
    assert _records(dm) == [expected_dm[s] for s in sorted(expected_dm)]

    ex = _json(api, "ex")
    assert [col["name"] for col in ex["columns"]] == [
        "STUDYID", "DOMAIN", "USUBJID", "EXSEQ", "EXTRT", "EXDOSE", "EXDOSU", "EXDOSFRM",
        "EXROUTE", "EPOCH", "EXSTDTC", "EXENDTC", "EXSTDY", "EXENDY",
    ]  # fmt: skip

    def dose(s: str, seq: int, drug: str, mg: float, route: str, start: str, end: str) -> Any:
        return {
            **_head("EX", s), "EXSEQ": seq, "EXTRT": drug, "EXDOSE": mg, "EXDOSU": "mg",
            "EXDOSFRM": "INJECTION", "EXROUTE": route, "EPOCH": "TREATMENT", "EXSTDTC": start,
            "EXENDTC": end, "EXSTDY": 1, "EXENDY": 1,
        }  # fmt: skip

    a1, a2, a3 = (f"2025-03-10T{t}:00-04:00" for t in ("09:00", "09:05", "10:00"))
    b1, b2 = "2025-04-07T09:00:00-04:00", "2025-04-07T09:30:00-04:00"
    ex_rows = _records(ex)
    assert _of(ex_rows, a) == [
        dose(a, 1, "DUPILUMAB", 300, "SUBCUTANEOUS", a1, a1),
        dose(a, 2, "DUPILUMAB", 300, "SUBCUTANEOUS", a2, a2),  # no route recorded: the protocol's
        dose(a, 3, "CEMIPLIMAB", 350, "INTRAVENOUS", a3, "2025-03-10T10:30:00-04:00"),
    ]
    assert _of(ex_rows, b) == [
        dose(b, 1, "CEMIPLIMAB", 350, "INTRAVENOUS", b1, b1),  # 0.35 g
        dose(b, 2, "DUPILUMAB", 600, "SUBCUTANEOUS", b2, b2),
    ]
    assert len(ex_rows) == 5

    pr_rows = _records(_json(api, "pr"))
    assert pr_rows == [
        {
            **_head("PR", a), "PRSEQ": 1, "PRTRT": "Biopsy of lung", "PRDECOD": "Biopsy of lung",
            "PRCAT": "BIOPSY", "EPOCH": "SCREENING", "PRSTDTC": "2025-02-19T10:12:00-05:00",
            "PRENDTC": None, "PRSTDY": -19, "PRENDY": None,
        },
        {
            **_head("PR", a), "PRSEQ": 2, "PRTRT": "Lobectomy of lung",
            "PRDECOD": "Lobectomy of lung", "PRCAT": "LUNG RESECTION", "EPOCH": "TREATMENT",
            "PRSTDTC": "2025-03-27T08:30:00-04:00", "PRENDTC": None, "PRSTDY": 18, "PRENDY": None,
        },
    ]  # fmt: skip

    meddra_blank = {
        "AELLT": None, "AELLTCD": None, "AEHLT": None, "AEHLTCD": None, "AEHLGT": None,
        "AEHLGTCD": None, "AEBODSYS": None, "AEBDSYCD": None, "AESOC": None, "AESOCCD": None,
        "AEACN": None, "AEREL": None,
    }  # fmt: skip
    ae_rows = _records(_json(api, "ae"))
    expected_ae = [
        {
            **_head("AE", a), "AESEQ": 1, "AETERM": "Maculopapular rash",
            "AEDECOD": "Rash maculo-papular", "AEPTCD": 10037868, "AESEV": "MODERATE",
            "AESER": "N", "AEOUT": "RECOVERED/RESOLVED", "AETOXGR": "2", "EPOCH": "TREATMENT",
            "AESTDTC": "2025-03-14", "AEENDTC": "2025-03-28", "AESTDY": 5, "AEENDY": 19,
        },
        {  # a month-precision date: kept, no study day; all of April is after surgery
            **_head("AE", a), "AESEQ": 2, "AETERM": "Fatigue", "AEDECOD": "Fatigue",
            "AEPTCD": 10016256, "AESEV": None, "AESER": None, "AEOUT": None, "AETOXGR": "1",
            "EPOCH": "FOLLOW-UP", "AESTDTC": "2025-04", "AEENDTC": None, "AESTDY": None,
            "AEENDY": None,
        },
        {  # a Condition graded as an AE (legacy ctcae-grade extension)
            **_head("AE", b), "AESEQ": 1, "AETERM": "Immune-related pneumonitis",
            "AEDECOD": "Pneumonitis", "AEPTCD": 10035742, "AESEV": None, "AESER": None,
            "AEOUT": None, "AETOXGR": "3", "EPOCH": "TREATMENT", "AESTDTC": "2025-05-01",
            "AEENDTC": None, "AESTDY": 25, "AEENDY": None,
        },
    ]  # fmt: skip
    assert sorted(ae_rows, key=lambda r: (r["USUBJID"] != a, r["AESEQ"])) == [
        {**meddra_blank, **r} for r in expected_ae
    ]
    order = [c["name"] for c in _json(api, "ae")["columns"]]
    assert order.index("AETERM") < order.index("AEDECOD") < order.index("AESEV")
    assert order[-4:] == ["AESTDTC", "AEENDTC", "AESTDY", "AEENDY"]

    def ds(s: str, seq: int, term: str, decod: str, when: str, epoch: str, day: Any) -> Any:
        milestone = decod == "ENROLLED"
        return {
            **_head("DS", s), "DSSEQ": seq, "DSTERM": term, "DSDECOD": decod,
            "DSCAT": "PROTOCOL MILESTONE" if milestone else "DISPOSITION EVENT",
            "DSSCAT": None if milestone else "STUDY PARTICIPATION", "EPOCH": epoch,
            "DSSTDTC": when, "DSSTDY": day,
        }  # fmt: skip

    ds_rows = _records(_json(api, "ds"))
    assert _of(ds_rows, a) == [ds(a, 1, "ENROLLED", "ENROLLED", "2025-03-03", "SCREENING", -7)]
    assert _of(ds_rows, b) == [
        ds(b, 1, "ENROLLED", "ENROLLED", "2025-03-31", "SCREENING", -7),
        ds(b, 2, "DEATH", "DEATH", "2025-09", "TREATMENT", None),  # no surgery: still treatment
    ]
    assert _of(ds_rows, c) == [
        ds(c, 1, "ENROLLED", "ENROLLED", "2025-04-14", "SCREENING", None),  # no RFSTDTC
        ds(c, 2, "INELIGIBLE", "SCREEN FAILURE", "2025-04-20", "SCREENING", None),
    ]

    supp_ae = _records(_json(api, "suppae"))
    assert sorted(supp_ae, key=lambda r: (r["USUBJID"] != a, r["IDVARVAL"])) == [
        {"STUDYID": NCT, "RDOMAIN": "AE", "USUBJID": s, "IDVAR": "AESEQ", "IDVARVAL": seq,
         "QNAM": "AETOXSRC", "QLABEL": "Source of Toxicity Grade", "QVAL": url,
         "QORIG": "Collected", "QEVAL": None}
        for s, seq, url in ((a, "1", kit.AE_GRADE), (a, "2", kit.AE_GRADE),
                            (b, "1", kit.LEGACY_CTCAE_GRADE))
    ]  # fmt: skip
    assert _records(_json(api, "suppdm")) == [
        {"STUDYID": NCT, "RDOMAIN": "DM", "USUBJID": b, "IDVAR": None, "IDVARVAL": None,
         "QNAM": f"RACE{i}", "QLABEL": f"Race {i}", "QVAL": race, "QORIG": "Collected",
         "QEVAL": None}
        for i, race in ((1, "ASIAN"), (2, "BLACK OR AFRICAN AMERICAN"))
    ]  # fmt: skip


def test_medications_history_and_tumour_results(api: httpx.Client) -> None:
    """CM keeps a prior medication's partial date; MH holds pre-treatment conditions; TU/TR the
    percent viable tumour behind MPR and pCR."""
    a = _ids(api)["101-001"]
    cm = _of(_records(_json(api, "cm")), a)
    assert [(r["CMSEQ"], r["CMTRT"], r["CMDOSE"], r["CMROUTE"], r["EPOCH"], r["CMSTDTC"],
             r["CMSTDY"]) for r in cm] == [
        (1, "metformin 500 MG Oral Tablet", None, None, None, "2019-06", None),
        (2, "ondansetron 8 MG Oral Tablet", 8, "ORAL", "TREATMENT", "2025-03-10T08:30:00-04:00", 1),
    ]  # fmt: skip
    mh = _of(_records(_json(api, "mh")), a)
    assert [(r["MHSEQ"], r["MHTERM"], r["MHSTDTC"]) for r in mh] == [
        (1, "Essential (primary) hypertension", "2014-05"),
        (2, "Non-small cell lung cancer", "2025-01-21"),
    ]
    tu = _records(_json(api, "tu"))
    assert [(r["USUBJID"], r["TUSEQ"], r["TULNKID"], r["TULOC"], r["TUDTC"], r["TUDY"],
             r["EPOCH"]) for r in tu] == [
        (a, 1, "N01", "LYMPH NODE", "2025-04-02", 24, "FOLLOW-UP"),
        (a, 2, "P01", "LUNG", "2025-04-02", 24, "FOLLOW-UP"),
    ]  # fmt: skip
    tr = _records(_json(api, "tr"))
    assert [(r["TRSEQ"], r["TRLNKID"], r["TRTESTCD"], r["TRORRES"], r["TRSTRESN"],
             r["TRSTRESU"], r["TRDY"]) for r in tr] == [
        (1, "N01", "PCTVIAB", "0", 0, "%", 24),
        (2, "P01", "PCTVIAB", "8", 8, "%", 24),
    ]  # fmt: skip


def _schema() -> dict[str, Any]:
    text = resources.files("service.export.sdtm.schemas").joinpath("dataset.schema.json")
    return dict(json.loads(text.read_text()))


DATASETS = ("dm", "ex", "cm", "pr", "ae", "ds", "mh", "tu", "tr", "suppdm", "suppae")


def test_every_dataset_json_is_valid_against_the_official_schema(api: httpx.Client) -> None:
    """Each file validates against the vendored Dataset-JSON v1.1 schema (draft 2019-09)."""
    validator = jsonschema.Draft201909Validator(_schema())
    for name in DATASETS:
        document = _json(api, name)
        assert list(validator.iter_errors(document)) == [], name
        assert document["datasetJSONVersion"] == "1.1.0"
        assert document["records"] == len(document["rows"])
        assert document["name"] == name.upper()
    broken = {k: v for k, v in _json(api, "dm").items() if k != "columns"}
    assert [e.validator for e in validator.iter_errors(broken)] == ["required"]  # it can fail


def _xpt_rows(content: bytes, tmp: Path, name: str) -> tuple[list[dict[str, Any]], Any]:
    path = tmp / f"{name}.xpt"
    path.write_bytes(content)
    frame, meta = pyreadstat.read_xport(str(path))
    return frame.to_dict(orient="records"), meta


def _same(value: Any) -> Any:
    """XPT has no null: '' for text, NaN for numbers; JSON has null."""
    if value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def test_xpt_read_back_equals_the_json(api: httpx.Client, tmp_path: Path) -> None:
    """Every dataset's XPT (version 5) holds the same names, labels and values as its JSON."""
    for name in DATASETS:
        document = _json(api, name)
        response = api.get(f"{EXPORT}/{name}.xpt")
        assert response.status_code == 200
        assert response.headers["content-disposition"] == f'attachment; filename="{name}.xpt"'
        rows, meta = _xpt_rows(response.content, tmp_path, name)
        assert meta.table_name == name.upper()
        assert meta.column_names == [c["name"] for c in document["columns"]]
        assert meta.column_labels == [c["label"] for c in document["columns"]]
        assert [{k: _same(v) for k, v in r.items()} for r in rows] == _records(document), name


def _csv_field(value: Any) -> str:
    """How CSV writes a JSON value: null empty, a whole number without a decimal point."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_csv_equals_the_json(api: httpx.Client) -> None:
    """The CSV of a dataset: a header of names, then the JSON's values (null as empty)."""
    document = _json(api, "ex")
    response = api.get(f"{EXPORT}/ex.csv")
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    lines = list(csv.reader(io.StringIO(response.text)))
    assert lines[0] == [c["name"] for c in document["columns"]]
    assert lines[1:] == [[_csv_field(v) for v in row] for row in document["rows"]]


def test_define_xml_describes_every_dataset(api: httpx.Client) -> None:
    """define.xml: one ItemGroupDef per dataset, an ItemDef per column (same OIDs as the JSON),
    every codelist reference resolved, the study-day method."""
    response = api.get(f"{EXPORT}/define.xml")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/xml"
    ns = {"odm": "http://www.cdisc.org/ns/odm/v1.3", "def": "http://www.cdisc.org/ns/def/v2.1"}
    root = ET.fromstring(response.content)
    mdv = root.find("odm:Study/odm:MetaDataVersion", ns)
    assert mdv is not None
    assert mdv.get("{http://www.cdisc.org/ns/def/v2.1}DefineVersion") == "2.1.0"
    groups = {str(g.get("Name")): g for g in mdv.findall("odm:ItemGroupDef", ns)}
    assert sorted(groups) == sorted(n.upper() for n in DATASETS)
    items = {i.get("OID"): i for i in mdv.findall("odm:ItemDef", ns)}
    codelists = {c.get("OID") for c in mdv.findall("odm:CodeList", ns)}
    methods = {m.get("OID") for m in mdv.findall("odm:MethodDef", ns)}
    for name in DATASETS:
        document = _json(api, name)
        refs = [r.get("ItemOID") for r in groups[name.upper()].findall("odm:ItemRef", ns)]
        assert refs == [c["itemOID"] for c in document["columns"]]
        assert document["metaDataVersionOID"] == mdv.get("OID")
    for item in items.values():
        for ref in item.findall("odm:CodeListRef", ns):
            assert ref.get("CodeListOID") in codelists
    ex_dy = groups["EX"].find("odm:ItemRef[@ItemOID='IT.EX.EXSTDY']", ns)
    assert ex_dy is not None
    assert ex_dy.get("MethodOID") in methods
    sex = mdv.find("odm:CodeList[@OID='CL.SEX']", ns)
    assert sex is not None
    assert [e.get("CodedValue") for e in sex.findall("odm:EnumeratedItem", ns)] == [
        "F", "M", "U", "UNDIFFERENTIATED",
    ]  # fmt: skip


def test_no_fhir_ids_or_mrns_in_any_file(api: httpx.Client) -> None:
    """The export names subjects by pseudonym only: no FHIR id, MRN or birth date anywhere."""
    bodies = [api.get(f"{EXPORT}/{n}.{f}").content for n in DATASETS for f in ("json", "csv")]
    bodies.append(api.get(f"{EXPORT}/define.xml").content)
    text = b"\n".join(bodies)
    for secret in (A, B, C, *MRNS, "1960-05-20", "rs-alpha"):
        assert secret.encode() not in text, secret


def test_bad_files_and_studies_without_a_tabulation(api: httpx.Client) -> None:
    """An unknown dataset or format is 404 dataset_not_found; the cirAE cohort has no SDTM."""
    for bad in ("xx.json", "dm.sas7bdat", "dm", "define.json"):
        response = api.get(f"{EXPORT}/{bad}")
        assert (response.status_code, response.json()["error"]["code"]) == (
            404,
            "dataset_not_found",
        ), bad
    response = api.get("/studies/cirae-dupilumab/export/sdtm/dm.json")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_applicable")
    response = api.get("/studies/NCT00000000/export/sdtm/dm.json")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "study_not_found")


# -- the conformance check ---------------------------------------------------------------------


@pytest.fixture
def package(api: httpx.Client, engine: Engine) -> Package:
    """The cohort's export, made by the use case on the test database."""
    return SdtmExporter(engine, load_protocols(build_terminology())).package(NCT)


def _planted(package: Package, name: str, edit: dict[tuple[str, Any], dict[str, Any]]) -> Any:
    """The package's datasets with some rows of one dataset edited ((USUBJID, --SEQ) → values)."""
    ds = package.datasets[name]
    seq = ds.spec.seq
    rows = []
    for row in ds.rows:
        key = (str(row["USUBJID"]), row[seq]) if seq else ("", 0)
        rows.append({**row, **edit.get(key, {})})
    return {**package.datasets, name: replace(ds, rows=rows)}


def _row(ds: Dataset, usubjid: str, seq: int) -> int:
    """The 1-based row of a subject's record in a dataset (SUPP--: by the parent's --SEQ)."""
    spec_seq = ds.spec.seq
    return 1 + next(
        i
        for i, r in enumerate(ds.rows)
        if r["USUBJID"] == usubjid
        and (r[spec_seq] == seq if spec_seq else r["IDVARVAL"] == str(seq))
    )


def _found(datasets: Any) -> set[tuple[str, str, str | None, int | None]]:
    return {(f.check, f.dataset, f.variable, f.row) for f in check(datasets, metadata())}


def test_conformance_check_finds_nothing_on_the_export(package: Package) -> None:
    """The export is conformant to every check, warnings included."""
    assert check(package.datasets, metadata()) == []


def test_conformance_check_finds_each_planted_error(api: httpx.Client, package: Package) -> None:
    """Blank USUBJID, duplicate --SEQ, a subject missing from DM, --DY 0, a non-ISO date."""
    ids = _ids(api)
    a, b = ids["101-001"], ids["101-002"]
    ae, ex, pr = (package.datasets[n] for n in ("AE", "EX", "PR"))

    blank = _planted(package, "AE", {(a, 1): {"USUBJID": ""}})
    assert _found(blank) == {
        ("required_value", "AE", "USUBJID", _row(ae, a, 1)),
        ("supp_parent", "SUPPAE", "IDVARVAL", _row(package.datasets["SUPPAE"], a, 1)),
    }

    twice = _planted(package, "EX", {(a, 2): {"EXSEQ": 1}})
    assert _found(twice) == {
        ("seq_unique", "EX", "EXSEQ", _row(ex, a, 1)),
        ("seq_unique", "EX", "EXSEQ", _row(ex, a, 2)),
    }

    stranger = "S-NOTINDM00000000"
    orphan = _planted(package, "PR", {(a, 1): {"USUBJID": stranger}})
    assert _found(orphan) == {("subject_in_dm", "PR", "USUBJID", _row(pr, a, 1))}

    zero = _planted(package, "EX", {(b, 2): {"EXSTDY": 0}})
    assert _found(zero) == {
        ("study_day_zero", "EX", "EXSTDY", _row(ex, b, 2)),
        ("study_day", "EX", "EXSTDY", _row(ex, b, 2)),  # Day 1, not 0
    }

    us_date = _planted(package, "AE", {(a, 1): {"AESTDTC": "03/14/2025"}})
    assert _found(us_date) == {
        ("iso8601", "AE", "AESTDTC", _row(ae, a, 1)),
        ("study_day", "AE", "AESTDY", _row(ae, a, 1)),  # 5 cannot come from that date
    }

    shifted = _planted(package, "AE", {(a, 1): {"AESTDY": 4}})
    assert _found(shifted) == {("study_day", "AE", "AESTDY", _row(ae, a, 1))}
    no_epoch = _planted(package, "AE", {(a, 1): {"EPOCH": None}})
    assert _found(no_epoch) == {("epoch_set", "AE", "EPOCH", _row(ae, a, 1))}


def test_cli_writes_every_file_and_checks_them(
    api: httpx.Client, database_url: str, tmp_path: Path
) -> None:
    """`trialbridge export sdtm --out DIR --check`: 33 dataset files and define.xml, no error."""
    out = tmp_path / "sdtm"
    result = run_trialbridge(database_url, "export", "sdtm", "--out", str(out), "--check")
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        [f"{n}.{f}" for n in DATASETS for f in ("json", "xpt", "csv")] + ["define.xml"]
    )
    assert result.stdout.splitlines()[-1] == "check: 0 error(s), 0 warning(s)"
    with (out / "ex.json").open() as fh:
        assert json.load(fh)["records"] == 5


def test_each_export_request_is_audited_as_a_study_read(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """One AuditEvent per file fetched: a read (R) of the study, naming the route template."""
    marks = {"sdtm-audit-ae": f"{EXPORT}/ae.xpt", "sdtm-audit-define": f"{EXPORT}/define.xml"}
    for mark, path in marks.items():
        assert api.get(path, headers={"X-Request-Id": mark}).status_code == 200
    found = fhir.get("/AuditEvent", params={"entity": f"urn:trialbridge:study|{NCT}"}).json()
    seen = {}
    for entry in found.get("entry", []):
        event = entry["resource"]
        ids = {
            e["what"]["identifier"]["value"]
            for e in event["entity"]
            if e.get("what", {}).get("identifier", {}).get("system") == "urn:trialbridge:request-id"
        }
        for mark in ids & set(marks):
            seen[mark] = (event["action"], event["subtype"][0]["code"])
    assert seen == {
        "sdtm-audit-ae": ("R", "GET /api/v1/studies/{study_id}/export/sdtm/{file}"),
        "sdtm-audit-define": ("R", "GET /api/v1/studies/{study_id}/export/sdtm/define.xml"),
    }


# -- dates, study days and epochs (pure) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("dtc", "day"),
    [
        ("2025-03-09T23:59:00-04:00", -1),  # the day before Day 1 is Day -1: no Day 0
        ("2025-03-10", 1),
        ("2025-03-10T00:01:00+14:00", 1),  # the date part as recorded, whatever the offset
        ("2024-03-10", -365),  # 2024 is a leap year: 365 days before
        ("2025-03", None),  # partial: no study day
        ("2025", None),
        (None, None),
    ],
)
def test_study_day_by_the_cdisc_rule(dtc: str | None, day: int | None) -> None:
    """--DY from the date parts, Day 1 = RFSTDTC 2025-03-10."""
    assert sdtm_study_day(dtc, "2025-03-10") == day


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("2024-02-29", True),
        ("2025-02-29", False),  # no such day
        ("2025-03-10T09:00", True),
        ("2025-03-10T09:00:00.125Z", True),
        ("2025-3-10", False),
        ("03/14/2025", False),
        ("2025-03-10 09:00", False),
    ],
)
def test_iso8601(text: str, valid: bool) -> None:
    """The conformance check's ISO 8601: reduced precision from the right, real calendar days."""
    assert is_iso8601(text) is valid


def test_epoch_of_a_partial_date_needs_one_epoch_for_its_whole_span() -> None:
    """Screening from 2025-02-10, treatment 2025-03-10 to 2025-03-27, follow-up after."""
    epochs = Epochs(dt.date(2025, 2, 10), dt.date(2025, 3, 10), dt.date(2025, 3, 27))
    assert [epochs.of(parse_partial_date(t)) for t in ("2025-02-09", "2025-02-10", "2025-03-09",
            "2025-03-27", "2025-03-28", "2025-04", "2025-03", "2014")] == [
        None, "SCREENING", "SCREENING", "TREATMENT", "FOLLOW-UP", "FOLLOW-UP", None, None,
    ]  # fmt: skip
