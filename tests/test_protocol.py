"""Protocol files and value sets: strict schemas, errors that name the key, site extensions."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from fhir_mapping.partial_dates import parse_partial_date, study_day
from fhir_mapping.terminology import ICD10, ICD10CM, Terminology, ValueSetDefinition
from service.derivation.catalog import load_catalog
from service.infra.settings import Settings
from service.protocol.schema import ProtocolError
from service.protocol.terminology import (
    TerminologyError,
    build_terminology,
    packaged_definitions,
)
from service.studies.interventional.protocol import TrialProtocol
from service.studies.registry import load_protocols, parse_protocol

ROOT = Path(__file__).resolve().parent.parent
NCT_FILE = ROOT / "service" / "protocol" / "files" / "studies" / "nct06088771.toml"
TERMS = build_terminology()


def _nct_text() -> str:
    return NCT_FILE.read_text("utf-8")


def test_packaged_protocols_load_with_their_choices() -> None:
    """Both studies load, and the CLINICAL.md choices sit in the protocol, not in code."""
    protocols = load_protocols(TERMS)
    assert sorted(protocols) == ["NCT06088771", "cirae-dupilumab"]
    nct = protocols["NCT06088771"]
    assert isinstance(nct, TrialProtocol)
    assert (nct.schedule.surgery_window.start, nct.schedule.surgery_window.end) == (15, 22)
    assert nct.schedule.screening.window_days_before_day1 == 28
    assert str(nct.schedule.dose_tolerance_pct) == "10"
    assert [(d.id, str(d.dose_mg)) for d in nct.schedule.study_drugs] == [
        ("cemiplimab", "350"),
        ("dupilumab", "600"),
    ]
    assert [c.number for c in nct.eligibility] == list(range(1, 10))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "surgery_window = { start = 15, end = 22 }",
            "surgery_window = { start = 23, end = 22 }",
            "schedule.surgery_window: Value error, start (23) must not be after end (22)",
        ),
        (
            "dose_tolerance_pct = 10 ",
            "dose_tolerance_pct = 10\ndose_tolerance = 5 ",
            "schedule.dose_tolerance: Extra inputs are not permitted",
        ),
        (
            'valueset = "dupilumab"',
            'valueset = "dupilumabb"',
            "schedule.study_drugs.1.valueset: unknown value set 'dupilumabb'",
        ),
        (
            'rule = "never_smoker"',
            'rule = "never_smoked"',
            "eligibility.8: Input tag 'never_smoked' found using 'rule' does not match",
        ),
        (
            'severity = "minor"',
            'severity = "trivial"',
            "deviations.5.severity: Input should be 'major' or 'minor'",
        ),
        ("dose_mg = 600", 'dose_mg = "lots"', "schedule.study_drugs.1.dose_mg"),
        ('id = "NCT06088771"', 'id = "NCT06088771"\nid = "x"', "not valid TOML"),
    ],
)
def test_a_wrong_protocol_file_is_refused_naming_the_key(old: str, new: str, message: str) -> None:
    """A mistake in a protocol file names its key, so the deployer can fix it."""
    text = _nct_text()
    assert old in text
    with pytest.raises(ProtocolError) as err:
        parse_protocol(text.replace(old, new, 1), "site.toml", TERMS)
    assert str(err.value).startswith("site.toml: ")
    assert message in str(err.value)


def test_duplicate_criterion_ids_are_refused() -> None:
    """Two criteria with one id would make verdicts ambiguous."""
    text = _nct_text().replace('id = "stage"', 'id = "nsclc"', 1)
    with pytest.raises(ProtocolError, match=r"eligibility: duplicate id\(s\) \['nsclc'\]"):
        parse_protocol(text, "site.toml", TERMS)


def test_a_site_protocol_replaces_the_packaged_one(tmp_path: Path) -> None:
    """A site overrides a choice (the Day 8–22 surgery reading) by a file, not a code change."""
    (tmp_path / "nct.toml").write_text(
        _nct_text()
        .replace("start = 15, end = 22", "start = 8, end = 22")
        .replace('version = "2.0.0"', 'version = "2.0.0-site"')
    )
    protocols = load_protocols(TERMS, tmp_path)
    nct = protocols["NCT06088771"]
    assert isinstance(nct, TrialProtocol)
    assert nct.version == "2.0.0-site"
    assert nct.schedule.surgery_window.start == 8


def test_start_up_refuses_a_broken_site_protocol(tmp_path: Path) -> None:
    """`trialbridge serve` stops before serving and says which file and key are wrong."""
    (tmp_path / "bad.toml").write_text(
        _nct_text().replace("tolerance_days = 7", "tolerance_days = -1")
    )
    with pytest.raises(ProtocolError, match=r"bad\.toml: schedule\.followup\.tolerance_days"):
        load_catalog(Settings(database_url="sqlite:///:memory:", protocol_dir=tmp_path))
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
        "TRIALBRIDGE_PROTOCOL_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert (
        "bad.toml: schedule.followup.tolerance_days: Input should be greater than or equal to 0"
        in result.stderr
    )


def test_a_broken_site_value_set_file_is_refused(tmp_path: Path) -> None:
    """A value-set file with a code and a prefix in one entry is ambiguous: refused, key named."""
    (tmp_path / "v.toml").write_text(
        '[dupilumab]\ntitle = "x"\ncodes = [{ system = "urn:x", code = "1", prefix = "1" }]\n'
    )
    with pytest.raises(TerminologyError, match=r"v\.toml: dupilumab\.codes\.0: Value error"):
        build_terminology(tmp_path)


# -- value sets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("concept", "codeable", "expected"),
    [
        (
            "dupilumab",
            {"coding": [{"system": "http://www.whocc.no/atc", "code": "D11AH05"}]},
            ("code", "D11AH05"),
        ),
        ("dupilumab", {"text": "DUPIXENT 300 mg/2 mL pen"}, ("name", None)),
        ("dupilumab", {"text": "dupilumabx"}, None),
        ("lung_cancer", {"coding": [{"system": ICD10CM, "code": "C34.90"}]}, ("code", "C34.90")),
        ("lung_cancer", {"coding": [{"system": ICD10CM, "code": "c3490"}]}, ("code", "c3490")),
        ("lung_cancer", {"coding": [{"system": ICD10, "code": "C34.1"}]}, ("code", "C34.1")),
        ("lung_cancer", {"coding": [{"system": ICD10CM, "code": "C44.90"}]}, None),
        ("lung_cancer", {"text": "Suspected lung cancer (situation)"}, None),
        (
            "autoimmune_disease",
            {"coding": [{"system": ICD10CM, "code": "M35.00"}]},
            ("code", "M35.00"),
        ),
        ("autoimmune_disease", {"coding": [{"system": ICD10CM, "code": "M35.1"}]}, None),
        ("autoimmune_disease", {"text": "Family history of rheumatoid arthritis"}, None),
        ("route_systemic", {"text": "IV"}, ("name", None)),
        ("route_systemic", {"text": "iv"}, None),
        ("egfr_gene", {"text": "EGFR exon 19 deletion"}, ("name", None)),
        ("egfr_gene", {"text": "eGFR (CKD-EPI)"}, None),
        ("cutaneous_irae", {"text": "Maculopapular rash"}, ("name", None)),
        ("cutaneous_irae", {"text": "Crash injury"}, None),
    ],
)
def test_value_set_matching_records_how_it_matched(
    concept: str, codeable: dict[str, object], expected: tuple[str, str | None] | None
) -> None:
    """Codes match by code (ICD-10 with or without the dot), names as whole words, abbreviations by case."""
    found = TERMS.match(concept, codeable)
    assert (None if found is None else (found.matched_by, found.code)) == expected


def test_only_codes_clinical_md_allows_are_packaged() -> None:
    """Codes CLINICAL.md calls unverified (e.g. RxNorm for dupilumab/cemiplimab) are not in our files."""
    definitions = packaged_definitions()
    for concept in ("dupilumab", "cemiplimab", "core_needle_biopsy", "wedge_resection"):
        assert all(
            c.system != "http://www.nlm.nih.gov/research/umls/rxnorm"
            for c in definitions[concept].codes
        )
    assert [c.code for c in definitions["core_needle_biopsy"].codes] == []
    assert {c.status for d in definitions.values() for c in d.codes} == {"verified", "secondary"}


def test_unknown_value_set_is_a_programming_error() -> None:
    """Asking for a value set that does not exist is a bug, not a silent miss."""
    terms = Terminology({"x": ValueSetDefinition(title="x")})
    with pytest.raises(KeyError):
        terms.match("y", {"text": "anything"})


# -- dates and study days ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (dt.date(2025, 3, 10), 1),
        (dt.date(2025, 3, 11), 2),
        (dt.date(2025, 3, 9), -1),
        (dt.date(2025, 2, 10), -28),
        (dt.date(2025, 3, 31), 22),
        (dt.date(2025, 4, 1), 23),
    ],
)
def test_study_day_follows_cdisc_without_day_zero(day: dt.date, expected: int) -> None:
    """Day 1 is the first dose day; the day before is Day -1; there is no Day 0."""
    assert study_day(day, dt.date(2025, 3, 10)) == expected


@pytest.mark.parametrize(
    ("text", "precision", "first", "last"),
    [
        ("2025", "year", "2025-01-01", "2025-12-31"),
        ("2024-02", "month", "2024-02-01", "2024-02-29"),
        ("2025-06-15", "day", "2025-06-15", "2025-06-15"),
        ("2025-03-01T23:30:00-05:00", "time", "2025-03-01", "2025-03-01"),
        ("2025-03-02T00:30:00+14:00", "time", "2025-03-02", "2025-03-02"),
        ("2016-12-31T23:59:60Z", "time", "2016-12-31", "2016-12-31"),
    ],
)
def test_partial_dates_keep_precision_and_local_day(
    text: str, precision: str, first: str, last: str
) -> None:
    """A month is the whole month; a datetime's day is the day where it was recorded."""
    parsed = parse_partial_date(text)
    assert parsed is not None
    assert (parsed.precision, parsed.first.isoformat(), parsed.last.isoformat()) == (
        precision,
        first,
        last,
    )
    assert parsed.day == (parsed.first if precision in ("day", "time") else None)


@pytest.mark.parametrize("text", ["2025-02-30", "2025-13", "25-01-01", "", "2025-01-01T25:00:00Z"])
def test_impossible_dates_are_not_dates(text: str) -> None:
    """Feb 30 and friends never become a day on a timeline."""
    assert parse_partial_date(text) is None
