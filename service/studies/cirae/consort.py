"""The cirAE cohort's CONSORT-style flow: ICB recipients → cohort → cirAE → groups → matched →
analysed (pure).

Counts come from the analysis as it ran: the exclusions of cohort building (by reason), the
groups, the matched sets of each comparison (unmatched cases and controls not selected) and the
patients each comparison's adjusted Cox model used (its excluded subjects by reason).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.studies.cirae.cohort import Exclusion
from service.studies.cirae.labels import group_label, words
from service.studies.cirae.records import CirAESubject, Group, MatchedSet
from service.studies.flow import ConsortFlow, FlowBox, FlowCount, FlowStage, counts

CONTROLS: tuple[Group, ...] = ("control_1", "control_2")


def _box(
    key: str, label: str, n: int, definition: str, excluded: Sequence[FlowCount] = ()
) -> FlowBox:
    return FlowBox(key, label, n, definition, tuple(excluded))


def _versus(control: Group) -> str:
    return f"{group_label('dupilumab')} vs {group_label(control)}"


def _matched(
    control: Group, sets: Sequence[MatchedSet], n_cases: int, n_controls: int, ratio: int
) -> FlowBox:
    with_controls = [s for s in sets if s.controls]
    matched_controls = sum(len(s.controls) for s in with_controls)
    excluded = [
        FlowCount(
            f"{group_label('dupilumab')} cases without an eligible control",
            n_cases - len(with_controls),
        ),
        FlowCount(
            f"{group_label(control)} patients not selected as controls",
            n_controls - matched_controls,
        ),
    ]
    return _box(
        f"matched_{control}",
        f"Matched: {_versus(control)}",
        len(with_controls) + matched_controls,
        f"{len(with_controls)} dupilumab cases with at least one matched control (1:{ratio}) and "
        f"their {matched_controls} controls",
        [c for c in excluded if c.n],
    )


def _analysed(control: Group, matched_n: int, model: Mapping[str, Any] | None) -> FlowBox:
    model = model if isinstance(model, Mapping) else {}
    left = [
        str(e.get("reason") or "excluded")
        for e in model.get("excluded_subjects") or ()
        if isinstance(e, Mapping)
    ]
    n = model.get("n_subjects")
    analysed = int(n) if isinstance(n, int) else matched_n - len(left)
    excluded = list(counts(f"left out of the model: {words(r)}" for r in left))
    definition = "the matched patients the adjusted Cox model used"
    if model and not model.get("estimable", True):
        definition += f" (model not estimable: {words(str(model.get('reason')))})"
    return _box(
        f"analysed_{control}", f"Analysed: {_versus(control)}", analysed, definition, excluded
    )


def cirae_flow(
    subjects: Sequence[CirAESubject],
    excluded: Sequence[Exclusion],
    matched: Mapping[Group, Sequence[MatchedSet]],
    models: Mapping[str, Any],
    ratio: int,
) -> ConsortFlow:
    """The flow of every ICB-treated patient through the analysis, with reasons and counts."""
    size = {g: sum(s.group == g for s in subjects) for g in ("dupilumab", "control_1", "control_2")}
    stages = [
        FlowStage(
            "icb",
            "ICB recipients",
            (
                _box(
                    "icb",
                    "ICB recipients",
                    len(subjects) + len(excluded),
                    "patients with an immune checkpoint inhibitor administered or ordered",
                ),
            ),
        ),
        FlowStage(
            "cohort",
            "Included",
            (
                _box(
                    "cohort",
                    "Included in the cohort",
                    len(subjects),
                    "a time origin, a determinable group and an OS interval from ICB initiation",
                    counts(e.reason for e in excluded),
                ),
            ),
        ),
        FlowStage(
            "cirae",
            "cirAE",
            (
                _box(
                    "cirae",
                    "cirAE after ICB initiation",
                    size["dupilumab"] + size["control_1"],
                    "a cutaneous irAE with onset on or after ICB initiation",
                ),
                _box(
                    "no_cirae",
                    "No cirAE",
                    size["control_2"],
                    "no cutaneous irAE after ICB initiation",
                ),
            ),
        ),
        FlowStage(
            "groups",
            "Groups",
            tuple(
                _box(g, group_label(g), size[g], definition)
                for g, definition in (
                    ("dupilumab", "dupilumab first given on or after cirAE onset"),
                    ("control_1", "cirAE, never any dupilumab"),
                    ("control_2", "no cirAE, never any dupilumab"),
                )
            ),
        ),
        FlowStage(
            "matched",
            "Matched",
            tuple(
                _matched(c, matched.get(c, ()), size["dupilumab"], size[c], ratio) for c in CONTROLS
            ),
        ),
    ]
    matched_boxes = {b.key: b for b in stages[-1].boxes}
    stages.append(
        FlowStage(
            "analysed",
            "Analysed",
            tuple(_analysed(c, matched_boxes[f"matched_{c}"].n, models.get(c)) for c in CONTROLS),
        )
    )
    return ConsortFlow(
        "cirAE cohort: flow of patients",
        tuple(stages),
        (
            "Each ICB recipient left out of the cohort is counted under the first reason found "
            "(cohort building checks them in a fixed order).",
            "Each control group is matched to the dupilumab cases separately; a case can be in "
            "both comparisons.",
        ),
    )
