"""NCT06088771's report document: the flow, counts, responses, feasibility, safety, EFS and OS.

Built from the cohort figures (cohort_statistics) and the flow; no listing and no swimmer plot,
which name subjects: a report attached to a manuscript carries aggregates only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.studies.document import (
    DASH,
    Figure,
    FlowBlock,
    Paragraph,
    ReportDocument,
    Row,
    Section,
    Table,
    count,
    num,
    percent,
    with_ci,
)
from service.studies.flow import ConsortFlow
from service.studies.interventional.protocol import TrialProtocol


def _rate(rate: Mapping[str, Any]) -> str:
    """'k/n, p % (lo–hi %)' of an exact-CI proportion."""
    if not rate.get("n"):
        return f"0/0 ({DASH})"
    pct = {
        k: (100 * v if v is not None else None)
        for k, v in rate.items()
        if k.startswith(("rate", "ci_"))
    }
    return f"{rate['successes']}/{rate['n']}, {with_ci(pct['rate'], pct['ci_lower'], pct['ci_upper'], 1)} %"


def _response_rows(figures: Mapping[str, Any]) -> tuple[Row, ...]:
    rows = []
    for key, label in (
        ("mpr", "Major pathological response"),
        ("pcr", "Pathological complete response"),
    ):
        r = figures[key]
        rows.append(
            Row(
                (
                    label,
                    count(r["met"]),
                    count(r["not_met"]),
                    count(r["not_evaluable"]),
                    _rate(r["rate"]),
                    _rate(r["evaluable_rate"]),
                )
            )
        )
    return tuple(rows)


def _km_table(figures: Mapping[str, Any], months: Sequence[int], level: float) -> Table:
    rows = []
    for key, label in (("efs", "Event-free survival"), ("os", "Overall survival")):
        km = figures[key]
        ci = km["median_ci"]
        median = (
            with_ci(km.get("median_months"), ci.get("lower_months"), ci.get("upper_months"), 1)
            if km.get("median_reached")
            else "not reached"
        )
        landmarks = [
            with_ci(
                100 * t["survival"] if t["survival"] is not None else None,
                100 * t["ci_lower"] if t["ci_lower"] is not None else None,
                100 * t["ci_upper"] if t["ci_upper"] is not None else None,
                1,
            )
            for t in km["timepoints"]
        ]
        rows.append(Row((label, count(km["n"]), count(km["events"]), median, *landmarks)))
    return Table(
        f"Kaplan–Meier estimates from Day 1 ({level:.0%} CI)",
        (
            "Endpoint",
            "n",
            "Events",
            "Median, months",
            *(f"Survival at {m} months, %" for m in months),
        ),
        tuple(rows),
        ("Landmark survival beyond the last observation is not estimated (–).",),
    )


def trial_document(
    protocol: TrialProtocol, figures: Mapping[str, Any], flow: ConsortFlow
) -> ReportDocument:
    """The report of the trial's cohort outcomes."""
    level = float(protocol.outcomes.confidence_level)
    months = protocol.outcomes.survival_timepoints_months
    counts = figures["counts"]
    safety = figures["safety"]
    tts = figures["time_to_surgery"]
    window = protocol.schedule.surgery_window
    status_rows = tuple(
        Row((f"ResearchSubject status {status}", count(n)), indent=True)
        for status, n in counts["by_status"].items()
    )
    sections = (
        Section("Flow of patients", (FlowBlock(flow),)),
        Section(
            "Patients",
            (
                Paragraph(f"Analysis population: {figures['population']}."),
                Table(
                    "Subjects",
                    ("", "n"),
                    (
                        Row(
                            ("Subjects (ResearchSubject for the study)", count(counts["subjects"])),
                            heading=True,
                        ),
                        *status_rows,
                        Row(("Dosed", count(counts["dosed"]))),
                        Row(("Operated", count(counts["operated"]))),
                        Row(
                            (
                                "With a response assessment",
                                count(counts["with_response_assessment"]),
                            )
                        ),
                    ),
                ),
            ),
        ),
        Section(
            "Pathological response and feasibility",
            (
                Table(
                    f"Responses ({level:.0%} exact Clopper–Pearson CI)",
                    (
                        "Endpoint",
                        "Met",
                        "Not met",
                        "Not evaluable",
                        "Rate over dosed, %",
                        "Rate over evaluable, %",
                    ),
                    _response_rows(figures),
                    (
                        f"MPR: {figures['mpr']['definition']}; pCR: {figures['pcr']['definition']}.",
                        "Not-evaluable subjects stay in the dosed denominator.",
                    ),
                ),
                Table(
                    "Surgery",
                    ("", "Value"),
                    (
                        Row(
                            (
                                f"Operated on study Day {window.start}–{window.end}",
                                _rate(figures["feasibility"]),
                            )
                        ),
                        Row(
                            (
                                "Days from Day 1 to surgery, median (range)",
                                f"{num(tts['median_days'], 1)} ({count(tts['min_days'])}–{count(tts['max_days'])}), n = {tts['n']}",
                            )
                        ),
                    ),
                ),
            ),
        ),
        Section(
            "Safety",
            (
                Table(
                    "Treatment-emergent adverse events by CTCAE grade",
                    (
                        "Grade",
                        "Subjects (worst grade)",
                        "Events",
                        f"Events within {safety['window_days_after_last_dose']} days of dosing",
                    ),
                    tuple(
                        Row(
                            (
                                "Ungraded" if g["grade"] == "unknown" else f"Grade {g['grade']}",
                                percent(g["subjects_worst_grade"], counts["dosed"]),
                                count(g["events"]),
                                count(g["events_within_window"]),
                            )
                        )
                        for g in safety["by_grade"]
                    ),
                    (
                        f"Subjects with grade ≥ {safety['high_grade_min']}: "
                        f"{_rate(safety['subjects_high_grade'])}.",
                        f"Adverse events before Day 1: {safety['pre_dose_events']} in "
                        f"{safety['subjects_with_pre_dose_ae']} subjects (not counted above).",
                    ),
                ),
            ),
        ),
        Section(
            "Event-free and overall survival",
            (
                _km_table(figures, months, level),
                Figure("efs", "Event-free survival from Day 1, with numbers at risk"),
                Figure("os", "Overall survival from Day 1, with numbers at risk"),
            ),
        ),
    )
    return ReportDocument(
        f"{protocol.id}: {protocol.title}",
        sections,
        (
            "Months are 365.25 / 12 days. Kaplan–Meier intervals: log(−log) (exponential "
            "Greenwood). Proportions: exact Clopper–Pearson intervals.",
        ),
    )
