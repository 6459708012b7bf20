"""Cohort figures (Kaplan–Meier, swimmer) rendered to PNG or SVG bytes.

Object-oriented matplotlib only (`Figure` + Agg canvas, never pyplot): the web server renders
from a thread pool, and pyplot keeps global figure state. Output is deterministic: SVG ids use a
fixed hash salt and carry no date; PNG carries no software/version text.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import NamedTuple

import matplotlib as mpl
import numpy as np
import numpy.typing as npt
from lifelines import KaplanMeierFitter
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import Locator, MaxNLocator, MultipleLocator
from matplotlib.transforms import blended_transform_factory

from service.stats.figures import MEDIA_TYPES as MEDIA_TYPES
from service.stats.figures import SWIMMER_TITLE, Format
from service.stats.figures import Curves as Curves
from service.stats.figures import SwimmerRow as SwimmerRow
from service.stats.survival import DAYS_PER_MONTH, at_risk, km_fitter

# Set once at import, never toggled per call (rc_context is not thread-safe); a site's own salt wins.
if mpl.rcParams["svg.hashsalt"] is None:
    mpl.rcParams["svg.hashsalt"] = "trialbridge"

TIME_UNITS = {"days": 1.0, "weeks": 7.0, "months": DAYS_PER_MONTH, "years": 365.25}
# Okabe–Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
MPR_COLOURS = {"met": "#009E73", "not_met": "#E69F00", "not_evaluable": "#BBBBBB"}
MPR_LABELS = {"met": "MPR", "not_met": "no MPR", "not_evaluable": "MPR not evaluable"}
PNG_DPI = 150
MONTH_STEPS = (1, 2, 3, 6, 12, 24, 60)
MAX_TICKS = 10
MIN_MONTH_TICKS = 3  # below 3 months of follow-up, whole-month ticks are too sparse


class _Marker(NamedTuple):
    """How one swimmer event kind is drawn and named in the legend."""

    marker: str
    colour: str
    size: float
    label: str
    edge: str = "white"  # a white rim separates filled markers from the bar; glyphs need their own


MARKERS = {
    "dose": _Marker("o", "#0072B2", 6, "Study-drug dose"),
    "surgery": _Marker("^", "#CC79A7", 9, "Surgery"),
    "event": _Marker("D", "#D55E00", 8, "Progression/recurrence"),
    "death": _Marker("X", "#000000", 9, "Death"),
    "ongoing": _Marker(">", "#444444", 8, "Alive at last follow-up"),
    "unknown": _Marker("$?$", "#000000", 10, "EFS/OS time unknown (see listing)", "#000000"),
}


def _scale(time_unit: str) -> float:
    """Days per plotted unit; an unknown unit is a caller error, not a silent default."""
    try:
        return TIME_UNITS[time_unit]
    except KeyError:
        raise ValueError(
            f"time_unit must be one of {sorted(TIME_UNITS)}, got {time_unit!r}"
        ) from None


def _render(fig: Figure, fmt: Format) -> bytes:
    """Serialise without pyplot, with no timestamps or version strings in the file."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    if fmt == "png":
        fig.savefig(buffer, format="png", dpi=PNG_DPI, metadata={"Software": None})
    elif fmt == "svg":
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    else:
        raise ValueError(f"fmt must be 'png' or 'svg', got {fmt!r}")
    return buffer.getvalue()


def _no_data(title: str, fmt: Format) -> bytes:
    """A figure that says there is nothing to draw, so an empty cohort is not an error page."""
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=16, color="#666666")
    return _render(fig, fmt)


def _locator(time_unit: str, end: float) -> Locator:
    """Month ticks on 1/2/3/6/12-month steps (what readers expect); else plain round numbers."""
    if time_unit != "months" or end < MIN_MONTH_TICKS:
        return MaxNLocator(nbins=8)
    step = next((s for s in MONTH_STEPS if end / s <= MAX_TICKS), MONTH_STEPS[-1])
    return MultipleLocator(step)


def _tidy(ax: Axes) -> None:
    """Slide-style axes: no top/right spines, a light grid behind the data."""
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color="#DDDDDD", linewidth=0.6)
    ax.set_axisbelow(True)


