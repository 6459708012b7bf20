"""The cirAE analysis as the JSON body of its cohort outcomes (plain data, no NaN, no inf).

The study kind's `cohort_report` hands this body to the API (the per-subject listing is served
apart, `listing.py`); the typed results it is made from are in `results.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.studies.cirae.protocol import Matching
from service.studies.cirae.records import CirAESubject
from service.studies.cirae.results import (
    MODEL_NAMES,
    CirAEAnalysis,
    Comparison,
    CoxFit,
    PhCheck,
    PhTest,
    Proportion,
    ResolutionSummary,
    TermEstimate,
)

CONTROL_GROUPS = ("control_1", "control_2")


def term_json(term: TermEstimate) -> dict[str, Any]:
    """An estimable term's numbers, or only why it is not estimable."""
    if not term.estimable:
        return {"estimable": False, "reason": term.reason}
    return {
        "estimable": True,
        "hr": term.hr,
        "ci_lower": term.ci_lower,
        "ci_upper": term.ci_upper,
        "log_hr": term.log_hr,
        "se_log_hr": term.se_log_hr,
        "p": term.p,
    }


def _ph_test_json(test: PhTest) -> dict[str, Any]:
    return {"statistic": test.statistic, "df": test.df, "p": test.p}


def ph_check_json(check: PhCheck) -> dict[str, Any]:
    """The proportional-hazards check, or why it was not run."""
    base: dict[str, Any] = {"method": check.method, "alpha": check.alpha}
    if not check.available:
        return {**base, "available": False, "reason": check.reason}
    return {
        **base,
        "available": True,
        "terms": {t: _ph_test_json(r) for t, r in check.terms.items()},
        "global": _ph_test_json(check.global_test) if check.global_test else None,
        "terms_flagged": list(check.terms_flagged),
        "verdict": check.verdict,
    }


def _method(fit: CoxFit) -> dict[str, Any]:
    """How the model was built, in words next to its numbers."""
    spec = fit.spec
    time_varying = ["dupilumab"] if spec.dupilumab == "time_varying" else []
    if spec.glucocorticoid:
        time_varying.append("glucocorticoid")
    return {
        "design": spec.design,
        "dupilumab_coding": spec.dupilumab,
        "stratified_by": "matched set" if spec.stratified_by_matched_set else None,
        "time_origin": "ICB initiation",
        "time_varying": time_varying,
        "coding": "0 up to the day a time-varying covariate switches on (its first dose or "
        "course day), 1 after it (a death on that day counts as unexposed)",
        "adjustment": list(fit.adjustment),
        "reference_level_rule": "most frequent level in the model population "
        "(ties: alphabetical first); a missing category is the level 'unknown'",
        "ties": "Efron",
    }


def cox_fit_json(fit: CoxFit) -> dict[str, Any]:
    """One model: its name, label and role, what it was fitted on, and its terms or why not."""
    out: dict[str, Any] = {
        "model": fit.spec.name,
        "label": fit.spec.label,
        "role": fit.spec.role,
        "method": _method(fit),
        "n_subjects": fit.n_subjects,
        "n_events": fit.n_events,
        "excluded_subjects": [
            {"subject_id": e.subject_id, "reason": e.reason} for e in fit.excluded_subjects
        ],
        "estimable": fit.estimable,
        "reason": fit.reason,
    }
    if not fit.estimable:
        return out
    return {
        **out,
        "n_rows": fit.n_rows,
        "n_strata": fit.n_strata,
        "reference_levels": dict(fit.reference_levels),
        "dropped_terms": [{"term": d.term, "reason": d.reason} for d in fit.dropped_terms],
        "n_parameters": fit.n_parameters,
        "min_events_per_parameter": fit.min_events_per_parameter,
        "dupilumab": term_json(fit.dupilumab) if fit.dupilumab else None,
        "glucocorticoid": term_json(fit.glucocorticoid) if fit.glucocorticoid else None,
        "covariates": {t: term_json(r) for t, r in fit.covariates.items()},
        "caveats": list(fit.caveats),
        "ph_check": ph_check_json(fit.ph_check) if fit.ph_check else None,
    }


def matching_settings_json(settings: Matching) -> dict[str, Any]:
    """The matching settings as plain JSON numbers (the protocol keeps the age caliper a Decimal)."""
    return {
        "ratio": settings.ratio,
        "exact": list(settings.exact),
        "calipers": {
            "age_years": float(settings.calipers.age_years),
            "charlson": settings.calipers.charlson,
            "icb_year": settings.calipers.icb_year,
        },
        "method": settings.method,
    }


def matching_json(comparison: Comparison, settings: Matching) -> dict[str, Any]:
    """What the matching did: sets (numbered), matched controls, and cases it could not serve."""
    result = comparison.matching
    if not comparison.estimable or result is None:
        return {
            "control_group": comparison.control_group,
            "estimable": False,
            "reason": comparison.reason,
        }
    sets = [s for s in result.sets if s.controls]
    return {
        "control_group": result.control_group,
        "settings": matching_settings_json(settings),
        "cases": comparison.n_cases,
        "sets": len(sets),
        "matched_controls": sum(len(s.controls) for s in sets),
        "unmatched_cases": sorted(result.unmatched_cases),
        "partially_matched_cases": sorted(result.partially_matched),
        "matched_sets": [
            {"set": comparison.matched_set[s.case], "case": s.case, "controls": list(s.controls)}
            for s in sets
        ],
        "estimable": True,
    }


def proportion_json(p: Proportion) -> dict[str, Any]:
    """A rate with its exact CI (and why there is none, for an empty denominator)."""
    out: dict[str, Any] = {
        "successes": p.successes,
        "n": p.n,
        "rate": p.rate,
        "ci_lower": p.ci_lower,
        "ci_upper": p.ci_upper,
        "level": p.level,
        "method": p.method,
    }
    return {**out, "reason": p.reason} if p.reason is not None else out


def resolution_json(summary: ResolutionSummary) -> dict[str, Any]:
    """Resolution categories and rates, overall and per cirAE group."""
    return {
        "definition": summary.definition,
        "categories": dict(summary.categories),
        "overall": proportion_json(summary.overall),
        "by_group": {g: proportion_json(p) for g, p in summary.by_group.items()},
    }


def km_groups_json(subjects: Sequence[CirAESubject]) -> list[dict[str, Any]]:
    """Per-group OS data (days from ICB initiation, death flags) for the Kaplan–Meier plot."""
    out = []
    for g in ("dupilumab", "control_1", "control_2"):
        members = sorted((s for s in subjects if s.group == g), key=lambda s: s.subject_id)
        out.append(
            {
                "label": g,
                "durations_days": [s.os_days for s in members],
                "events": [s.died for s in members],
            }
        )
    return out


def outcomes_json(analysis: CirAEAnalysis) -> dict[str, Any]:
    """Everything the cirAE study reports, as JSON-safe data."""
    return {
        "protocol": {"id": analysis.protocol_id, "version": analysis.protocol_version},
        "confidence_level": analysis.confidence_level,
        "groups": dict(analysis.groups),
        "resolution": resolution_json(analysis.resolution),
        "matching": {
            g: matching_json(c, analysis.matching_settings) for g, c in analysis.comparisons.items()
        },
        "cox": {
            g: {name: cox_fit_json(c.models[name]) for name in MODEL_NAMES}
            for g, c in analysis.comparisons.items()
        },
        "survival": {g: dict(s) for g, s in analysis.survival.items()},
        "km_groups": km_groups_json(analysis.subjects),
    }
