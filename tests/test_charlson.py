"""Charlson index via comorbidipy: known answers from the published weights, batching, warnings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.studies.cirae.charlson import (
    Weighting,
    charlson_index,
    charlson_indices,
    normalise_code,
)

ROOT = Path(__file__).resolve().parent.parent

# Published weights used for the expected values below:
# * original: Charlson ME et al., J Chronic Dis 1987;40:373–83 — MI 1, diabetes with end-organ
#   damage 2, any tumour 2, metastatic solid tumour 6, AIDS 6, moderate/severe liver disease 3.
# * updated: Quan H et al., Am J Epidemiol 2011;173:676–82 — MI 0, diabetes with chronic
#   complications 1, any malignancy 2, metastatic solid tumour 6, AIDS/HIV 4; maximum score 24.
# Categories follow the Quan 2005 ICD-10 coding (Med Care 2005;43:1130–9): I21 acute MI,
# E11.2 type 2 diabetes with renal complications, C34 lung cancer, C78 secondary malignancy.


@pytest.mark.parametrize(
    ("codes", "weighting", "expected"),
    [
        (["I21.4", "E11.2"], "charlson", 1 + 2),
        (["I21.4", "E11.2"], "quan", 0 + 1),
        (["C34.90"], "charlson", 2),
        (["C34.90", "C78.00"], "charlson", 6),  # metastatic supersedes any tumour (assign0)
        (["C34.90", "C78.00"], "quan", 6),
        (["E11.9", "E11.22"], "charlson", 2),  # complicated supersedes uncomplicated diabetes
        (["K70.3", "K72.10"], "charlson", 3),  # moderate/severe supersedes mild liver disease
        (["B20"], "charlson", 6),
        (["B20"], "quan", 4),  # Quan 2011 (comorbidipy 0.5.0 alone says 2)
        (["I21.4", "I21.9", "I22.0"], "charlson", 1),  # one category counts once
        (["Z00.00", "L30.9"], "charlson", 0),  # codes outside every category
        ([], "charlson", 0),
        ([], "quan", 0),
    ],
)
def test_known_indices(codes: list[str], weighting: Weighting, expected: int) -> None:
    """Each index is the published weight sum after the severity hierarchy."""
    assert charlson_index(codes, weighting) == expected


def test_quan_2011_maximum_is_24() -> None:
    """Every Quan 2011 category at once (severe forms superseding mild ones) scores the published 24."""
    every = [
        "I21",  # MI 0
        "I50.9",  # CHF 2
        "I70.0",  # PVD 0
        "G45.9",  # cerebrovascular 0
        "F03",  # dementia 2
        "J44.9",  # chronic pulmonary 1
        "M05.9",  # rheumatic 1
        "K25.9",  # peptic ulcer 0
        "K70.3",  # mild liver (superseded)
        "K72.10",  # moderate/severe liver 4
        "E11.9",  # diabetes (superseded)
        "E11.22",  # diabetes with complications 1
        "G81.9",  # hemiplegia 2
        "N18.4",  # renal 1
        "C34.90",  # malignancy (superseded)
        "C78.00",  # metastatic 6
        "B20",  # AIDS/HIV 4
    ]
    assert charlson_index(every, "quan") == 24
    assert charlson_index(every, "charlson") == 8 * 1 + 2 + 2 + 2 + 3 + 6 + 6


@pytest.mark.parametrize(
    ("dotted", "dotless"),
    [(["E11.22", "I21.4"], ["E1122", "I214"]), ([" c78.0 ", "c34.1"], ["C780", "C341"])],
)
def test_dotted_and_dotless_codes_score_the_same(dotted: list[str], dotless: list[str]) -> None:
    """ICD-10-CM is written with a dot, comorbidipy's prefixes without: both are read the same."""
    assert charlson_index(dotted) == charlson_index(dotless)
    assert charlson_index(dotted, "quan") == charlson_index(dotless, "quan")


def test_normalise_code() -> None:
    """Dots and spaces go, letters are upper-cased."""
    assert [normalise_code(c) for c in ("e11.22", " C34 .90", "I21")] == ["E1122", "C3490", "I21"]


def test_batch_equals_single() -> None:
    """One DataFrame call for many patients gives each the index a single call gives."""
    patients = {
        "a": ["I21.4", "E11.2"],
        "b": [],
        "c": ["C34.90", "C78.00"],
        "d": ["Z00.00"],
        "e": ["B20", "I50.9"],
        "f": ["e11.9"],
    }
    for weighting in ("charlson", "quan"):
        batch = charlson_indices(patients, weighting)
        assert batch == {p: charlson_index(c, weighting) for p, c in patients.items()}
    assert charlson_indices(patients) == {"a": 3, "b": 0, "c": 6, "d": 0, "e": 7, "f": 1}


def test_patients_sharing_a_history_each_get_its_index() -> None:
    """Patients whose codes are the same set (written differently, repeated, in another order)
    each get that set's index, and a set one code away its own (published weights: MI 1 +
    diabetes with end-organ damage 2 = 3; with metastatic lung cancer + 6 = 9)."""
    patients = {
        "a": ["I21.4", "E11.2"],
        "b": ["e11.2", "I214", "I21.4"],
        "c": ["E11.2", "I21.4", "C34.90", "C78.00"],
        "d": ["C78.00", "I21.4", "C34.90", "E11.2"],
        "e": ["I21.4"],
    }
    assert charlson_indices(patients) == {"a": 3, "b": 3, "c": 9, "d": 9, "e": 1}


def test_empty_batch() -> None:
    """No patients, no scores; patients without codes score 0 without a library call."""
    assert charlson_indices({}) == {}
    assert charlson_indices({"x": [], "y": ["", " "]}) == {"x": 0, "y": 0}


def test_no_process_wide_warning_filter_is_left_behind() -> None:
    """comorbidipy's import-time 'ignore SettingWithCopyWarning' does not leak into the process."""
    script = (
        "import warnings, pandas.errors, service.studies.cirae.charlson\n"
        "print(any(f[0] == 'ignore' and f[2] is pandas.errors.SettingWithCopyWarning"
        " for f in warnings.filters))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "False"
