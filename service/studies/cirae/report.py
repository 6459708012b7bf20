"""The cirAE cohort's report document: flow, Table 1, description, each matched comparison with its
KM figure and model tables, and the methods a statistician checks (pure).

Every code is shown in words (labels.py); no subject ids, dates of birth or FHIR ids: the report
carries aggregates only. Model tables are read from the analysis output generically (a model is a
mapping with `estimable`; nested models are shown one after the other), so they follow its shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from service.stats.balance import BalancePanel, BalanceRow, BalanceTable
from service.studies.cirae.labels import (
    CANCER_LABELS,
    ICB_TYPE_LABELS,
    RACE_LABELS,
    SEX_LABELS,
    STAGE_LABELS,
    group_label,
    words,
)
from service.studies.cirae.protocol import CohortProtocol
from service.studies.document import (
    DASH,
    Block,
    Figure,
    FlowBlock,
    Paragraph,
    ReportDocument,
    Row,
    Section,
    Table,
    count,
    median_iqr,
    num,
    p_value,
    percent,
    with_ci,
)
from service.studies.flow import ConsortFlow

CONTROLS = ("control_1", "control_2")
GROUPS = ("dupilumab", "control_1", "control_2")
_COVARIATES: Mapping[str, tuple[str, Mapping[str, str]]] = {
    "sex": ("Sex", SEX_LABELS),
    "race": ("Race", RACE_LABELS),
    "icb_type": ("ICB type", ICB_TYPE_LABELS),
    "cancer_type": ("Cancer type", CANCER_LABELS),
    "stage": ("Stage", STAGE_LABELS),
}
_ADJUSTMENT = {
    "sex": "sex",
    "race": "race",
    "age": "age",
    "icb_type": "ICB type",
    "charlson": "Charlson index",
    "cancer_type": "cancer type",
    "stage": "stage",
}
_TERMS = {
    "dupilumab": "Dupilumab",
    "glucocorticoid": "Systemic glucocorticoids (time-varying)",
    "age": "Age, per year",
    "charlson": "Charlson index, per point",
}


def _in_words(block: Block) -> Block:
    """A block with every text it shows passed through `words`."""
    if isinstance(block, Paragraph):
        return Paragraph(words(block.text))
    if isinstance(block, Table):
        return Table(
            words(block.caption),
            tuple(words(c) for c in block.columns),
            tuple(replace(r, cells=tuple(words(c) for c in r.cells)) for r in block.rows),
            tuple(words(n) for n in block.notes),
        )
    if isinstance(block, Figure):
        return Figure(block.plot, words(block.caption))
    if isinstance(block, Section):
        return Section(words(block.heading), tuple(_in_words(b) for b in block.blocks))
    return block


def _caveat(text: str, references: Mapping[str, Any]) -> str:
    """A model caveat 'term: why' with the term in words."""
    term, sep, rest = text.partition(": ")
    if sep and ("=" in term or term in _TERMS):
        return f"{term_label(term, references)}: {rest}"
    return text


def term_label(term: str, references: Mapping[str, Any]) -> str:
    """A model term in words: 'Sex: Male (ref. Female)', 'Age, per year'."""
    if term in _TERMS:
        return _TERMS[term]
    name, _, level = term.partition("=")
    title, labels = _COVARIATES.get(name, (name.replace("_", " ").capitalize(), {}))
    if not level:
        return title
    reference = references.get(name)
    shown = labels.get(level, "Unknown" if level == "unknown" else level)
    if isinstance(reference, str):
        ref = labels.get(reference, "Unknown" if reference == "unknown" else reference)
        return f"{title}: {shown} (ref. {ref})"
    return f"{title}: {shown}"


# -- Table 1 ---------------------------------------------------------------------------------------


def _smd_cell(row: BalanceRow, comparison: str) -> str:
    smd = next((s for s in row.smds if s.comparison == comparison), None)
    if smd is None or smd.value is None:
        return DASH
    return f"{smd.value:.3f}" + ("" if smd.balanced else " *")


def _table1(panel: BalancePanel, threshold: float) -> Table:
    groups = panel.groups
    columns = (
        "Characteristic",
        *(f"{g.label} (n = {g.n})" for g in groups),
        *(f"SMD, {c.label}" for c in panel.comparisons),
    )
    rows: list[Row] = []
    for r in panel.rows:
        smds = tuple(_smd_cell(r, c.key) for c in panel.comparisons)
        blanks = ("",) * len(groups)
        if r.kind == "continuous":
            rows.append(Row((r.label, *blanks, *smds), heading=True))
            rows.append(
                Row(
                    (
                        "Mean (SD)",
                        *(f"{num(s.mean, 1)} ({num(s.sd, 1)})" for s in r.continuous),
                        *("",) * len(smds),
                    ),
                    indent=True,
                )
            )
            rows.append(
                Row(
                    (
                        "Median [Q1, Q3]",
                        *(
                            f"{num(s.median, 1)} [{num(s.q1, 1)}, {num(s.q3, 1)}]"
                            for s in r.continuous
                        ),
                        *("",) * len(smds),
                    ),
                    indent=True,
                )
            )
            if any(s.missing for s in r.continuous):
                rows.append(
                    Row(
                        ("Missing", *(count(s.missing) for s in r.continuous), *("",) * len(smds)),
                        indent=True,
                    )
                )
            continue
        rows.append(Row((r.label, *blanks, *smds), heading=True))
        for i, (_, label) in enumerate(r.levels):
            cells = tuple(
                percent(levels[i].n, g.n) for levels, g in zip(r.categorical, groups, strict=True)
            )
            rows.append(Row((label, *cells, *("",) * len(smds)), indent=True))
    return Table(
        panel.title,
        columns,
        tuple(rows),
        (
            f"SMD: standardized mean difference; * |SMD| ≥ {threshold} (reported, not enforced). "
            "Continuous: (mean₁ − mean₂) / √((s₁² + s₂²) / 2). Categorical: multi-level SMD of "
            "Yang & Dalton (2012); a missing value is its own level (Unknown).",
        ),
    )


# -- models ----------------------------------------------------------------------------------------


def _hr_cell(term: Mapping[str, Any]) -> tuple[str, str]:
    if not term.get("estimable", True) or term.get("hr") is None:
        return (f"not estimable: {term.get('reason') or ''}".strip(), DASH)
    return with_ci(term["hr"], term.get("ci_lower"), term.get("ci_upper")), p_value(term.get("p"))


def _is_model(value: Any) -> bool:
    return isinstance(value, Mapping) and "estimable" in value


def _is_term(value: Any) -> bool:
    return isinstance(value, Mapping) and (
        "hr" in value or ("estimable" in value and "n_subjects" not in value)
    )


def _model_blocks(title: str, model: Mapping[str, Any], level: float) -> list[Block]:
    """One model's table (every term), its population and caveats; nested models in turn."""
    nested = [(k, v) for k, v in model.items() if _is_model(v) and "n_subjects" in v]
    blocks: list[Block] = []
    if not model.get("estimable"):
        blocks.append(
            Paragraph(f"{title}: not estimable ({model.get('reason') or 'no reason given'}).")
        )
    elif "dupilumab" in model or "covariates" in model:
        references = model.get("reference_levels") or {}
        terms = [(k, v) for k, v in model.items() if k in _TERMS and _is_term(v)]
        terms += [(k, v) for k, v in (model.get("covariates") or {}).items() if _is_term(v)]
        rows = tuple(Row((term_label(k, references), *_hr_cell(v))) for k, v in terms)
        notes = [
            f"{model.get('n_subjects')} subjects, {model.get('n_events')} deaths.",
            *(
                f"{term_label(str(d.get('term')), references)} dropped: {d.get('reason')}"
                for d in model.get("dropped_terms") or ()
                if isinstance(d, Mapping)
            ),
            *(_caveat(str(c), references) for c in model.get("caveats") or ()),
        ]
        method = model.get("method")
        if isinstance(method, Mapping) and isinstance(method.get("design"), str):
            notes.append(f"Design: {method['design']}.")
        ph = model.get("ph_check")
        if isinstance(ph, Mapping) and ph.get("verdict"):
            notes.append(f"Proportional hazards (Grambsch–Therneau): {ph['verdict']}.")
        blocks.append(Table(title, ("Term", f"HR ({level:.0%} CI)", "p"), rows, tuple(notes)))
    for key, sub in nested:
        blocks += _model_blocks(f"{title}: {key.replace('_', ' ')}", sub, level)
    return blocks


