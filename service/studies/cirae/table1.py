"""Table 1 of the cirAE cohort: baseline characteristics by group, before and after matching (pure).

Panels: every analysed subject by group (dupilumab, control 1, control 2; SMDs of dupilumab
against each control group), then one panel per matched comparison (the cases with at least one
matched control and those controls; unweighted, as the Cox models use them). Variables: sex,
race, age at ICB initiation, ICB type, year of ICB initiation (categorical: a Table 1 shows
counts per year), Charlson index, cancer type (ICD-10 category) and stage at initiation. How each
number is computed: service.stats.balance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from service.stats.balance import (
    DEFAULT_THRESHOLD,
    BalanceTable,
    Comparison,
    GroupData,
    Variable,
    balance_panel,
)
from service.studies.cirae.labels import (
    CANCER_LABELS,
    ICB_TYPE_LABELS,
    RACE_LABELS,
    SEX_LABELS,
    STAGE_LABELS,
    group_label,
)
from service.studies.cirae.records import CirAESubject, Group, MatchedSet

CONTROLS: tuple[Group, ...] = ("control_1", "control_2")

VARIABLES: tuple[Variable[CirAESubject], ...] = (
    Variable("sex", "Sex", "categorical", lambda s: s.sex, SEX_LABELS),
    Variable("race", "Race", "categorical", lambda s: s.race, RACE_LABELS),
    Variable("age", "Age at ICB initiation, years", "continuous", lambda s: s.age_years),
    Variable(
        "icb_type",
        "ICB type",
        "categorical",
        lambda s: s.icb_type,
        ICB_TYPE_LABELS,
        ("PD-1", "PD-L1", "CTLA-4", "combination"),
    ),
    Variable("icb_year", "Year of ICB initiation", "categorical", lambda s: str(s.icb_year)),
    Variable("charlson", "Charlson comorbidity index", "continuous", lambda s: float(s.charlson)),
    Variable(
        "cancer_type", "Cancer type (ICD-10)", "categorical", lambda s: s.cancer_type, CANCER_LABELS
    ),
    Variable(
        "stage",
        "Stage at ICB initiation",
        "categorical",
        lambda s: s.stage,
        STAGE_LABELS,
        ("0", "I", "II", "III", "IV"),
    ),
)


def _comparison(control: Group) -> Comparison:
    return Comparison(
        f"dupilumab_vs_{control}",
        f"{group_label('dupilumab')} vs {group_label(control)}",
        "dupilumab",
        control,
    )


def matched_sets(matching: Mapping[str, Any]) -> dict[Group, tuple[MatchedSet, ...]]:
    """The matched sets of each comparison as the analysis reported them (none when not matched)."""
    out: dict[Group, tuple[MatchedSet, ...]] = {}
    for control in CONTROLS:
        found = matching.get(control)
        sets = found.get("matched_sets") if isinstance(found, Mapping) else None
        out[control] = tuple(
            MatchedSet(str(s["case"]), tuple(str(c) for c in s["controls"]))
            for s in sets or ()
            if isinstance(s, Mapping) and s.get("controls")
        )
    return out


def _members(subjects: Iterable[CirAESubject], ids: set[str]) -> list[CirAESubject]:
    return sorted((s for s in subjects if s.subject_id in ids), key=lambda s: s.subject_id)


def baseline_table(
    subjects: Sequence[CirAESubject],
    matched: Mapping[Group, Sequence[MatchedSet]],
    threshold: float = DEFAULT_THRESHOLD,
) -> BalanceTable:
    """Table 1: the cohort by group, then each matched comparison, with SMDs (|SMD| < threshold)."""
    by_group = {
        g: [s for s in subjects if s.group == g] for g in ("dupilumab", "control_1", "control_2")
    }
    panels = [
        balance_panel(
            "before_matching",
            "Before matching: all analysed subjects",
            [GroupData(g, group_label(g), members) for g, members in by_group.items()],
            [_comparison(c) for c in CONTROLS],
            VARIABLES,
            threshold,
        )
    ]
    for control in CONTROLS:
        sets = matched.get(control, ())
        cases = {s.case for s in sets if s.controls}
        controls = {c for s in sets for c in s.controls}
        panels.append(
            balance_panel(
                f"matched_{control}",
                f"After matching: {group_label('dupilumab')} vs {group_label(control)}",
                [
                    GroupData("dupilumab", group_label("dupilumab"), _members(subjects, cases)),
                    GroupData(control, group_label(control), _members(subjects, controls)),
                ],
                [_comparison(control)],
                VARIABLES,
                threshold,
            )
        )
    return BalanceTable(
        "Table 1. Baseline characteristics by group, before and after matching",
        tuple(panels),
        threshold,
    )
