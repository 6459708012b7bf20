"""Figures are stored as their data and drawn on first read (issue 19): the stored form is
small and bounded, draws the same picture, and a process draws each figure once per snapshot."""

from __future__ import annotations

import threading
import time

import pytest

from service.reads.figure_cache import FigureCache
from service.stats.figures import (
    SWIMMER_MAX_ROWS,
    Curves,
    FigureData,
    Format,
    SwimmerRow,
    draw,
    expand,
    km_figure,
    swimmer_figure,
)
from service.stats.plots import km_plot, swimmer_plot

DAYS = [30.0, 10.0, 30.0, 20.0, 10.0, 30.0]
EVENTS = [False, True, True, True, False, False]


def _row(subject_id: str) -> SwimmerRow:
    return SwimmerRow(subject_id, (0, 21), 40, 200, None, None, True, None, True, "met")


def test_a_km_curve_is_stored_as_counts_per_distinct_time() -> None:
    """Six subjects at three times: [time, events, censored] per time, in time order."""
    data = km_figure([("EFS", DAYS, EVENTS)], "EFS", 0.95, "Day 1")
    assert data.spec["curves"] == [["EFS", [[10.0, 1, 1], [20.0, 1, 0], [30.0, 1, 2]]]]
    assert expand(data.spec["curves"][0][1]) == (
        [10.0, 10.0, 20.0, 30.0, 30.0, 30.0],
        [True, False, True, True, False, False],
    )


@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_a_stored_km_figure_draws_the_picture_of_its_curves(fmt: Format) -> None:
    """Through JSON and back, the same bytes as drawing the raw durations and flags."""
    curves: Curves = [("EFS", DAYS, EVENTS), ("other", [5.0, 7.0, 7.0], [True, False, True])]
    stored = FigureData.from_json(km_figure(curves, "T", 0.9, "Day 1").to_json())
    assert draw(stored, fmt) == km_plot(curves, title="T", fmt=fmt, level=0.9, origin="Day 1")


def test_the_swimmer_figure_keeps_the_first_rows_by_subject_id_and_says_so() -> None:
    """60 subjects: the first 50 by id are drawn and the title says 50 of 60."""
    rows = [_row(f"S-{i:03d}") for i in reversed(range(60))]
    data = swimmer_figure(rows)
    assert SWIMMER_MAX_ROWS == 50
    assert [r["subject_id"] for r in data.spec["rows"]] == [f"S-{i:03d}" for i in range(50)]
    assert data.spec["total"] == 60
    title = "Subject timelines from Day 1: 50 of 60 dosed subjects (the first by subject id)"
    assert data.spec["title"] == title
    svg = draw(FigureData.from_json(data.to_json()), "svg")
    assert b"50 of 60 dosed subjects" in svg
    assert b"S-049" in svg
    assert b"S-050" not in svg


def test_a_small_swimmer_figure_is_the_plot_of_all_its_rows() -> None:
    """Under the cap nothing changes: every row, the usual title, the same picture."""
    rows = [_row("S-b"), _row("S-a")]
    data = swimmer_figure(rows)
    assert (data.spec["total"], data.spec["title"]) == (2, "Subject timelines from Day 1")
    expected = swimmer_plot([_row("S-a"), _row("S-b")], fmt="svg")
    assert draw(FigureData.from_json(data.to_json()), "svg") == expected


def test_concurrent_first_reads_draw_a_figure_once() -> None:
    """Four threads ask for one figure while it is being drawn: one drawing, four answers."""
    calls: list[str] = []

    def slow(data: FigureData, fmt: Format) -> bytes:
        calls.append(fmt)
        time.sleep(0.2)
        return b"drawn"

    cache = FigureCache(drawer=slow)
    data = FigureData("km", {})
    answers: list[bytes] = []
    threads = [
        threading.Thread(
            target=lambda: answers.append(cache.get(("s", "d1", "os", "svg"), lambda: data, "svg"))
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (calls, answers, cache.draws) == (["svg"], [b"drawn"] * 4, 1)
    cache.get(("s", "d2", "os", "svg"), lambda: data, "svg")  # another snapshot: drawn anew
    assert cache.draws == 2


def test_the_cache_keeps_at_most_its_bound_least_recently_used_out() -> None:
    """10-byte drawings, a 25-byte bound: the third evicts the least recently used."""
    cache = FigureCache(max_bytes=25, drawer=lambda data, fmt: b"x" * 10)
    data = FigureData("km", {})
    for key in ("a", "b"):
        cache.get(("s", key, "os", "png"), lambda: data, "png")
    cache.get(("s", "a", "os", "png"), lambda: data, "png")  # a used again: b is the oldest
    cache.get(("s", "c", "os", "png"), lambda: data, "png")
    assert cache.draws == 3
    cache.get(("s", "a", "os", "png"), lambda: data, "png")
    assert cache.draws == 3  # a kept
    cache.get(("s", "b", "os", "png"), lambda: data, "png")
    assert cache.draws == 4  # b had gone


def test_a_failed_drawing_is_not_kept() -> None:
    """The error reaches the caller; the next read tries again."""
    failures = [ValueError("no")]

    def flaky(data: FigureData, fmt: Format) -> bytes:
        if failures:
            raise failures.pop()
        return b"ok"

    cache = FigureCache(drawer=flaky)
    key = ("s", "d", "os", "svg")
    with pytest.raises(ValueError, match="no"):
        cache.get(key, lambda: FigureData("km", {}), "svg")
    assert cache.get(key, lambda: FigureData("km", {}), "svg") == b"ok"
