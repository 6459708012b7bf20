"""A study's report document as one self-contained HTML page (GET …/outcomes/report.html).

Self-contained: inline CSS, figures as SVG in `data:` URIs (an <img> cannot run script, and each
SVG keeps its own ids), no script, no external asset, so the file can be saved and attached to a
manuscript as it is. Every text is escaped. The page carries its own Content-Security-Policy
(styles inline, images from data: URIs only).
"""

from __future__ import annotations

import base64
from html import escape

from service.infra.clock import iso_utc
from service.reads.results import CohortDocument
from service.studies.document import (
    Block,
    Figure,
    FlowBlock,
    Paragraph,
    Section,
    Table,
)
from service.studies.flow import ConsortFlow, FlowBox

POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  color: #1a1a1a; max-width: 1100px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.1em; margin-top: 1.5em; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; color: #333; }
dl.meta dt { font-weight: 600; }
dl.meta dd { margin: 0; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .4em; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid #555; }
tr.heading td { font-weight: 600; background: #f6f6f6; }
tr.indent td:first-child { padding-left: 1.8em; }
td.note { border: none; font-size: .85em; color: #444; padding-top: .4em; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #333; }
.flow { display: flex; flex-direction: column; align-items: center; gap: .3em; margin: 1em 0; }
.stage { display: flex; gap: 1em; justify-content: center; flex-wrap: wrap; }
.box { border: 1.5px solid #333; border-radius: 4px; padding: .5em .8em; min-width: 14em;
  max-width: 22em; background: #fff; }
.box .label { font-weight: 600; }
.box .n { font-size: 1.1em; }
.box .definition { font-size: .82em; color: #555; }
.box ul { margin: .3em 0 0 1.1em; padding: 0; font-size: .85em; }
.box .excluded { color: #8a2a00; }
.box .added { color: #004f8a; }
.arrow { font-size: 1.4em; color: #555; line-height: 1; }
.notes { font-size: .88em; color: #333; }
@media print { body { max-width: none; margin: 0; } h2 { break-before: auto; }
  table, figure, .flow { break-inside: avoid; } }
"""


def _text(value: str) -> str:
    return escape(value, quote=True)


def _counts(kind: str, title: str, items: tuple[tuple[str, int], ...]) -> str:
    if not items:
        return ""
    lines = "".join(f"<li>{_text(reason)}: {n}</li>" for reason, n in items)
    return f'<div class="{kind}">{_text(title)}<ul>{lines}</ul></div>'


def _box(box: FlowBox) -> str:
    excluded = tuple((c.reason, c.n) for c in box.excluded)
    added = tuple((c.reason, c.n) for c in box.added)
    return (
        '<div class="box">'
        f'<div class="label">{_text(box.label)}</div>'
        f'<div class="n">n = {box.n}</div>'
        f'<div class="definition">{_text(box.definition)}</div>'
        + _counts("excluded", "Left before this step:", excluded)
        + _counts("added", "Reached this step without the previous one:", added)
        + "</div>"
    )


def _flow(flow: ConsortFlow) -> str:
    stages = '<div class="arrow" aria-hidden="true">↓</div>'.join(
        '<div class="stage">' + "".join(_box(b) for b in s.boxes) + "</div>" for s in flow.stages
    )
    notes = "".join(f"<li>{_text(n)}</li>" for n in flow.notes)
    return (
        f'<figure class="flow-figure"><figcaption>{_text(flow.title)}</figcaption>'
        f'<div class="flow">{stages}</div></figure>'
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
    )


def _table(table: Table) -> str:
    head = "".join(f'<th scope="col">{_text(c)}</th>' for c in table.columns)
    rows = []
    for row in table.rows:
        kind = "heading" if row.heading else "indent" if row.indent else "data"
        cells = "".join(f"<td>{_text(c)}</td>" for c in row.cells)
        rows.append(f'<tr class="{kind}">{cells}</tr>')
    span = max(len(table.columns), 1)
    notes = "".join(
        f'<tr><td class="note" colspan="{span}">{_text(n)}</td></tr>' for n in table.notes
    )
    return (
        f"<table><caption>{_text(table.caption)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
        + (f"<tfoot>{notes}</tfoot>" if notes else "")
        + "</table>"
    )


def _figure(figure: Figure, svgs: dict[str, bytes]) -> str:
    body = svgs.get(figure.plot)
    if body is None:
        return f"<p>{_text(figure.caption)}: figure not available.</p>"
    data = base64.b64encode(body).decode("ascii")
    caption = _text(figure.caption)
    return (
        f'<figure><img alt="{caption}" src="data:image/svg+xml;base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _block(block: Block, svgs: dict[str, bytes], depth: int) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{_text(block.text)}</p>"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure(block, svgs)
    if isinstance(block, FlowBlock):
        return _flow(block.flow)
    return _section(block, svgs, depth + 1)


def _section(section: Section, svgs: dict[str, bytes], depth: int) -> str:
    level = min(depth, 6)
    inner = "".join(_block(b, svgs, depth) for b in section.blocks)
    return f"<section><h{level}>{_text(section.heading)}</h{level}>{inner}</section>"


def render(found: CohortDocument) -> str:
    """The whole page: title, what it reports on and as of when, the sections, the notes."""
    doc = found.document
    assert doc is not None, "a 304 has no body"
    svgs = dict(found.figures)
    meta = (
        ("Study", found.study.id),
        ("Protocol version", found.study.version),
        (
            "Data cut-off",
            f"{iso_utc(found.computed_at)} (the data the service held when these results were "
            f"computed: every change up to number {found.data_as_of})",
        ),
        *(
            (
                (
                    "Note",
                    "Data changed since this cut-off; a newer report is being computed.",
                ),
            )
            if found.stale
            else ()
        ),
    )
    meta_html = "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in meta)
    sections = "".join(_section(s, svgs, 2) for s in doc.sections)
    notes = "".join(f"<li>{_text(n)}</li>" for n in doc.notes)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_text(doc.title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{_text(doc.title)}</h1><dl class="meta">{meta_html}</dl></header>'
        f"<main>{sections}</main>"
        f'<footer><h2>Notes</h2><ul class="notes">{notes}'
        "<li>Aggregates only: no names, identifiers, dates of birth or FHIR ids.</li></ul>"
        "</footer></body></html>\n"
    )
