"""A study report as typed blocks (sections, paragraphs, tables, figures, the flow), kind-neutral.

A study kind says what its report holds; api/ decides the markup (report.html) and escapes every
text. Figures name one of the study's plots, which the reader renders; nothing here is HTML.
Cells are plain strings already formatted for a reader (numbers, CIs, p-values: see the helpers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from service.studies.flow import ConsortFlow, FlowBox, FlowCount, FlowStage


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


# -- stored form (a snapshot keeps the document; report.html renders it when read) -------------------


def flow_to_json(flow: ConsortFlow) -> dict[str, Any]:
    """A flow as JSON: stages of boxes, each with its exclusions and additions by reason."""

    def box(b: FlowBox) -> dict[str, Any]:
        return {
            "key": b.key,
            "label": b.label,
            "n": b.n,
            "definition": b.definition,
            "excluded": [{"reason": c.reason, "n": c.n} for c in b.excluded],
            "added": [{"reason": c.reason, "n": c.n} for c in b.added],
        }

    return {
        "title": flow.title,
        "stages": [
            {"key": s.key, "label": s.label, "boxes": [box(b) for b in s.boxes]}
            for s in flow.stages
        ],
        "notes": list(flow.notes),
    }


def flow_from_json(found: dict[str, Any]) -> ConsortFlow:
    """The flow `flow_to_json` wrote."""

    def box(b: dict[str, Any]) -> FlowBox:
        return FlowBox(
            b["key"],
            b["label"],
            int(b["n"]),
            b["definition"],
            tuple(FlowCount(c["reason"], int(c["n"])) for c in b["excluded"]),
            tuple(FlowCount(c["reason"], int(c["n"])) for c in b["added"]),
        )

    return ConsortFlow(
        found["title"],
        tuple(
            FlowStage(s["key"], s["label"], tuple(box(b) for b in s["boxes"]))
            for s in found["stages"]
        ),
        tuple(found["notes"]),
    )


def _block_to_json(block: Block) -> dict[str, Any]:
    if isinstance(block, Paragraph):
        return {"type": "paragraph", "text": block.text}
    if isinstance(block, Table):
        return {
            "type": "table",
            "caption": block.caption,
            "columns": list(block.columns),
            "rows": [
                {"cells": list(r.cells), "heading": r.heading, "indent": r.indent}
                for r in block.rows
            ],
            "notes": list(block.notes),
        }
    if isinstance(block, Figure):
        return {"type": "figure", "plot": block.plot, "caption": block.caption}
    if isinstance(block, FlowBlock):
        return {"type": "flow", "flow": flow_to_json(block.flow)}
    return {
        "type": "section",
        "heading": block.heading,
        "blocks": [_block_to_json(b) for b in block.blocks],
    }


def _block_from_json(found: dict[str, Any]) -> Block:
    kind = found["type"]
    if kind == "paragraph":
        return Paragraph(found["text"])
    if kind == "table":
        rows = tuple(
            Row(tuple(r["cells"]), bool(r["heading"]), bool(r["indent"])) for r in found["rows"]
        )
        return Table(found["caption"], tuple(found["columns"]), rows, tuple(found["notes"]))
    if kind == "figure":
        return Figure(found["plot"], found["caption"])
    if kind == "flow":
        return FlowBlock(flow_from_json(found["flow"]))
    return _section_from_json(found)


def _section_from_json(found: dict[str, Any]) -> Section:
    return Section(found["heading"], tuple(_block_from_json(b) for b in found["blocks"]))


def document_to_json(doc: ReportDocument) -> dict[str, Any]:
    """A report document as JSON (stored with the cohort snapshot)."""
    return {
        "title": doc.title,
        "sections": [_block_to_json(s) for s in doc.sections],
        "notes": list(doc.notes),
    }


def document_from_json(found: dict[str, Any]) -> ReportDocument:
    """The document `document_to_json` wrote."""
    return ReportDocument(
        found["title"],
        tuple(_section_from_json(s) for s in found["sections"]),
        tuple(found["notes"]),
    )


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
