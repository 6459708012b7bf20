"""A study's report document as a PDF (GET …/outcomes/report.pdf), drawn with fpdf2.

The same stored document as report.html: title, protocol version, data cut-off, the flow of
patients, every table as a PDF table and the figures from their stored PNGs. Text is set in
DejaVu Sans (shipped with matplotlib) so en dashes, arrows and ≥ print as they do in the page;
the font is embedded as a subset. The creation date is the snapshot's, so a snapshot always gives
the same bytes.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import re
from pathlib import Path

from fpdf import FPDF
from fpdf.fonts import FontFace

from service.infra.clock import iso_utc
from service.reads.results import CohortDocument
from service.studies.document import Block, Figure, FlowBlock, Paragraph, Section, Table
from service.studies.flow import ConsortFlow, FlowBox


def _matplotlib_data() -> Path:
    """matplotlib's data folder (its `get_data_path()`), found without importing matplotlib."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("matplotlib is not installed: its DejaVu fonts set the PDF's text")
    return Path(next(iter(spec.submodule_search_locations))) / "mpl-data"


_FONTS = _matplotlib_data() / "fonts" / "ttf"
_FAMILY = "DejaVu"
_HEADING_SIZES = {1: 18.0, 2: 14.0, 3: 12.0}
_BODY = 9.0
_SMALL = 7.5
_GREY = (246, 246, 246)
_INDENT = "    "

# fontTools logs every table of every subset at INFO: one line each, per PDF served
logging.getLogger("fontTools").setLevel(logging.WARNING)


def filename(found: CohortDocument) -> str:
    """`{study}-data-as-of-{n}.pdf`, with nothing but letters, digits, dots and dashes."""
    study = re.sub(r"[^A-Za-z0-9.-]", "-", found.study.id)
    return f"{study}-data-as-of-{found.data_as_of}.pdf"


class _Report(FPDF):
    """A4 landscape (Table 1 has six columns) with a page number in the footer."""

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(_FAMILY, "", _SMALL)
        self.cell(0, 5, f"Page {self.page_no()}/{{nb}}", align="C")


