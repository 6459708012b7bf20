"""The one clock every test runs on: a fixed instant in a non-UTC zone, ticking on from there.

The instant is 22:30 on New Year's Eve in New York, which is already 03:30 on New Year's Day in
UTC: the process's local date (and year) differs from the UTC date the server works in, so a
local-versus-UTC date slip anywhere in the service or a test shows as a wrong day, every run,
instead of only when a run happens to straddle midnight.

`frozen()` patches the wall clock (datetime.now/today, time.time, time.gmtime/localtime, …) in C
for the whole process, so the uvicorn server threads the tests start see it too, and sets `TZ`
(inherited by subprocesses, which run on the real wall clock). Time ticks from the instant, so
timeouts and sleeps work; monotonic clocks (asyncio, httpx, socket timeouts) are never touched.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from zoneinfo import ZoneInfo

import time_machine

ZONE = "America/New_York"  # UTC-5 at the instant: behind UTC, so local is still the day before
FROZEN_LOCAL = dt.datetime(2026, 12, 31, 22, 30, tzinfo=ZoneInfo(ZONE))
FROZEN_INSTANT = FROZEN_LOCAL.astimezone(dt.UTC)  # 2027-01-01T03:30:00Z
FROZEN_DATE = FROZEN_INSTANT.date()  # the server's "today" (UTC): 2027-01-01
FROZEN_LOCAL_DATE = FROZEN_LOCAL.date()  # the process's local "today": 2026-12-31
# How long the ticking clock stays on both frozen days: until local midnight (05:00Z).
MARGIN = (
    dt.datetime.combine(FROZEN_LOCAL_DATE + dt.timedelta(days=1), dt.time(), FROZEN_LOCAL.tzinfo)
    - FROZEN_LOCAL
)

assert FROZEN_DATE != FROZEN_LOCAL_DATE, "the instant must put local and UTC on different days"


@contextmanager
def frozen() -> Iterator[time_machine.Traveller]:
    """Run the block at FROZEN_INSTANT in ZONE, ticking; restores the real clock and TZ after."""
    traveller = time_machine.travel(FROZEN_LOCAL, tick=True)
    started = traveller.start()  # a ZoneInfo destination sets TZ=ZONE and calls time.tzset()
    try:
        if os.environ.get("TZ") != ZONE or time.localtime().tm_gmtoff != -5 * 3600:
            raise RuntimeError(f"time-machine did not set the process time zone to {ZONE}")
        yield started
    finally:
        traveller.stop()


def check_on_frozen_days() -> None:
    """Fail loudly if the ticking clock has left the frozen days (a run longer than MARGIN)."""
    now = dt.datetime.now(dt.UTC)
    if (now.date(), now.astimezone().date()) != (FROZEN_DATE, FROZEN_LOCAL_DATE):
        raise RuntimeError(
            f"the test clock ticked past the frozen days ({now.isoformat()}; frozen at "
            f"{FROZEN_INSTANT.isoformat()}, margin {MARGIN}): the session ran too long"
        )
