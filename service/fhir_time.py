"""Server clock and FHIR instant formatting (always UTC, always timezone-aware)."""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache

_DATE_PARAM = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<time>\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)"
    r"(?P<tz>Z|[+-]\d{2}:\d{2}))?)?)?"
)


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


def date_param_range(text: str) -> tuple[dt.datetime, dt.datetime] | None:
    """[start, end) instants covered by a FHIR date search value with its precision kept."""
    m = _DATE_PARAM.fullmatch(text)
    if not m:
        return None
    try:
        if m["time"] is not None:
            tz = dt.UTC if m["tz"] == "Z" else dt.datetime.strptime(m["tz"], "%z").tzinfo
            time = m["time"] if m["time"].count(":") == 2 else m["time"] + ":00"
            start = dt.datetime.fromisoformat(f"{m['y']}-{m['m']}-{m['d']}T{time}").replace(
                tzinfo=tz
            )
            step = dt.timedelta(seconds=1) if "." not in time else dt.timedelta(milliseconds=1)
            return start, start + step
        year, month, day = int(m["y"]), int(m["m"] or 1), int(m["d"] or 1)
        start = dt.datetime(year, month, day, tzinfo=dt.UTC)
        if m["d"]:
            return start, start + dt.timedelta(days=1)
        if m["m"]:
            nxt = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=dt.UTC)
            return start, nxt
        return start, dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC)
    except ValueError:
        return None
