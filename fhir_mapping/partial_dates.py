"""FHIR date/dateTime/instant values as clinical dates that keep their precision and local day."""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

Precision = Literal["year", "month", "day", "time"]

_DATE_RE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


@dataclass(frozen=True, slots=True)
class PartialDate:
    """A recorded date: its text, its precision, and the calendar days it can mean.

    `first`/`last` are the local calendar days the value covers (the same day for day or time
    precision). A datetime's day is the day *where it was recorded*: 23:30-05:00 is that evening,
    not the next UTC day.
    """

    text: str
    precision: Precision
    first: dt.date
    last: dt.date
    instant: dt.datetime | None = None

    @property
    def day(self) -> dt.date | None:
        """The calendar day when the precision is a day or finer, else None."""
        return self.first if self.precision in ("day", "time") else None

    def day_not_before(self, alive_on: dt.date) -> dt.date:
        """The day a date of death stands for: its first day not before a day known alive.

        A partial date ("2025", "2025-09") covers an interval; the person was alive on `alive_on`,
        so the day is max(first, min(alive_on, last)). An exact date is its own day.
        """
        return max(self.first, min(alive_on, self.last))

    def sort_key(self) -> tuple[dt.date, dt.datetime]:
        """Order by local day first, then by instant when there is one."""
        moment = self.instant or dt.datetime.combine(self.first, dt.time(), tzinfo=dt.UTC)
        return self.first, moment

    def to_json(self) -> dict[str, Any]:
        """The wire shape used in events and API responses."""
        return {
            "value": self.text,
            "precision": self.precision,
            "first_day": self.first.isoformat(),
            "last_day": self.last.isoformat(),
        }


@functools.lru_cache(maxsize=256)
def _zone(text: str | None) -> dt.tzinfo:
    """A fixed-offset zone from '+05:30' / 'Z' (few distinct values: cached)."""
    if text in (None, "Z"):
        return dt.UTC
    assert text is not None
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 23 or minutes > 59:
        raise ValueError(f"offset {text} out of range")
    return dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))


def parse_partial_date(value: Any) -> PartialDate | None:
    """Parse a FHIR date/dateTime/instant string; None for anything that is not one."""
    return _parse(value) if isinstance(value, str) else None


def forget_parsed_dates() -> None:
    """Empty the cache of parsed dates (after a large request, so its memory can be returned)."""
    _parse.cache_clear()
    _site_day.cache_clear()


@functools.lru_cache(maxsize=65536)
def _parse(value: str) -> PartialDate | None:
    """The parse itself; feeds repeat the same dates, so results are cached (they are frozen)."""
    m = _DATE_RE.fullmatch(value)
    if m is None:
        return None
    try:
        year = int(m["y"])
        if m["m"] is None:
            return PartialDate(value, "year", dt.date(year, 1, 1), dt.date(year, 12, 31))
        month = int(m["m"])
        if m["d"] is None:
            last = calendar.monthrange(year, month)[1]
            return PartialDate(value, "month", dt.date(year, month, 1), dt.date(year, month, last))
        day = dt.date(year, month, int(m["d"]))
        if m["h"] is None:
            return PartialDate(value, "day", day, day)
        second = min(int(m["s"] or 0), 59)  # a leap second :60 still names this day
        tz = _zone(m["tz"])
        local = dt.datetime(year, month, day.day, int(m["h"]), int(m["mi"]), second, tzinfo=tz)
        return PartialDate(value, "time", day, day, local)
    except ValueError:
        return None


def first_date(*values: Any) -> PartialDate | None:
    """The first of several candidate elements that holds a parseable date."""
    for value in values:
        parsed = parse_partial_date(value)
        if parsed is not None:
            return parsed
    return None


def period_bounds(period: Any) -> tuple[PartialDate | None, PartialDate | None]:
    """(start, end) of a FHIR Period, each None when absent or unreadable."""
    if not isinstance(period, dict):
        return None, None
    return parse_partial_date(period.get("start")), parse_partial_date(period.get("end"))


def site_date(moment: dt.datetime, zone: dt.tzinfo) -> dt.date:
    """The site's calendar day at an instant (the one conversion every site-local day goes through)."""
    return moment.astimezone(zone).date()


@functools.lru_cache(maxsize=65536)
def _site_day(instant: dt.datetime, zone: dt.tzinfo) -> dt.date:
    """`site_date`, remembered: a cohort's events share few instants."""
    return site_date(instant, zone)


def in_zone(date: PartialDate, zone: dt.tzinfo) -> PartialDate:
    """A recorded date as the site's calendar day (CLINICAL.md, Schedule).

    A timestamp in UTC (`Z`, or an offset of zero) becomes the site's day at that instant:
    02:30Z is 21:30 the evening before in New York. A timestamp with another offset keeps the day
    it was recorded on (its own offset), and a date without a time is already a calendar day.
    """
    instant = date.instant
    if date.precision != "time" or instant is None or instant.utcoffset() != dt.timedelta(0):
        return date
    # the very object comes back when nothing changes (events_of relies on it: an event in its
    # zone is the same event); a cache of whole dates would hand back an equal copy instead
    day = _site_day(instant, zone)
    return date if day == date.first else replace(date, first=day, last=day)


def study_day(day: dt.date, day1: dt.date) -> int:
    """CDISC study day: Day 1 is the reference day, the day before is Day -1; there is no Day 0."""
    delta = (day - day1).days
    return delta + 1 if delta >= 0 else delta
