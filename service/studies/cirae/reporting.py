"""What a reader of the cirAE paper expects beside the models: Table 1, each matched comparison,
the cirAE and glucocorticoid description, the flow of patients, the listing and their figures.

Everything here consumes what cohort building (cohort.py) and the analysis (analysis.py) produced,
so it follows their definitions rather than restating them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.stats.balance import BalanceTable
from service.stats.figures import Curves, FigureData, km_figure
from service.studies.cirae.cohort import CohortBuild
from service.studies.cirae.comparisons import comparison_summary, matched_population
from service.studies.cirae.consort import cirae_flow
from service.studies.cirae.description import Episode, describe_cirae, describe_glucocorticoids
from service.studies.cirae.labels import group_label
from service.studies.cirae.listing import analysis_listing
from service.studies.cirae.protocol import CohortProtocol
from service.studies.cirae.table1 import CONTROLS, baseline_table, matched_sets
from service.studies.flow import ConsortFlow
from service.studies.kind import ListingRow

ORIGIN = "ICB initiation"


@dataclass(frozen=True, slots=True)
class Additions:
    """The parts added to the cirAE report: JSON sections, figures and the typed parts."""

    body: dict[str, Any]
    plots: dict[str, FigureData]
    flow: ConsortFlow
    table1: BalanceTable
    listing: tuple[ListingRow, ...]


def group_curves(km_groups: Sequence[Mapping[str, Any]]) -> Curves:
    """The analysis's per-group OS data as KM curves named in words (groups with subjects only)."""
    return [
        (group_label(str(g["label"])), g["durations_days"], g["events"])
        for g in km_groups
        if g["events"]
    ]


def report_additions(
    protocol: CohortProtocol,
    episodes: Mapping[str, Episode],
    built: CohortBuild,
    figures: Mapping[str, Any],
) -> Additions:
    """Table 1, the comparisons, the descriptions, the flow, the listing and matched KM figures
    (`episodes`: what the cirAE description reads of each cirAE subject's events, by patient)."""
    level = float(protocol.cohort.confidence_level)
    months = protocol.cohort.survival_timepoints_months
    subjects = built.subjects
    matched = matched_sets(figures.get("matching") or {})
    cox = figures.get("cox") or {}
    models = {c: cox.get(c) or {} for c in CONTROLS}  # each: primary, matched_sets, …
    primary: dict[str, Any] = {c: models[c].get("primary") for c in CONTROLS}
    plots: dict[str, FigureData] = {}
    for control in CONTROLS:
        population = [s for s, _ in matched_population(subjects, matched[control])]
        curves: Curves = [
            (
                group_label(g),
                [float(s.os_days) for s in population if s.group == g],
                [s.died for s in population if s.group == g],
            )
            for g in ("dupilumab", control)
        ]
        title = f"Overall survival, matched: {group_label('dupilumab')} vs {group_label(control)}"
        plots[f"os_matched_{control}"] = km_figure(curves, title, level, ORIGIN)
    body = {
        "comparisons": {
            c: comparison_summary(
                subjects, c, matched[c], models.get(c), level=level, months=months
            )
            for c in CONTROLS
        },
        "cirae_description": describe_cirae(protocol, subjects, episodes),
        "glucocorticoids": describe_glucocorticoids(protocol, subjects),
    }
    return Additions(
        body=body,
        plots=plots,
        flow=cirae_flow(subjects, built.excluded, matched, primary, protocol.cohort.matching.ratio),
        table1=baseline_table(subjects, matched),
        listing=analysis_listing(subjects, matched),
    )
