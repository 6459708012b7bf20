"""Baseline characteristics by group with standardized mean differences (Table 1; pure).

Definitions (each also stated in the table's `methods`):

* Continuous variable: n, missing, mean, sample SD (n − 1), median, quartiles (linear
  interpolation, R's type 7) and range over the recorded values; a missing value is left out.
  SMD = (mean₁ − mean₂) / √((s₁² + s₂²) / 2), signed (first group minus second).
* Categorical variable: count and proportion of each level; a missing value is its own level
  ("unknown"), as the Cox models treat it. Per-level SMD = (p₁ − p₂) / √((p₁(1 − p₁) +
  p₂(1 − p₂)) / 2), signed. The variable's SMD is the multi-level one of Yang & Dalton (SAS
  Global Forum 2012, paper 335; what R's `tableone` reports): √((T − C)ᵀ S⁻¹ (T − C)) over the
  levels seen in either group but the first, S the pooled multinomial covariance
  (S_kk = (p₁ₖ(1 − p₁ₖ) + p₂ₖ(1 − p₂ₖ)) / 2, S_kl = −(p₁ₖp₁ₗ + p₂ₖp₂ₗ) / 2), inverted with
  the Moore–Penrose inverse like `tableone` (MASS::ginv). It is ≥ 0, and equals |per-level
  SMD| for a two-level variable.
* Balance: |SMD| < threshold (0.1 by convention) is reported per variable, never enforced.
* Not computable (an empty group, fewer than two values for an SD, zero variance with different
  means): the SMD is None with the reason.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")
Kind = Literal["continuous", "categorical"]
UNKNOWN = "unknown"
DEFAULT_THRESHOLD = 0.1

METHODS: Mapping[str, str] = {
    "continuous": "mean, SD (n − 1), median and quartiles (R type 7) of recorded values; "
    "SMD = (mean₁ − mean₂) / √((s₁² + s₂²) / 2)",
    "categorical": "count and % of each level (missing = its own level 'unknown'); per-level "
    "SMD = (p₁ − p₂) / √((p₁(1 − p₁) + p₂(1 − p₂)) / 2); the variable's SMD is the multi-level "
    "SMD of Yang & Dalton (2012), as R's tableone reports it (≥ 0; = |per-level SMD| for two "
    "levels)",
    "balance": "|SMD| below the threshold is reported as balanced; it is not enforced",
}


@dataclass(frozen=True, slots=True)
class Variable(Generic[T]):
    """One row of the table: how to read it from a record and how to show its levels."""

    name: str
    label: str
    kind: Kind
    value: Callable[[T], float | str | None]
    level_labels: Mapping[str, str] = field(default_factory=dict)
    level_order: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class GroupData(Generic[T]):
    """One column: a group's key, its human label and its records."""

    key: str
    label: str
    records: Sequence[T]


@dataclass(frozen=True, slots=True)
class Comparison:
    """A pair of group columns an SMD is computed for (first minus second)."""

    key: str
    label: str
    first: str
    second: str


@dataclass(frozen=True, slots=True)
class ContinuousSummary:
    """A continuous variable in one group (None where not computable)."""

    n: int
    missing: int
    mean: float | None
    sd: float | None
    median: float | None
    q1: float | None
    q3: float | None
    minimum: float | None
    maximum: float | None


@dataclass(frozen=True, slots=True)
class LevelCount:
    """One level of a categorical variable in one group."""

    level: str
    label: str
    n: int
    proportion: float | None


@dataclass(frozen=True, slots=True)
class Smd:
    """A standardized mean difference of one variable for one comparison."""

    comparison: str
    value: float | None
    per_level: tuple[tuple[str, float | None], ...]
    balanced: bool | None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class BalanceRow:
    """One variable across the groups of a panel, with its SMD per comparison."""

    name: str
    label: str
    kind: Kind
    levels: tuple[tuple[str, str], ...]  # (level, label), categorical only
    continuous: tuple[ContinuousSummary, ...]  # per group, continuous only
    categorical: tuple[tuple[LevelCount, ...], ...]  # per group, categorical only
    smds: tuple[Smd, ...]


@dataclass(frozen=True, slots=True)
class GroupColumn:
    """A group as the table heads it."""

    key: str
    label: str
    n: int


@dataclass(frozen=True, slots=True)
class BalancePanel:
    """One population (before matching, or one matched comparison) and its rows."""

    key: str
    title: str
    groups: tuple[GroupColumn, ...]
    comparisons: tuple[Comparison, ...]
    rows: tuple[BalanceRow, ...]


@dataclass(frozen=True, slots=True)
class BalanceTable:
    """Table 1: the panels, the balance threshold and how every number was computed."""

    title: str
    panels: tuple[BalancePanel, ...]
    threshold: float = DEFAULT_THRESHOLD
    methods: Mapping[str, str] = field(default_factory=lambda: dict(METHODS))


# -- SMDs -------------------------------------------------------------------------------------------