def _at_risk_table(
    table: Axes,
    ticks: Sequence[float],
    rows: Sequence[tuple[str, str, list[int]]],
) -> None:
    """Numbers at risk under the x axis: one row per curve, one column per tick.

    The curve names are the table's y tick labels, so the layout makes room for long names
    ("cirAE, no dupilumab") instead of cutting them at the figure's edge.
    """
    table.spines[:].set_visible(False)
    table.tick_params(axis="x", bottom=False, labelbottom=False)
    table.tick_params(axis="y", left=False, pad=16)
    table.set_ylim(0, 1)
    where = blended_transform_factory(table.transData, table.transAxes)
    label_at = blended_transform_factory(table.transAxes, table.transAxes)
    table.text(0, 1.0, "Number at risk", transform=label_at, ha="left", va="top", weight="bold")
    ys = [1.0 - (i + 1.4) / (len(rows) + 1) for i in range(len(rows))]
    table.set_yticks(ys, [label for label, _, _ in rows])
    for label, (_, colour, _) in zip(table.get_yticklabels(), rows, strict=True):
        label.set_color(colour)
    for y, (_, _, counts) in zip(ys, rows, strict=True):
        for tick, count in zip(ticks, counts, strict=True):
            table.text(tick, y, str(count), transform=where, ha="center", va="center")


class KmSteps(NamedTuple):
    """What one KM curve draws: step times in the plotted unit, survival and its CI band."""

    x: npt.NDArray[np.float64]
    survival: npt.NDArray[np.float64]
    lower: npt.NDArray[np.float64]
    upper: npt.NDArray[np.float64]


def km_steps(fitter: KaplanMeierFitter, scale: float) -> KmSteps:
    """The curve and band at the fitter's own level, so the band drawn is the one asked for."""
    band = fitter.confidence_interval_.to_numpy(dtype=float)
    return KmSteps(
        fitter.survival_function_.index.to_numpy(dtype=float) / scale,
        fitter.survival_function_.to_numpy(dtype=float)[:, 0],
        band[:, 0],
        band[:, 1],
    )


def axis_label(origin: str, time_unit: str) -> str:
    """The x-axis label: the time origin differs by study (Day 1, ICB initiation)."""
    return f"Time since {origin} ({time_unit})"


def km_plot(
    curves: Sequence[tuple[str, Sequence[float], Sequence[bool]]],
    *,
    title: str,
    fmt: Format,
    time_unit: str = "months",
    level: float = 0.95,
    origin: str = "Day 1",
) -> bytes:
    """Kaplan–Meier curve(s) with CI bands, censor ticks and a numbers-at-risk table (days in).

    `level` is the CI level of the bands (the caller passes its protocol's); `origin` names the
    time origin on the x axis (Day 1 for the trial, ICB initiation for the cirAE cohort).
    """
    scale = _scale(time_unit)
    drawn = [(label, km_fitter(d, e, label, level)) for label, d, e in curves if len(d) > 0]
    if not drawn:
        return _no_data(title, fmt)
    fig = Figure(figsize=(8, 5.4 + 0.3 * len(drawn)), layout="constrained")
    grid = fig.add_gridspec(2, 1, height_ratios=[5, 0.5 + 0.35 * len(drawn)])
    ax = fig.add_subplot(grid[0])
    table = fig.add_subplot(grid[1], sharex=ax)
    for i, (label, fitter) in enumerate(drawn):
        colour = PALETTE[i % len(PALETTE)]
        steps = km_steps(fitter, scale)
        n, events = len(fitter.durations), int(fitter.event_observed.sum())
        ax.fill_between(
            steps.x, steps.lower, steps.upper, step="post", color=colour, alpha=0.15, lw=0
        )
        ax.step(
            steps.x,
            steps.survival,
            where="post",
            color=colour,
            lw=2,
            label=f"{label} (n={n}, events={events})",
        )
        censored = np.sort(fitter.durations[~fitter.event_observed.astype(bool)].astype(float))
        if censored.size:
            ax.plot(
                censored / scale,
                fitter.survival_function_at_times(censored).to_numpy(dtype=float),
                ls="none",
                marker="|",
                ms=10,
                mew=1.5,
                color=colour,
            )
    end = max(float(f.durations.max()) for _, f in drawn) / scale
    ax.set_xlim(0, end * 1.03 if end > 0 else 1.0)
    ax.set_ylim(0, 1.05)
    ax.xaxis.set_major_locator(_locator(time_unit, ax.get_xlim()[1]))
    ticks = [float(t) for t in ax.get_xticks() if 0 <= t <= ax.get_xlim()[1]]
    ax.set_xticks(ticks)
    ax.set_xlabel(axis_label(origin, time_unit))
    ax.set_ylabel("Survival probability")
    ax.set_title(title)
    _tidy(ax)
    handles, _ = ax.get_legend_handles_labels()
    extra: list[Artist] = [
        Line2D([], [], ls="none", marker="|", ms=10, mew=1.5, color="#444444", label="Censored"),
        Patch(color="#444444", alpha=0.15, label=f"{level:.0%} CI"),
    ]
    ax.legend(handles=[*handles, *extra], loc="best", frameon=False)
    rows = [
        (label, PALETTE[i % len(PALETTE)], [at_risk(f, t * scale) for t in ticks])
        for i, (label, f) in enumerate(drawn)
    ]
    _at_risk_table(table, ticks, rows)
    return _render(fig, fmt)