def _heading(pdf: FPDF, text: str, level: int) -> None:
    pdf.set_font(_FAMILY, "B", _HEADING_SIZES.get(level, 10.0))
    pdf.ln(2 if level > 2 else 4)
    pdf.multi_cell(0, None, text, align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    pdf.set_font(_FAMILY, "", _BODY)


def _paragraph(pdf: FPDF, text: str, size: float = _BODY) -> None:
    pdf.set_font(_FAMILY, "", size)
    pdf.multi_cell(0, None, text, align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1.5)
    pdf.set_font(_FAMILY, "", _BODY)


def _box_text(box: FlowBox) -> str:
    lines = [box.label, f"n = {box.n}", box.definition]
    if box.excluded:
        lines.append("Left before this step:")
        lines += [f"• {c.reason}: {c.n}" for c in box.excluded]
    if box.added:
        lines.append("Reached this step without the previous one:")
        lines += [f"• {c.reason}: {c.n}" for c in box.added]
    return "\n".join(lines)


def _flow(pdf: FPDF, flow: ConsortFlow) -> None:
    pdf.set_font(_FAMILY, "B", _BODY)
    pdf.multi_cell(0, None, flow.title, align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(_FAMILY, "", _BODY)
    for i, stage in enumerate(flow.stages):
        if i:
            pdf.cell(0, 5, "↓", align="C", new_x="LMARGIN", new_y="NEXT")
        width = min(pdf.epw, 90.0 * len(stage.boxes))
        with pdf.table(
            width=width,
            first_row_as_headings=False,
            text_align="LEFT",
            line_height=4.2,
            padding=1.5,
        ) as table:
            row = table.row()
            for box in stage.boxes:
                row.cell(_box_text(box))
    for note in flow.notes:
        _paragraph(pdf, f"• {note}", _SMALL)
    pdf.ln(2)


def _table(pdf: FPDF, table: Table) -> None:
    pdf.set_font(_FAMILY, "B", _BODY)
    pdf.multi_cell(0, None, table.caption, align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(_FAMILY, "", _BODY - 0.5)
    columns = max(len(table.columns), max((len(r.cells) for r in table.rows), default=0), 1)
    widths = (2.2, *(1.0 for _ in range(columns - 1))) if columns > 2 else None
    heading = FontFace(emphasis="BOLD", fill_color=_GREY)
    with pdf.table(
        col_widths=widths,
        first_row_as_headings=bool(table.columns),
        headings_style=FontFace(emphasis="BOLD"),
        text_align="LEFT",
        borders_layout="SINGLE_TOP_LINE",
        line_height=4.0,
        padding=1.0,
    ) as out:
        if table.columns:
            header = out.row()
            for text in (*table.columns, *("" for _ in range(columns - len(table.columns)))):
                header.cell(text)
        for row in table.rows:
            cells = list(row.cells) + ["" for _ in range(columns - len(row.cells))]
            if row.indent and cells:
                cells[0] = _INDENT + cells[0]
            line = out.row(style=heading if row.heading else None)
            for text in cells:
                line.cell(text)
    for note in table.notes:
        _paragraph(pdf, note, _SMALL)
    pdf.ln(2)


def _figure(pdf: FPDF, figure: Figure, pngs: dict[str, bytes]) -> None:
    body = pngs.get(figure.plot)
    if body is None:
        _paragraph(pdf, f"{figure.caption}: figure not available.")
        return
    width = min(pdf.epw, 190.0)
    pdf.image(io.BytesIO(body), x=(pdf.w - width) / 2, w=width, keep_aspect_ratio=True)
    pdf.set_font(_FAMILY, "", _SMALL + 0.5)
    pdf.multi_cell(0, None, figure.caption, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(_FAMILY, "", _BODY)
    pdf.ln(2)


def _block(pdf: FPDF, block: Block, pngs: dict[str, bytes], depth: int) -> None:
    if isinstance(block, Paragraph):
        _paragraph(pdf, block.text)
    elif isinstance(block, Table):
        _table(pdf, block)
    elif isinstance(block, Figure):
        _figure(pdf, block, pngs)
    elif isinstance(block, FlowBlock):
        _flow(pdf, block.flow)
    else:
        _section(pdf, block, pngs, depth + 1)


def _section(pdf: FPDF, section: Section, pngs: dict[str, bytes], depth: int) -> None:
    _heading(pdf, section.heading, depth)
    for block in section.blocks:
        _block(pdf, block, pngs, depth)


def render(found: CohortDocument) -> bytes:
    """The whole PDF: title, what it reports on and as of when, the sections, the notes."""
    doc = found.document
    assert doc is not None, "a 304 has no body"
    pngs = dict(found.figures)
    pdf = _Report(orientation="L", unit="mm", format="A4")
    pdf.set_creation_date(found.computed_at)
    pdf.set_title(doc.title)
    pdf.set_subject(f"{found.study.id}, data as of change {found.data_as_of}")
    pdf.set_creator("trialbridge")
    pdf.add_font(_FAMILY, "", _FONTS / "DejaVuSans.ttf")
    pdf.add_font(_FAMILY, "B", _FONTS / "DejaVuSans-Bold.ttf")
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    _heading(pdf, doc.title, 1)
    meta = [
        ("Study", found.study.id),
        ("Protocol version", found.study.version),
        (
            "Data cut-off",
            f"{iso_utc(found.computed_at)} (the data the service held when these results were "
            f"computed: every change up to number {found.data_as_of})",
        ),
    ]
    if found.stale:
        meta.append(("Note", "Data changed since this cut-off; a newer report is being computed."))
    for key, value in meta:
        pdf.set_font(_FAMILY, "B", _BODY)
        pdf.cell(32, 5, key)
        pdf.set_font(_FAMILY, "", _BODY)
        pdf.multi_cell(0, 5, value, align="L", new_x="LMARGIN", new_y="NEXT")
    for section in doc.sections:
        _section(pdf, section, pngs, 2)
    _heading(pdf, "Notes", 2)
    for note in (
        *doc.notes,
        "Aggregates only: no names, identifiers, dates of birth or FHIR ids.",
    ):
        _paragraph(pdf, f"• {note}")
    return bytes(pdf.output())