def _sd(values: Sequence[float]) -> float | None:
    """Sample SD (n − 1); None below two values."""
    import numpy as np  # where used: numpy stays out of a server's start-up

    if len(values) < 2:
        return None
    return float(np.std(np.asarray(values, dtype=float), ddof=1))


def smd_continuous(
    first: Sequence[float], second: Sequence[float]
) -> tuple[float | None, str | None]:
    """(mean₁ − mean₂) / √((s₁² + s₂²) / 2), or None with the reason it is not computable."""
    import numpy as np  # where used: numpy stays out of a server's start-up

    if not first or not second:
        return None, "an empty group"
    s1, s2 = _sd(first), _sd(second)
    if s1 is None or s2 is None:
        return None, "fewer than two recorded values in a group"
    diff = float(np.mean(first)) - float(np.mean(second))
    pooled = math.sqrt((s1**2 + s2**2) / 2)
    if pooled == 0:
        return (0.0, None) if diff == 0 else (None, "no variance in either group")
    return diff / pooled, None


def smd_level(p1: float, p2: float) -> float | None:
    """Per-level SMD (p₁ − p₂) / √((p₁(1 − p₁) + p₂(1 − p₂)) / 2); None when undefined."""
    pooled = math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / 2)
    if pooled == 0:
        return 0.0 if p1 == p2 else None
    return (p1 - p2) / pooled


def smd_categorical(p1: Sequence[float], p2: Sequence[float]) -> float:
    """Yang & Dalton's multi-level SMD of two level-proportion vectors (same level order)."""
    import numpy as np  # where used: numpy stays out of a server's start-up

    seen = [i for i in range(len(p1)) if p1[i] > 0 or p2[i] > 0]
    if len(seen) < 2:
        return 0.0
    t = np.asarray([p1[i] for i in seen[1:]], dtype=float)
    c = np.asarray([p2[i] for i in seen[1:]], dtype=float)
    s = -(np.outer(t, t) + np.outer(c, c)) / 2
    np.fill_diagonal(s, (t * (1 - t) + c * (1 - c)) / 2)
    d = t - c
    value = float(d @ np.linalg.pinv(s) @ d)
    return math.sqrt(max(value, 0.0))


# -- summaries --------------------------------------------------------------------------------------


def _numbers(variable: Variable[T], records: Sequence[T]) -> tuple[list[float], int]:
    """The recorded numeric values and how many are missing."""
    values: list[float] = []
    missing = 0
    for r in records:
        v = variable.value(r)
        if v is None or isinstance(v, str) or not math.isfinite(float(v)):
            missing += 1
        else:
            values.append(float(v))
    return values, missing


def continuous_summary(values: Sequence[float], missing: int) -> ContinuousSummary:
    """n, missing, mean, SD, median, quartiles and range of the recorded values."""
    import numpy as np  # where used: numpy stays out of a server's start-up

    if not values:
        return ContinuousSummary(0, missing, None, None, None, None, None, None, None)
    array = np.asarray(values, dtype=float)
    q1, median, q3 = (float(q) for q in np.percentile(array, [25, 50, 75]))
    return ContinuousSummary(
        n=len(values),
        missing=missing,
        mean=float(array.mean()),
        sd=_sd(values),
        median=median,
        q1=q1,
        q3=q3,
        minimum=float(array.min()),
        maximum=float(array.max()),
    )


def _level(value: float | str | None) -> str:
    """A categorical value as its level key; missing is the level 'unknown'."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return UNKNOWN
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _tally(variable: Variable[T], records: Sequence[T]) -> Counter[str]:
    """Records per level: the raw values counted first (keyed by type too, so True and 1 stay
    apart), then each distinct value turned into its level once."""
    raw = Counter((type(v), v) for v in map(variable.value, records))
    tally: Counter[str] = Counter()
    for (_, value), n in raw.items():
        tally[_level(value)] += n
    return tally


def _levels(variable: Variable[T], tallies: Sequence[Counter[str]]) -> list[str]:
    """Every level seen in the panel: the variable's order first, then alphabetical, unknown last."""
    seen = {level for tally in tallies for level in tally}
    ordered = [lv for lv in variable.level_order if lv in seen]
    rest = sorted(seen - set(ordered) - {UNKNOWN})
    return ordered + rest + ([UNKNOWN] if UNKNOWN in seen and UNKNOWN not in ordered else [])


def _level_label(variable: Variable[T], level: str) -> str:
    return variable.level_labels.get(level, "Unknown" if level == UNKNOWN else level)


def _proportions(counts: Sequence[int]) -> list[float] | None:
    total = sum(counts)
    return [c / total for c in counts] if total else None