def _hr_rows(hazard_ratios: Mapping[str, Any]) -> tuple[Row, ...]:
    rows = []
    labels = (
        ("unadjusted_fixed_group", "Unadjusted, group fixed at ICB initiation"),
        ("unadjusted_time_varying", "Unadjusted, dupilumab exposure time-varying"),
        ("adjusted", "Primary: adjusted, dupilumab time-varying (model below)"),
        ("adjusted_matched_sets", "Adjusted, stratified by matched set (model below)"),
        ("adjusted_fixed_group", "Sensitivity: adjusted, group fixed at ICB initiation (below)"),
    )
    for key, label in labels:
        hr = hazard_ratios.get(key)
        if not isinstance(hr, Mapping):
            continue
        estimate, p = _hr_cell(hr)
        robust = hr.get("robust")
        robust_ci = (
            with_ci(hr.get("hr"), robust.get("ci_lower"), robust.get("ci_upper"))
            if isinstance(robust, Mapping) and hr.get("hr") is not None
            else DASH
        )
        rows.append(Row((label, estimate, robust_ci, p)))
    return tuple(rows)


# -- sections --------------------------------------------------------------------------------------


def _comparison_section(
    control: str, body: Mapping[str, Any], level: float, months: Sequence[int]
) -> Section:
    comparison = body["comparisons"][control]
    matching = body["matching"].get(control) or {}
    versus = comparison["label"]
    groups = comparison["groups"]
    outcome_rows = []
    for g in ("dupilumab", control):
        data = groups[g]
        km = data["km"]
        ci = km["median_ci"]
        median = (
            with_ci(km.get("median_months"), ci.get("lower_months"), ci.get("upper_months"), 1)
            if km.get("median_reached")
            else "not reached"
        )
        follow = data["follow_up"]
        landmarks = [
            with_ci(
                100 * t["survival"] if t.get("survival") is not None else None,
                100 * t["ci_lower"] if t.get("ci_lower") is not None else None,
                100 * t["ci_upper"] if t.get("ci_upper") is not None else None,
                1,
            )
            for t in km.get("timepoints") or ()
        ]
        outcome_rows.append(
            Row(
                (
                    data["label"],
                    count(data["n"]),
                    count(data["deaths"]),
                    num(follow.get("median_months"), 1),
                    median,
                    *landmarks,
                )
            )
        )
    log_rank = comparison["log_rank"]
    blocks: list[Block] = [
        Paragraph(
            f"Matching 1:{matching.get('settings', {}).get('ratio', DASH)}: {count(matching.get('cases'))} "
            f"dupilumab cases, {count(matching.get('sets'))} matched sets, "
            f"{count(matching.get('matched_controls'))} matched controls; "
            f"{len(matching.get('unmatched_cases') or ())} cases without a control, "
            f"{len(matching.get('partially_matched_cases') or ())} with fewer controls than the ratio."
            if matching.get("estimable", True)
            else f"Not matched: {matching.get('reason')}."
        ),
        Table(
            f"Overall survival in the matched population ({level:.0%} CI)",
            (
                "Group",
                "n",
                "Deaths",
                "Median follow-up, months",
                "Median OS, months",
                *(f"OS at {m} months, %" for m in months),
            ),
            tuple(outcome_rows),
            (
                "Median follow-up by reverse Kaplan–Meier (alive at the last data point is the "
                "event, a death censors).",
                f"Log-rank test: χ² = {num(log_rank.get('statistic'), 3)}, 1 df, p = "
                f"{p_value(log_rank.get('p'))}.",
            ),
        ),
        Table(
            "Dupilumab hazard ratios for death",
            ("Model", f"HR ({level:.0%} CI)", "Robust CI, clustered on matched set", "p"),
            _hr_rows(comparison["hazard_ratios"]),
            (
                "Unadjusted, group fixed: the group is defined by events after ICB initiation "
                "(immortal-time bias in favour of dupilumab). Time-varying: exposure from the "
                "first dose, free of that bias.",
            ),
        ),
        *(
            block
            for model in (body["cox"].get(control) or {}).values()
            if _is_model(model)
            for block in _model_blocks(f"{model.get('label')}, {versus}", model, level)
        ),
        Figure(
            f"os_matched_{control}",
            f"Overall survival from ICB initiation, matched population: {versus}; numbers at risk below",
        ),
    ]
    return Section(f"Matched comparison: {versus}", tuple(blocks))


