"""The cirAE analysis listing: one pseudonymous row per analysed subject (pure).

What a reviewer re-runs the analysis from, and nothing that identifies a patient: the subject id
(a keyed pseudonym), group, matched set per comparison (numbered in the analysis's set order;
role case or control), the year of ICB initiation and times in days from it (no calendar dates),
age in whole years, the covariates as the models use them, and the events.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from service.studies.cirae.labels import group_label
from service.studies.cirae.records import CirAESubject, Group, MatchedSet
from service.studies.kind import ListingRow


def _days(subject: CirAESubject, day: Any) -> int | None:
    return (day - subject.icb_start).days if day is not None else None


def _roles(matched: Mapping[Group, Sequence[MatchedSet]]) -> dict[str, dict[str, dict[str, Any]]]:
    """subject id → comparison → its matched set number and role."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for control, sets in matched.items():
        for number, s in enumerate((s for s in sets if s.controls), start=1):
            out.setdefault(s.case, {})[control] = {"set": number, "role": "case"}
            for c in s.controls:
                out.setdefault(c, {})[control] = {"set": number, "role": "control"}
    return out


def analysis_listing(
    subjects: Sequence[CirAESubject], matched: Mapping[Group, Sequence[MatchedSet]]
) -> tuple[ListingRow, ...]:
    """Every analysed subject's row, in subject-id order."""
    roles = _roles(matched)
    rows = []
    for s in sorted(subjects, key=lambda s: s.subject_id):
        mine = roles.get(s.subject_id, {})
        rows.append(
            ListingRow(
                s.subject_id,
                {
                    "group": s.group,
                    "group_label": group_label(s.group),
                    "matched_sets": {c: mine.get(c) for c in matched},
                    "icb_year": s.icb_year,
                    "icb_type": s.icb_type,
                    "age_years": math.floor(s.age_years) if s.age_years is not None else None,
                    "sex": s.sex,
                    "race": s.race,
                    "charlson": s.charlson,
                    "cancer_type": s.cancer_type,
                    "stage": s.stage,
                    "days_to_cirae_onset": _days(s, s.cirae_onset),
                    "days_to_dupilumab": _days(s, s.dupilumab_start),
                    "days_to_glucocorticoid": _days(s, s.glucocorticoid_start),
                    "resolution": s.resolution,
                    "days_to_resolution": _days(s, s.resolution_date),
                    "glucocorticoid_flag": s.glucocorticoid_flag,
                    "os_days": s.os_days,
                    "died": s.died,
                },
            )
        )
    return tuple(rows)
