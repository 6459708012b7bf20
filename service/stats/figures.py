"""What a cohort figure shows, as small JSON a snapshot stores; drawn only when first asked for.

A cohort refresh no longer renders figures (matplotlib took most of a refresh, issue 19): it stores
each figure's data (`FigureData`), and a read draws it in the format asked for (`draw`, which
imports matplotlib, numpy and lifelines through `service.stats.plots` only then). The data is
bounded whatever the cohort size: a Kaplan–Meier curve is kept as counts per distinct time (the
same curve, the same censor marks and numbers at risk, redrawn from them), and the swimmer plot
holds at most `SWIMMER_MAX_ROWS` subjects, the first by subject id, its title saying how many of
how many (the full list is the outcomes' per-subject listing).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["png", "svg"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "svg": "image/svg+xml"}
Curves = list[tuple[str, Sequence[float], Sequence[bool]]]
# The swimmer plot grows 0.4 in per subject: beyond this many it is neither readable nor cheap.
# Subject ids are keyed hashes, so the first ones by id are an arbitrary, not a chosen, subset.
SWIMMER_MAX_ROWS = 50
SWIMMER_TITLE = "Subject timelines from Day 1"


@dataclass(frozen=True, slots=True)
class RenderedFigure:
    """A rendered figure and the validator clients cache it by."""

    body: bytes
    media_type: str
    etag: str


@dataclass(frozen=True, slots=True)
class SwimmerRow:
    """One dosed subject's timeline in days since Day 1 (Day 1 = day 0, like the KM time axis)."""

    subject_id: str
    dose_days: tuple[int, ...]
    surgery_day: int | None
    last_followup_day: int
    efs_event_day: int | None
    efs_event_type: str | None
    efs_censored: bool
    death_day: int | None
    os_censored: bool
    mpr: str
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire shape."""
        return {
            "subject_id": self.subject_id,
            "dose_days": list(self.dose_days),
            "surgery_day": self.surgery_day,
            "last_followup_day": self.last_followup_day,
            "efs_event_day": self.efs_event_day,
            "efs_event_type": self.efs_event_type,
            "efs_censored": self.efs_censored,
            "death_day": self.death_day,
            "os_censored": self.os_censored,
            "mpr": self.mpr,
            "problem": self.problem,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SwimmerRow:
        """Back from the wire shape."""
        return cls(**{**data, "dose_days": tuple(data["dose_days"])})


@dataclass(frozen=True, slots=True)
class FigureData:
    """Everything one figure draws, JSON-ready: `kind` says which drawing takes `spec`."""

    kind: Literal["km", "swimmer"]
    spec: Mapping[str, Any]

    def to_json(self) -> str:
        """The stored form (compact, keys sorted: the same data gives the same bytes)."""
        return json.dumps(
            {"kind": self.kind, "spec": self.spec},
            separators=(",", ":"),
            sort_keys=True,
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> FigureData:
        """Back from the stored form."""
        data = json.loads(text)
        return cls(data["kind"], data["spec"])


def _counted(durations: Sequence[float], events: Sequence[bool]) -> list[list[float | int]]:
    """One curve as [time, events, censored] per distinct time, in time order."""
    tally: Counter[tuple[float, bool]] = Counter(
        (float(d), bool(e)) for d, e in zip(durations, events, strict=True)
    )
    times = sorted({t for t, _ in tally})
    return [[t, tally[(t, True)], tally[(t, False)]] for t in times]


def expand(counted: Sequence[Sequence[float | int]]) -> tuple[list[float], list[bool]]:
    """A counted curve back to durations and event flags (time order, events first)."""
    durations: list[float] = []
    flags: list[bool] = []
    for time, events, censored in counted:
        durations.extend([float(time)] * (int(events) + int(censored)))
        flags.extend([True] * int(events) + [False] * int(censored))
    return durations, flags


def km_figure(curves: Curves, title: str, level: float, origin: str) -> FigureData:
    """A Kaplan–Meier figure's data: each curve counted per distinct time (size bounded by the
    follow-up, not the cohort)."""
    return FigureData(
        "km",
        {
            "title": title,
            "level": level,
            "origin": origin,
            "curves": [[label, _counted(d, e)] for label, d, e in curves],
        },
    )


def swimmer_figure(rows: Sequence[SwimmerRow], limit: int = SWIMMER_MAX_ROWS) -> FigureData:
    """A swimmer plot's data: the first `limit` rows (subject-id order), and how many there are."""
    ordered = sorted(rows, key=lambda r: r.subject_id)
    shown = ordered[:limit]
    title = SWIMMER_TITLE
    if len(ordered) > len(shown):
        title = (
            f"{SWIMMER_TITLE}: {len(shown)} of {len(ordered)} dosed subjects "
            "(the first by subject id)"
        )
    return FigureData(
        "swimmer",
        {"title": title, "total": len(ordered), "rows": [r.to_json() for r in shown]},
    )


def draw(figure: FigureData, fmt: Format) -> bytes:
    """The figure in `fmt` (imports the plotting libraries on the first call)."""
    from service.stats import plots

    spec = figure.spec
    if figure.kind == "km":
        curves: Curves = [(str(label), *expand(counted)) for label, counted in spec["curves"]]
        return plots.km_plot(
            curves,
            title=str(spec["title"]),
            fmt=fmt,
            level=float(spec["level"]),
            origin=str(spec["origin"]),
        )
    if figure.kind == "swimmer":
        rows = [SwimmerRow.from_json(r) for r in spec["rows"]]
        return plots.swimmer_plot(rows, fmt=fmt, title=str(spec["title"]))
    raise ValueError(f"no drawing for figure kind {figure.kind!r}")
