"""A study report as typed blocks (sections, paragraphs, tables, figures, the flow), kind-neutral.

A study kind says what its report holds; api/ decides the markup (report.html) and escapes every
text. Figures name one of the study's plots, which the reader renders; nothing here is HTML.
Cells are plain strings already formatted for a reader (numbers, CIs, p-values: see the helpers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from service.studies.flow import ConsortFlow


@dataclass(frozen=True, slots=True)
class Paragraph:
    """Running text."""

    text: str


@dataclass(frozen=True, slots=True)
class Row:
    """A table row: a heading row (a variable's name) or a data row, indented under a heading."""

    cells: tuple[str, ...]
    heading: bool = False
    indent: bool = False


@dataclass(frozen=True, slots=True)
class Table:
    """A captioned table with one header row and footnotes."""

    caption: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Figure:
    """One of the study's plots (by name) and its caption."""

    plot: str
    caption: str


@dataclass(frozen=True, slots=True)
class FlowBlock:
    """The CONSORT-style flow of patients."""

    flow: ConsortFlow


@dataclass(frozen=True, slots=True)
class Section:
    """A titled part of the report; sections nest."""

    heading: str
    blocks: tuple[Block, ...]


Block = Paragraph | Table | Figure | FlowBlock | Section


@dataclass(frozen=True, slots=True)
class ReportDocument:
    """A whole report: its title, sections and closing notes."""

    title: str
    sections: tuple[Section, ...]
    notes: tuple[str, ...] = ()


def figures_of(blocks: tuple[Block, ...]) -> list[str]:
    """Every plot the blocks show, in order, each once."""
    found: list[str] = []
    for block in blocks:
        names = figures_of(block.blocks) if isinstance(block, Section) else []
        if isinstance(block, Figure):
            names = [block.plot]
        found += [n for n in names if n not in found]
    return found


# -- formatting ------------------------------------------------------------------------------------

DASH = "–"


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def num(value: Any, digits: int = 1) -> str:
    """A number to `digits` decimals; missing as an en dash."""
    number = _finite(value)
    return DASH if number is None else f"{number:.{digits}f}"


def count(value: Any) -> str:
    """A count; missing as an en dash."""
    number = _finite(value)
    return DASH if number is None else str(int(number))


def percent(n: Any, total: Any) -> str:
    """'n (p %)' with one decimal; a zero total shows the count alone."""
    k, t = _finite(n), _finite(total)
    if k is None:
        return DASH
    if not t:
        return str(int(k))
    return f"{int(k)} ({100 * k / t:.1f} %)"


def with_ci(estimate: Any, lower: Any, upper: Any, digits: int = 2) -> str:
    """'estimate (lower–upper)'; a missing bound shows as 'NR' (not reached)."""
    if _finite(estimate) is None:
        return DASH
    lo = num(lower, digits) if _finite(lower) is not None else "NR"
    hi = num(upper, digits) if _finite(upper) is not None else "NR"
    return f"{num(estimate, digits)} ({lo}{DASH}{hi})"


def p_value(p: Any) -> str:
    """A p-value to 3 decimals, '< 0.001' below it."""
    number = _finite(p)
    if number is None:
        return DASH
    return "< 0.001" if number < 0.001 else f"{number:.3f}"


def median_iqr(summary: Any) -> str:
    """'median [Q1, Q3] (n = k)' from a summary mapping; a dash without values."""
    if not isinstance(summary, dict) or not summary.get("n"):
        return DASH
    return (
        f"{num(summary.get('median'), 1)} [{num(summary.get('q1'), 1)}, "
        f"{num(summary.get('q3'), 1)}] (n = {summary['n']})"
    )
