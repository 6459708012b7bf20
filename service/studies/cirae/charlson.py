"""Charlson comorbidity index from ICD-10 codes, computed by comorbidipy (Quan 2005 ICD-10 coding).

CLINICAL.md asks for a maintained library rather than hand-typed code lists, so the code → category
mapping is comorbidipy's `charlson_icd10_quan` (Quan H et al., Med Care 2005;43:1130–9). Weights:
"charlson" = the original Charlson 1987 weights (J Chronic Dis 1987;40:373–83), "quan" = the Quan 2011
updated weights (Am J Epidemiol 2011;173:676–82). comorbidipy's `assign0=True` hierarchy is kept: a
severe form supersedes its mild form (metastatic tumour over any malignancy, diabetes with over
without complications, moderate/severe over mild liver disease), so C78 + C34 scores 6, not 8.

Two library defects are contained here, nowhere else:

* comorbidipy 0.5.0 does `from pandas.core.common import SettingWithCopyWarning`; pandas 2.x moved
  that class to `pandas.errors`, so the import fails. Before importing comorbidipy the class is put
  back under its old name when it is missing (the same object, so nothing else changes). Importing
  comorbidipy also installs a process-wide "ignore SettingWithCopyWarning" filter; the import runs
  inside `warnings.catch_warnings()` so that filter is discarded, and the pandas warnings comorbidipy
  may raise are instead ignored only around our own call and only when raised from comorbidipy.
* comorbidipy 0.5.0's "quan" weights give AIDS/HIV 2 points; Quan 2011 (and the R `comorbidity`
  package comorbidipy ports) give 4, which is what makes the published maximum score 24. The
  difference is added back from the library's own per-category flag.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd

Weighting = Literal["charlson", "quan"]

_MAPPING = "charlson_icd10_quan"
_QUAN_2011_AIDS_WEIGHT = 4  # Quan 2011, Table 3 (AIDS/HIV); see the module docstring


@functools.cache
def _library() -> tuple[ModuleType, ModuleType, Any, tuple[type[Warning], ...]]:
    """pandas, comorbidipy, its weights and the warnings it may raise: imported on first use
    (pandas is ~50 MB of a process that may never compute a Charlson index)."""
    import pandas
    import pandas.core.common
    import pandas.errors

    if not hasattr(pandas.core.common, "SettingWithCopyWarning"):
        pandas.core.common.SettingWithCopyWarning = pandas.errors.SettingWithCopyWarning

    with warnings.catch_warnings():
        import comorbidipy
        from comorbidipy.weights import weights as library_weights

    noise = (
        pandas.errors.SettingWithCopyWarning,
        FutureWarning,
        DeprecationWarning,
        pandas.errors.PerformanceWarning,
    )
    return pandas, comorbidipy, library_weights, noise


def normalise_code(code: str) -> str:
    """ICD-10 as comorbidipy's prefixes are written: no dots or spaces, upper case ('e11.22' → 'E1122')."""
    return "".join(code.split()).replace(".", "").upper()


def _score_frame(frame: pd.DataFrame, weighting: Weighting) -> pd.DataFrame:
    """comorbidipy on (id, code) rows, its pandas warnings ignored only when raised from comorbidipy."""
    _, comorbidipy, _, noise = _library()
    with warnings.catch_warnings():
        for category in noise:
            warnings.filterwarnings("ignore", category=category, module=r"comorbidipy(\.|$)")
        scored: pd.DataFrame = comorbidipy.comorbidity(
            frame,
            id="id",
            code="code",
            age=None,
            score="charlson",
            icd="icd10",
            variant="quan",
            weighting=weighting,
            assign0=True,
        )
    return scored


def _aids_correction(weighting: Weighting) -> int:
    """Points to add per AIDS/HIV flag so the "quan" weighting matches Quan 2011 (0 when it already does)."""
    if weighting != "quan":
        return 0
    library_weights = _library()[2]
    return _QUAN_2011_AIDS_WEIGHT - int(library_weights[_MAPPING]["quan"]["aids"])


def charlson_indices(
    codes_by_patient: Mapping[str, Iterable[str]], weighting: Weighting = "charlson"
) -> dict[str, int]:
    """Every patient's index from one DataFrame call (cohorts have thousands); no codes → 0.

    An index depends only on the patient's set of codes, so each distinct set is scored once
    (a cohort of 10^5 patients has a few hundred distinct histories).
    """
    result = dict.fromkeys(codes_by_patient, 0)
    patients_of: dict[frozenset[str], list[str]] = {}
    for patient, codes in codes_by_patient.items():
        history = frozenset(code for code in map(normalise_code, codes) if code)
        if history:
            patients_of.setdefault(history, []).append(patient)
    if not patients_of:
        return result
    histories = list(patients_of)
    rows = sorted((i, code) for i, history in enumerate(histories) for code in history)
    pandas = _library()[0]
    frame = pandas.DataFrame(rows, columns=["id", "code"])
    scored = _score_frame(frame, weighting)
    extra = _aids_correction(weighting)
    aids = scored["aids"] if "aids" in scored.columns else pandas.Series(0, index=scored.index)
    for i, score, has_aids in zip(scored["id"], scored["comorbidity_score"], aids, strict=True):
        index = round(float(score)) + extra * round(float(has_aids))
        for patient in patients_of[histories[int(i)]]:
            result[patient] = index
    return result


def charlson_index(codes: Iterable[str], weighting: Weighting = "charlson") -> int:
    """One patient's index (the batched call with a single patient)."""
    return charlson_indices({"_": codes}, weighting)["_"]
