"""The service with its read audit switched off: the baseline of bench/audit_reads.py only.

`uvicorn bench.audit_app:app` runs the real app, except that audit records of requests that
write nothing are dropped instead of committed. The product has no such switch on purpose.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.app import create_app
from service.repositories.audit_records import Recorded


class _Unrecorded:
    """Stands in for service.audit.trail.AuditTrail: answers at once, stores nothing."""

    async def record(self, record: Recorded) -> None:
        """Forget the record."""

    def stop(self) -> None:
        """Nothing is queued."""


app = create_app()
_started = app.router.lifespan_context


@asynccontextmanager
async def _lifespan(running: FastAPI) -> AsyncIterator[None]:
    async with _started(running):
        real = running.state.audit
        running.state.audit = _Unrecorded()
        try:
            yield
        finally:
            running.state.audit = real


app.router.lifespan_context = _lifespan
