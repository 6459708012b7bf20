"""Human words for the cirAE cohort's codes, so figures, tables and reports never show internal ones.

Groups are named as the paper names them; race keys (OMB category codes, see cohort.py) by their
category name; cancer types (ICD-10 categories) by the site, with the code kept beside it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

GROUP_LABELS: Mapping[str, str] = {
    "dupilumab": "Dupilumab",
    "control_1": "cirAE, no dupilumab",
    "control_2": "No cirAE",
}
SEX_LABELS: Mapping[str, str] = {
    "female": "Female",
    "male": "Male",
    "other": "Other",
    "unknown": "Unknown",
}
# The five OMB race categories (US Core ombCategory), by code.
RACE_LABELS: Mapping[str, str] = {
    "1002-5": "American Indian or Alaska Native",
    "2028-9": "Asian",
    "2054-5": "Black or African American",
    "2076-8": "Native Hawaiian or Other Pacific Islander",
    "2106-3": "White",
}
ICB_TYPE_LABELS: Mapping[str, str] = {
    "PD-1": "PD-1 inhibitor",
    "PD-L1": "PD-L1 inhibitor",
    "CTLA-4": "CTLA-4 inhibitor",
    "combination": "Combination",
}
STAGE_LABELS: Mapping[str, str] = {
    "0": "Stage 0",
    "I": "Stage I",
    "II": "Stage II",
    "III": "Stage III",
    "IV": "Stage IV",
}
# ICD-10 categories of cancers commonly treated with checkpoint inhibitors (others show the code).
_CANCER_SITES: Mapping[str, str] = {
    "C15": "oesophagus",
    "C16": "stomach",
    "C18": "colon",
    "C20": "rectum",
    "C22": "liver",
    "C25": "pancreas",
    "C32": "larynx",
    "C34": "bronchus and lung",
    "C43": "melanoma of skin",
    "C45": "mesothelioma",
    "C4A": "Merkel cell carcinoma",
    "C50": "breast",
    "C53": "cervix uteri",
    "C54": "corpus uteri",
    "C56": "ovary",
    "C61": "prostate",
    "C64": "kidney",
    "C65": "renal pelvis",
    "C67": "bladder",
    "C71": "brain",
}
CANCER_LABELS: Mapping[str, str] = {
    **{code: f"{code} {site}" for code, site in _CANCER_SITES.items()},
    **{f"C{n:02d}": f"C{n:02d} head and neck" for n in range(0, 15)},
}


def group_label(group: str) -> str:
    """A group's human name; an unexpected key is shown as it is rather than hidden."""
    return GROUP_LABELS.get(group, group)


def race_label(race: str | None) -> str:
    """An OMB category by name; other recorded text as written; missing as 'Unknown'."""
    if not race or race == "unknown":
        return "Unknown"
    return RACE_LABELS.get(race, race)


def cancer_label(code: str) -> str:
    """An ICD-10 category with its site when known."""
    return "Unknown" if code == "unknown" else CANCER_LABELS.get(code, code)


_CODES = re.compile(r"\b(control_1|control_2)\b")


def words(text: str) -> str:
    """Free text from the analysis (reasons, caveats) with group codes in words."""
    return _CODES.sub(lambda m: group_label(m.group(1)), text)
