"""Cohort figures render to valid, deterministic PNG/SVG bytes without pyplot."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from service.stats.plots import SwimmerRow, km_plot, km_steps, swimmer_plot
from service.stats.survival import km_fitter

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SVG = "{http://www.w3.org/2000/svg}"
EFS = ("EFS", [20.0, 58.0, 184.0, 266.0, 375.0, 410.0], [True, False, False, True, False, False])
OS = ("OS", [58.0, 92.0, 184.0, 328.0, 375.0, 410.0], [False, True, False, True, False, False])
ROWS = [
    SwimmerRow("s1", (0,), 17, 375, None, None, True, None, True, "met"),
    SwimmerRow("s2", (0,), 21, 328, 266, "progression_or_recurrence", False, 328, False, "met"),
    SwimmerRow(
        "s3", (0, 14), None, 92, 20, "progression_or_recurrence", False, 92, False, "not_met"
    ),
    SwimmerRow("s4", (0,), 28, 58, None, None, True, None, True, "not_evaluable"),
]


def _svg_paths(svg: bytes) -> int:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return len(root.findall(f".//{SVG}path"))


def _texts(svg: bytes) -> str:
    """SVG keeps each text artist's string in a comment next to its glyph paths."""
    return svg.decode()


@pytest.mark.parametrize(("curves", "minimum"), [([EFS], 20_000), ([EFS, OS], 25_000), ([], 3_000)])
def test_km_png(curves: list[tuple[str, list[float], list[bool]]], minimum: int) -> None:
    """A PNG of plausible size for one curve, two curves, and the 'no data' figure."""
    png = km_plot(curves, title="Event-free survival", fmt="png")
    assert png.startswith(PNG_MAGIC)
    assert len(png) > minimum
    assert b"Matplotlib version" not in png


def test_km_svg_is_xml_with_paths_and_the_at_risk_table() -> None:
    """The SVG parses, draws paths, and carries the numbers-at-risk heading and curve labels."""
    svg = km_plot([EFS, OS], title="EFS and OS", fmt="svg")
    assert _svg_paths(svg) >= 10
    text = _texts(svg)
    assert "Number at risk" in text
    assert "EFS (n=6, events=2)" in text
    assert "OS (n=6, events=2)" in text
    assert "Time since Day 1 (months)" in text


def test_km_without_data_says_so() -> None:
    """An empty cohort (or only empty curves) renders a figure that says 'no data'."""
    svg = km_plot([("EFS", [], [])], title="Event-free survival", fmt="svg")
    assert _svg_paths(svg) >= 1
    assert "no data" in _texts(svg)
    assert "Number at risk" not in _texts(svg)


def test_km_in_days_uses_the_unit() -> None:
    """The time unit reaches the axis label; an unknown unit is refused."""
    assert "Time since Day 1 (days)" in _texts(
        km_plot([EFS], title="EFS", fmt="svg", time_unit="days")
    )
    with pytest.raises(ValueError, match="time_unit"):
        km_plot([EFS], title="EFS", fmt="svg", time_unit="fortnights")


def test_km_axis_names_the_time_origin() -> None:
    """The cirAE cohort counts from ICB initiation, not Day 1; Day 1 stays the default."""
    text = _texts(km_plot([OS], title="OS", fmt="svg", origin="ICB initiation"))
    assert "Time since ICB initiation (months)" in text
    assert "Time since Day 1" not in text


def _log_log_band(s: float, greenwood: float, level: float) -> tuple[float, float]:
    """The textbook exponential Greenwood (log(-log)) pointwise CI of a KM estimate."""
    z = float(norm.ppf(1 - (1 - level) / 2))
    spread = z * np.sqrt(greenwood / np.log(s) ** 2)
    return s ** np.exp(spread), s ** np.exp(-spread)


@pytest.mark.parametrize("level", [0.8, 0.95])
def test_km_band_is_drawn_at_the_requested_level(level: float) -> None:
    """Five subjects, one event at 2: S = 0.8, Greenwood sum 1/(5·4); the band follows `level`."""
    steps = km_steps(km_fitter([2.0, 4.0, 6.0, 8.0, 10.0], [True] + [False] * 4, "x", level), 1.0)
    lower, upper = _log_log_band(0.8, 1 / 20, level)
    assert steps.x.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert steps.survival.tolist() == pytest.approx([1.0, 0.8, 0.8, 0.8, 0.8, 0.8])
    assert steps.lower[1:].tolist() == pytest.approx([lower] * 5)
    assert steps.upper[1:].tolist() == pytest.approx([upper] * 5)
    assert f"{level:.0%} CI" in _texts(km_plot([EFS], title="EFS", fmt="svg", level=level))


def test_svg_and_png_are_deterministic() -> None:
    """Rendering twice gives identical bytes (fixed hash salt, no date, no version text)."""
    assert km_plot([EFS, OS], title="t", fmt="svg") == km_plot([EFS, OS], title="t", fmt="svg")
    assert km_plot([EFS], title="t", fmt="png") == km_plot([EFS], title="t", fmt="png")
    assert swimmer_plot(ROWS, fmt="svg") == swimmer_plot(ROWS, fmt="svg")
    assert b"<dc:date>" not in swimmer_plot(ROWS, fmt="svg")


def test_swimmer_png_and_svg() -> None:
    """Both formats; the legend names each marker kind present and the MPR colours."""
    png = swimmer_plot(ROWS, fmt="png")
    assert png.startswith(PNG_MAGIC)
    assert len(png) > 20_000
    svg = swimmer_plot(ROWS, fmt="svg")
    assert _svg_paths(svg) >= 10
    text = _texts(svg)
    for label in (
        "Study-drug dose",
        "Surgery",
        "Progression/recurrence",
        "Death",
        "Alive at last follow-up",
        "MPR not evaluable",
        "no MPR",
    ):
        assert label in text
    assert "s1" in text
    assert "s4" in text


def test_swimmer_marks_a_subject_without_an_efs_or_os_time() -> None:
    """A death before Day 1 or without a date gets a '?' marker and a legend entry."""
    row = SwimmerRow(
        "s9", (0,), None, 30, None, None, False, None, False, "not_evaluable", "death date unknown"
    )
    text = _texts(swimmer_plot([*ROWS, row], fmt="svg"))
    assert "EFS/OS time unknown (see listing)" in text
    assert "EFS/OS time unknown" not in _texts(swimmer_plot(ROWS, fmt="svg"))


def test_swimmer_without_rows_says_no_data() -> None:
    """No dosed subject yet: a 'no data' figure, not an exception."""
    assert "no data" in _texts(swimmer_plot([], fmt="svg"))
    assert swimmer_plot([], fmt="png").startswith(PNG_MAGIC)


def test_concurrent_rendering_matches_serial() -> None:
    """Figures rendered from a thread pool equal the serial rendering (no shared pyplot state)."""
    serial = km_plot([EFS, OS], title="t", fmt="svg")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: km_plot([EFS, OS], title="t", fmt="svg"), range(4)))
    assert all(r == serial for r in results)


def test_rendering_never_imports_pyplot() -> None:
    """pyplot keeps global figure state; a fresh interpreter renders both figures without it."""
    code = (
        "import sys\n"
        "from service.stats.plots import SwimmerRow, km_plot, swimmer_plot\n"
        "km_plot([('a', [1.0, 2.0], [True, False])], title='t', fmt='png')\n"
        "swimmer_plot([SwimmerRow('s', (0,), 1, 2, None, None, True, None, True, 'met')],"
        " fmt='svg')\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.stdout.strip() == "False"