def _description_section(body: Mapping[str, Any]) -> Section:
    d = body["cirae_description"]
    cirae = ("dupilumab", "control_1")
    labels = tuple(group_label(g) for g in cirae)
    n = d["n"]
    terms = Table(
        "Index cirAE: term",
        ("Term", *(f"{label} (n = {n[g]})" for label, g in zip(labels, cirae, strict=True))),
        tuple(Row((t["term"], *(percent(t[g], n[g]) for g in cirae))) for t in d["terms"]),
    )
    grades = Table(
        "Index cirAE: worst CTCAE grade",
        ("Grade", *labels),
        tuple(
            Row(
                (
                    "Ungraded" if g["grade"] == "ungraded" else f"Grade {g['grade']}",
                    *(percent(g[k], n[k]) for k in cirae),
                )
            )
            for g in d["grades"]
        ),
        (_sentence(d["grade_definition"]),),
    )
    timing = Table(
        "Timing, days: median [Q1, Q3] (n)",
        ("Interval", *labels),
        (
            Row(
                (
                    "ICB initiation to cirAE onset",
                    *(median_iqr(d["days_icb_to_onset"][g]) for g in cirae),
                )
            ),
            Row(("cirAE onset to first dupilumab", median_iqr(d["days_onset_to_dupilumab"]), DASH)),
            Row(("Dupilumab duration", median_iqr(d["dupilumab_duration_days"]), DASH)),
            Row(
                (
                    "cirAE onset to resolution",
                    *(median_iqr(d["days_onset_to_resolution"][g]) for g in cirae),
                )
            ),
        ),
        (
            f"Dupilumab duration: {d['dupilumab_duration_days']['definition']}.",
            f"Resolution date: {d['resolution_date_definition']}; resolved without a date: "
            + ", ".join(
                f"{group_label(g)} {d['days_onset_to_resolution'][g]['resolved_without_date']}"
                for g in cirae
            )
            + ".",
        ),
    )
    resolution = Table(
        "Resolution of the index cirAE",
        ("Resolution", *labels),
        tuple(
            Row((label, *(percent(d["resolution"][g][key], n[g]) for g in cirae)))
            for key, label in (("complete", "Complete"), ("partial", "Partial"), ("none", "None"))
        ),
        (
            "Overall complete or partial resolution: "
            + with_ci(
                _pct(body["resolution"]["overall"].get("rate")),
                _pct(body["resolution"]["overall"].get("ci_lower")),
                _pct(body["resolution"]["overall"].get("ci_upper")),
                1,
            )
            + " % (exact CI).",
        ),
    )
    gc = body["glucocorticoids"]
    by_group = gc["by_group"]
    gc_table = Table(
        "Systemic glucocorticoid exposure",
        ("", *(group_label(g) for g in GROUPS)),
        (
            Row(("Exposed", *(percent(by_group[g]["exposed"], by_group[g]["n"]) for g in GROUPS))),
            Row(
                (
                    "Days from ICB initiation to first exposure",
                    *(median_iqr(by_group[g]["days_icb_to_first_exposure"]) for g in GROUPS),
                )
            ),
            Row(
                (
                    "First exposure before cirAE onset",
                    *(count(by_group[g].get("before_cirae_onset")) for g in GROUPS),
                )
            ),
            Row(
                (
                    "First exposure on or after cirAE onset",
                    *(count(by_group[g].get("on_or_after_cirae_onset")) for g in GROUPS),
                )
            ),
        ),
        (_sentence(gc["definition"]),),
    )
    return Section(
        "Cutaneous irAEs and glucocorticoids", (terms, grades, timing, resolution, gc_table)
    )


