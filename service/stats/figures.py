"""What the figures are, without drawing them: matplotlib, numpy and lifelines (~160 MB of a
process's memory) are imported by `service.stats.plots` on the first figure drawn, not at start-up."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["png", "svg"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "svg": "image/svg+xml"}
# A figure not drawn yet: drawing costs tens of milliseconds, so it waits for its first request.
Draw = Callable[[Format], bytes]
Curves = list[tuple[str, Sequence[float], Sequence[bool]]]


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


def km_figure(curves: Curves, title: str, level: float, origin: str) -> Draw:
    """A deferred Kaplan–Meier figure: drawn (and matplotlib imported) on the first request for it."""

    def draw(fmt: Format) -> bytes:
        from service.stats.plots import km_plot

        return km_plot(curves, title=title, fmt=fmt, level=level, origin=origin)

    return draw


def swimmer_figure(rows: Sequence[SwimmerRow]) -> Draw:
    """A deferred swimmer plot, drawn on the first request for it."""

    def draw(fmt: Format) -> bytes:
        from service.stats.plots import swimmer_plot

        return swimmer_plot(rows, fmt=fmt)

    return draw