def _end(row: SwimmerRow) -> int:
    """Where a subject's bar ends: the latest thing known about them."""
    days = [row.last_followup_day, row.surgery_day, row.efs_event_day, row.death_day]
    return max(d for d in days if d is not None)


def swimmer_plot(
    rows: Sequence[SwimmerRow],
    *,
    fmt: Format,
    time_unit: str = "months",
    title: str = SWIMMER_TITLE,
) -> bytes:
    """One bar per subject from Day 1 to last follow-up, coloured by MPR, with event markers."""
    if not rows:
        return _no_data(title, fmt)
    scale = _scale(time_unit)
    fig = Figure(figsize=(9, max(2.8, 0.4 * len(rows) + 1.6)), layout="constrained")
    ax = fig.add_subplot()
    seen: dict[str, Artist] = {}
    # One artist per marker kind and one bar container for all subjects (not one per subject):
    # drawing and layout cost then hardly grow with the cohort (issue 19).
    points: dict[str, tuple[list[float], list[float]]] = {}

    def mark(kind: str, days: Sequence[int], y: float) -> None:
        """Queue one marker kind on a bar; drawn below as one artist per kind."""
        xs, ys = points.setdefault(kind, ([], []))
        xs.extend(d / scale for d in days)
        ys.extend([y] * len(days))

    bar_y: list[float] = []
    bar_end: list[float] = []
    bar_colour: list[str] = []
    for i, row in enumerate(rows):
        y = float(len(rows) - 1 - i)
        bar_y.append(y)
        bar_end.append(_end(row) / scale)
        bar_colour.append(MPR_COLOURS.get(row.mpr, "#BBBBBB"))
        seen.setdefault(f"mpr:{row.mpr}", Patch(color=MPR_COLOURS.get(row.mpr, "#BBBBBB")))
        mark("dose", row.dose_days, y)
        if row.surgery_day is not None:
            mark("surgery", [row.surgery_day], y)
        if row.efs_event_day is not None and row.efs_event_type != "death":
            mark("event", [row.efs_event_day], y)
        if row.death_day is not None:
            mark("death", [row.death_day], y)
        elif row.os_censored:
            mark("ongoing", [_end(row)], y)
        if row.problem is not None:
            mark("unknown", [_end(row)], y)
    ax.barh(bar_y, bar_end, left=0, height=0.55, color=bar_colour, zorder=2)
    for kind in MARKERS:
        if kind not in points:
            continue
        style = MARKERS[kind]
        xs, ys = points[kind]
        (line,) = ax.plot(
            xs,
            ys,
            ls="none",
            marker=style.marker,
            color=style.colour,
            ms=style.size,
            mec=style.edge,
            mew=0.6,
            zorder=3,
            clip_on=False,  # a Day-1 dose sits on the axis; don't cut it in half
        )
        seen[kind] = line
    ax.set_yticks(range(len(rows)), [r.subject_id for r in reversed(rows)])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    longest = max(_end(r) for r in rows) / scale
    ax.set_xlim(0, longest * 1.06 if longest > 0 else 1.0)
    ax.set_xlabel(axis_label("Day 1", time_unit))
    ax.set_ylabel("Subject")
    ax.set_title(title)
    _tidy(ax)
    ax.grid(False, axis="y")
    order = [f"mpr:{k}" for k in MPR_COLOURS] + list(MARKERS)
    labels = {f"mpr:{k}": v for k, v in MPR_LABELS.items()} | {
        k: v.label for k, v in MARKERS.items()
    }
    keys = [k for k in order if k in seen]
    ax.legend(
        [seen[k] for k in keys],
        [labels[k] for k in keys],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
    )
    return _render(fig, fmt)