def _sentence(text: str) -> str:
    """Text as a sentence: first letter up, a full stop at the end (the rest as written)."""
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _pct(value: Any) -> float | None:
    return 100 * value if isinstance(value, int | float) else None


def _methods(protocol: CohortProtocol) -> Section:
    c = protocol.cohort
    m = c.matching
    return Section(
        "Methods",
        (
            Paragraph(
                "Time origin: ICB initiation (the first administration or order of a PD-1, PD-L1 "
                "or CTLA-4 inhibitor). Groups: Dupilumab (dupilumab first given on or after the "
                "cirAE onset); cirAE, no dupilumab; No cirAE (the controls never received "
                "dupilumab; other dupilumab users are excluded with the reason)."
            ),
            Paragraph(
                f"Matching 1:{m.ratio} of each control group to the dupilumab cases, exact on "
                f"{', '.join(m.exact).replace('icb_type', 'ICB type')}; calipers age ±{m.calipers.age_years} "
                f"years, Charlson ±{m.calipers.charlson}, year of ICB initiation "
                f"±{m.calipers.icb_year}; greedy nearest neighbour without replacement."
            ),
            Paragraph(
                "Cox proportional hazards for overall survival on (start, stop] intervals. "
                "Primary model: dupilumab exposure time-varying from its first dose (no immortal "
                "time credited to it) and systemic glucocorticoid exposure within "
                f"{c.glucocorticoid.window_years} years time-varying from the first day of a "
                f"course (a course covers at least {c.glucocorticoid.min_course_days} days: a "
                "single-day dose is not one), adjusted for "
                + ", ".join(_ADJUSTMENT.get(a, a) for a in c.adjustment)
                + "; Efron ties; "
                f"at least {c.min_events_per_parameter} deaths per parameter. Beside it: the "
                "same model stratified by matched set, the time-varying dupilumab term alone, "
                "and, as a sensitivity analysis, the group fixed at ICB initiation (which "
                "carries immortal-time bias in favour of dupilumab)."
            ),
        ),
    )