def _categorical_smd(
    comparison: Comparison,
    levels: Sequence[str],
    by_group: Mapping[str, list[int]],
    threshold: float,
) -> Smd:
    """The multi-level and per-level SMDs of one comparison."""
    p1, p2 = _proportions(by_group[comparison.first]), _proportions(by_group[comparison.second])
    if p1 is None or p2 is None:
        return Smd(comparison.key, None, (), None, "an empty group")
    value = smd_categorical(p1, p2)
    per_level = tuple((lv, smd_level(a, b)) for lv, a, b in zip(levels, p1, p2, strict=True))
    return Smd(comparison.key, value, per_level, abs(value) < threshold)


def _row(
    variable: Variable[T],
    groups: Sequence[GroupData[T]],
    comparisons: Sequence[Comparison],
    threshold: float,
) -> BalanceRow:
    """One variable's summaries per group and SMD per comparison."""
    if variable.kind == "continuous":
        numbers = {g.key: _numbers(variable, g.records) for g in groups}
        smds = []
        for c in comparisons:
            value, reason = smd_continuous(numbers[c.first][0], numbers[c.second][0])
            balanced = abs(value) < threshold if value is not None else None
            smds.append(Smd(c.key, value, (), balanced, reason))
        return BalanceRow(
            variable.name,
            variable.label,
            "continuous",
            (),
            tuple(continuous_summary(*numbers[g.key]) for g in groups),
            (),
            tuple(smds),
        )
    tallies = [_tally(variable, g.records) for g in groups]
    levels = _levels(variable, tallies)
    by_group: dict[str, list[int]] = {}
    tables: list[tuple[LevelCount, ...]] = []
    for g, tally in zip(groups, tallies, strict=True):
        counts = [tally.get(lv, 0) for lv in levels]
        by_group[g.key] = counts
        total = len(g.records)
        tables.append(
            tuple(
                LevelCount(lv, _level_label(variable, lv), n, n / total if total else None)
                for lv, n in zip(levels, counts, strict=True)
            )
        )
    return BalanceRow(
        variable.name,
        variable.label,
        "categorical",
        tuple((lv, _level_label(variable, lv)) for lv in levels),
        (),
        tuple(tables),
        tuple(_categorical_smd(c, levels, by_group, threshold) for c in comparisons),
    )


def balance_panel(
    key: str,
    title: str,
    groups: Sequence[GroupData[T]],
    comparisons: Sequence[Comparison],
    variables: Sequence[Variable[T]],
    threshold: float = DEFAULT_THRESHOLD,
) -> BalancePanel:
    """One panel of Table 1: every variable summarised per group, with SMDs per comparison."""
    keys = {g.key for g in groups}
    unknown = [c.key for c in comparisons if c.first not in keys or c.second not in keys]
    if unknown:
        raise ValueError(f"comparisons name groups not in the panel: {unknown}")
    return BalancePanel(
        key=key,
        title=title,
        groups=tuple(GroupColumn(g.key, g.label, len(g.records)) for g in groups),
        comparisons=tuple(comparisons),
        rows=tuple(_row(v, groups, comparisons, threshold) for v in variables),
    )


# -- JSON (the form stored with a cohort snapshot and served under outcomes.table1) --------------

_SMD_DECIMALS = 6


def _round(value: float | None) -> float | None:
    return round(value, _SMD_DECIMALS) if value is not None else None


def _continuous_json(c: ContinuousSummary) -> dict[str, Any]:
    return {
        "n": c.n,
        "missing": c.missing,
        **{
            k: _round(getattr(c, k))
            for k in ("mean", "sd", "median", "q1", "q3", "minimum", "maximum")
        },
    }


def _smd_json(smd: Smd) -> dict[str, Any]:
    return {
        "value": _round(smd.value),
        "balanced": smd.balanced,
        "per_level": {level: _round(v) for level, v in smd.per_level},
        "reason": smd.reason,
    }


def _row_json(row: BalanceRow, panel: BalancePanel) -> dict[str, Any]:
    by_group: dict[str, Any] = {}
    for i, group in enumerate(panel.groups):
        if row.kind == "continuous":
            by_group[group.key] = _continuous_json(row.continuous[i])
        else:
            by_group[group.key] = [
                {"level": c.level, "label": c.label, "n": c.n, "proportion": _round(c.proportion)}
                for c in row.categorical[i]
            ]
    return {
        "name": row.name,
        "label": row.label,
        "kind": row.kind,
        "by_group": by_group,
        "smd": {s.comparison: _smd_json(s) for s in row.smds},
    }


def table_to_json(t: BalanceTable) -> dict[str, Any]:
    """Table 1: baseline characteristics per panel and group, SMDs per comparison (6 decimals)."""
    return {
        "title": t.title,
        "threshold": t.threshold,
        "methods": dict(t.methods),
        "panels": [
            {
                "key": p.key,
                "title": p.title,
                "groups": [{"key": g.key, "label": g.label, "n": g.n} for g in p.groups],
                "comparisons": [
                    {"key": c.key, "label": c.label, "first": c.first, "second": c.second}
                    for c in p.comparisons
                ],
                "rows": [_row_json(r, p) for r in p.rows],
            }
            for p in t.panels
        ],
    }
