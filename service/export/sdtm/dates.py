"""ISO 8601 dates as SDTM writes them, study days by the CDISC rule, and epochs."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from fhir_mapping.partial_dates import PartialDate, parse_partial_date, study_day

# SDTMIG 3.4 section 4.4: YYYY[-MM[-DD[Thh:mm[:ss[.f]][zone]]]], reduced precision from the right.
ISO_8601 = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def is_iso8601(text: str) -> bool:
    """A complete or reduced-precision ISO 8601 date/time that names a real calendar day."""
    m = ISO_8601.fullmatch(text)
    if m is None:
        return False
    return parse_partial_date(text) is not None


def complete_day(text: str | None) -> dt.date | None:
    """The calendar day of a date/time known at least to the day (its date part), else None."""
    if not text or not is_iso8601(text):
        return None
    parsed = parse_partial_date(text)
    return parsed.day if parsed is not None else None


def sdtm_study_day(dtc: str | None, rfstdtc: str | None) -> int | None:
    """--DY: from the date parts of --DTC and RFSTDTC; no day 0; none for a partial date."""
    day, ref = complete_day(dtc), complete_day(rfstdtc)
    return study_day(day, ref) if day is not None and ref is not None else None


@dataclass(frozen=True, slots=True)
class Epochs:
    """One subject's epochs: screening from its start, treatment from Day 1 to its end, follow-up.

    A date before screening starts (a prior medication, medical history) has no epoch; a partial
    date has one only when its whole interval lies in one epoch.
    """

    screening_start: dt.date | None
    day1: dt.date | None
    treatment_end: dt.date | None

    def of_day(self, day: dt.date) -> str | None:
        """The epoch of one calendar day."""
        if self.day1 is not None and day >= self.day1:
            if self.treatment_end is not None and day > self.treatment_end:
                return "FOLLOW-UP"
            return "TREATMENT"
        if self.screening_start is not None and day >= self.screening_start:
            return "SCREENING"
        return None

    def of(self, date: PartialDate | None) -> str | None:
        """The epoch of a recorded date (its start)."""
        if date is None:
            return None
        first, last = self.of_day(date.first), self.of_day(date.last)
        return first if first == last else None
