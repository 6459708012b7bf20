"""Ages instead of birth dates: what the trial API shows of when a patient was born."""

from __future__ import annotations

import datetime as dt


def whole_years(born_first: dt.date, born_last: dt.date, on: dt.date) -> int | None:
    """Completed years on `on` of someone born in [born_first, born_last].

    A birth date known only to its month or year is taken at the middle of that span (as the
    cohort's age at ICB start is, CLINICAL.md); None when that is after `on` (bad data).
    """
    born = born_first + (born_last - born_first) / 2
    if born > on:
        return None
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))
