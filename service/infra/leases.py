"""Keeping a database lease alive while long work runs (cohort refreshes, pulls, bulk jobs)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine
from sqlmodel import Session

from service.infra.clock import utcnow
from service.infra.db import writing

log = logging.getLogger(__name__)

Renew = Callable[[Session, dt.datetime], bool]


class LeaseKeeper:
    """Renews a lease every third of its length while the work runs; notes when it was lost.

    `renew(session, until)` extends the lease to `until` and says whether it was still held.
    """

    def __init__(self, engine: Engine, renew: Renew, seconds: float, what: str) -> None:
        self.engine, self.renew, self.seconds, self.what = engine, renew, seconds, what
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{what}-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                until = utcnow() + dt.timedelta(seconds=self.seconds)
                with writing(self.engine) as session:
                    kept = self.renew(session, until)
            except Exception:  # the database may be briefly away; the lease has time left
                log.warning("renewing a %s lease failed; will retry", self.what, exc_info=True)
                continue
            if not kept:
                self.lost = True
                return
