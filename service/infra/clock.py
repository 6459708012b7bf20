"""Server clock and FHIR instant formatting (always UTC, always timezone-aware)."""

from __future__ import annotations

import calendar
import datetime as dt
import re
from functools import lru_cache

_DATE_PARAM = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<time>\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)"
    r"(?P<tz>Z|[+-]\d{2}:\d{2}))?)?)?",
    re.ASCII,  # ASCII digits only: int() would read '２０２５' as 2025
)
# The instants a datetime can hold; date_param_range clamps bounds beyond them to them.
INSTANT_MIN = dt.datetime.min.replace(tzinfo=dt.UTC)
INSTANT_MAX = dt.datetime.max.replace(tzinfo=dt.UTC)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def utcnow() -> dt.datetime:
    """Now, truncated to milliseconds so the stored instant and meta.lastUpdated agree exactly."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@lru_cache(maxsize=256)
def fhir_instant(value: dt.datetime) -> str:
    """FHIR instant text, e.g. 2025-06-01T10:00:00.123Z (memoised: one request, one instant)."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def iso_utc(value: dt.datetime) -> str:
    """ISO 8601 in UTC with a Z, as the JSON API writes instants."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def http_date(value: dt.datetime) -> str:
    """RFC 9110 date for Last-Modified."""
    return value.astimezone(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def shift_day(day: dt.date, days: int) -> dt.date:
    """`day` moved by `days`, held at the calendar's ends: FHIR allows years 1 and 9999, and a
    window reaching past them is simply open on that side, never an OverflowError."""
    try:
        return day + dt.timedelta(days=days)
    except OverflowError:
        return dt.date.max if days > 0 else dt.date.min


def _clamped(since_epoch: dt.timedelta) -> dt.datetime:
    """The UTC instant `since_epoch` after 1970, clamped to [INSTANT_MIN, INSTANT_MAX]."""
    if since_epoch <= INSTANT_MIN - _EPOCH:
        return INSTANT_MIN
    if since_epoch >= INSTANT_MAX - _EPOCH:
        return INSTANT_MAX
    return _EPOCH + since_epoch


def date_param_range(text: str) -> tuple[dt.datetime, dt.datetime] | None:
    """[start, end) UTC instants covered by a FHIR date search value with its precision kept.

    A bound beyond what a datetime holds (the end of 9999-12-31, or 0001-01-01T00:00+01:00 in
    UTC) is clamped to INSTANT_MIN / INSTANT_MAX. Stored instants are server-clock milliseconds,
    so none lies outside [INSTANT_MIN, INSTANT_MAX): comparing with a clamped bound is exact,
    which makes the open end unbounded (`le9999-12-31` matches everything, `gt9999-12-31` nothing).
    """
    m = _DATE_PARAM.fullmatch(text)
    if not m:
        return None
    try:
        if m["time"] is not None:
            tz = dt.UTC if m["tz"] == "Z" else dt.datetime.strptime(m["tz"], "%z").tzinfo
            time = m["time"] if m["time"].count(":") == 2 else m["time"] + ":00"
            local = dt.datetime.fromisoformat(f"{m['y']}-{m['m']}-{m['d']}T{time}").replace(
                tzinfo=tz
            )
            step = dt.timedelta(seconds=1) if "." not in time else dt.timedelta(milliseconds=1)
            since = local - _EPOCH  # timedelta arithmetic: no overflow at either end of time
            return _clamped(since), _clamped(since + step)
        year, month, day = int(m["y"]), int(m["m"] or 1), int(m["d"] or 1)
        start = dt.datetime(year, month, day, tzinfo=dt.UTC)
        if m["d"]:
            days = 1
        elif m["m"]:
            days = calendar.monthrange(year, month)[1]
        else:
            days = 366 if calendar.isleap(year) else 365
        since = start - _EPOCH
        return _clamped(since), _clamped(since + dt.timedelta(days=days))
    except ValueError:
        return None