def cirae_document(
    protocol: CohortProtocol,
    body: Mapping[str, Any],
    flow: ConsortFlow,
    table1: BalanceTable,
) -> ReportDocument:
    """The cirAE cohort's report."""
    level = float(protocol.cohort.confidence_level)
    months = protocol.cohort.survival_timepoints_months
    groups = body["groups"]
    survival = body["survival"]
    km_rows = tuple(
        Row(
            (
                group_label(g),
                count(groups[g]),
                count(survival[g]["events"]),
                with_ci(
                    survival[g].get("median_months"),
                    survival[g]["median_ci"].get("lower_months"),
                    survival[g]["median_ci"].get("upper_months"),
                    1,
                )
                if survival[g].get("median_reached")
                else "not reached",
            )
        )
        for g in GROUPS
    )
    sections = (
        Section("Flow of patients", (FlowBlock(flow),)),
        Section(
            "Table 1. Baseline characteristics",
            tuple(_table1(p, table1.threshold) for p in table1.panels),
        ),
        _description_section(body),
        *(_comparison_section(c, body, level, months) for c in CONTROLS),
        Section(
            "Overall survival by group, all analysed subjects",
            (
                Table(
                    f"Kaplan–Meier estimates from ICB initiation ({level:.0%} CI)",
                    ("Group", "n", "Deaths", "Median OS, months"),
                    km_rows,
                ),
                Figure(
                    "os", "Overall survival from ICB initiation by group; numbers at risk below"
                ),
            ),
        ),
        _methods(protocol),
    )
    return ReportDocument(
        protocol.title,
        tuple(Section(s.heading, tuple(_in_words(b) for b in s.blocks)) for s in sections),
        (
            "Months are 365.25 / 12 days. Kaplan–Meier intervals: log(−log) (exponential Greenwood).",
        ),
    )
