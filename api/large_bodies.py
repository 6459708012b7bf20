"""A per-process budget of large request bodies: a slot each, a short wait, then 503.

A large body costs several times its size while it is parsed and written (a 50 MB transaction
Bundle, ~8×), so a few at once can take a process's memory. A body larger than
`TRIALBRIDGE_LARGE_BODY_BYTES` (by its `Content-Length`, or by what has arrived when it is sent
chunked) takes one of `TRIALBRIDGE_LARGE_BODY_SLOTS` before its first byte is read; with none free
it waits up to `TRIALBRIDGE_LARGE_BODY_WAIT_SECONDS`, then is answered 503 with `Retry-After` (an
OperationOutcome `throttled` under /fhir, the JSON error `server_busy` elsewhere). The slot is
taken when the route reads the body, which under /fhir is after the token is checked, so a client
without a token holds none; and before anything is written, so a refused request wrote nothing.
It is released when the answer has been sent, and the C heap's free memory is then handed back to
the system (`return_free_memory`): without that, a process keeps its peak for good.

A route whose memory does not grow with its body (the streamed `$import`) marks the request
`streamed_body` and takes no slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_mapping.tokens import ascii_int
from service.infra.process import return_free_memory
from service.infra.settings import Settings

STREAMED = "streamed_body"  # request.state flag of a route that streams its body


class LargeBodiesBusy(StarletteHTTPException):
    """No slot for a large body within the wait; raised while reading it, rendered per path.

    An HTTPException, so FastAPI passes it on from a body read instead of calling it unparseable.
    """

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            503,
            "the server is busy with other large requests; retry after "
            f"{retry_after} second(s); nothing was written",
            headers={"Retry-After": str(retry_after)},
        )


class LargeBodyBudget:
    """The slots of one process (made on its event loop, at start-up)."""

    def __init__(
        self,
        threshold: int,
        slots: int,
        wait_seconds: float,
        release: Callable[[], object] = return_free_memory,
    ) -> None:
        self.threshold = threshold
        self.release = release  # run (in a thread) after each large request
        self.slots = slots
        self.wait_seconds = wait_seconds
        self.retry_after = max(1, math.ceil(wait_seconds))
        self._free = asyncio.Semaphore(slots) if slots > 0 else None
        self.in_use = 0  # for operators and tests

    @classmethod
    def for_settings(
        cls, settings: Settings, release: Callable[[], object] = return_free_memory
    ) -> LargeBodyBudget:
        """The budget the settings ask for."""
        return cls(
            settings.large_body_bytes,
            settings.large_body_slots,
            settings.large_body_wait_seconds,
            release,
        )

    async def take(self) -> None:
        """One slot, waiting at most `wait_seconds`; else LargeBodiesBusy."""
        if self._free is None:
            return
        if self._free.locked():
            await self._wait()
        else:
            await self._free.acquire()  # free: no wait at all
        self.in_use += 1

    async def _wait(self) -> None:
        assert self._free is not None
        try:
            async with asyncio.timeout(self.wait_seconds):
                await self._free.acquire()
        except TimeoutError:
            raise LargeBodiesBusy(self.retry_after) from None

    def give_back(self) -> None:
        """Release a slot taken by `take`."""
        if self._free is not None:
            self.in_use -= 1
            self._free.release()


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, when it has a valid one."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return ascii_int(value.decode("latin-1"))
    return None


class LargeBodies:
    """ASGI middleware: a slot for each large body while it is read and answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        budget: LargeBodyBudget | None = (
            getattr(scope["app"].state, "large_bodies", None) if scope["type"] == "http" else None
        )
        if budget is None:
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        received = 0
        large = False  # this body is (or has become) larger than the threshold
        holding = False

        async def counted() -> Message:
            nonlocal received, large, holding
            if not large and declared is not None and declared > budget.threshold:
                large = True
            if large and not holding and not _streamed(scope):
                await budget.take()  # before the first byte past the threshold is handed on
                holding = True
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > budget.threshold and not large:
                    large = True
                    if not _streamed(scope):
                        await budget.take()
                        holding = True
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            if holding:
                budget.give_back()
            if large:  # what the request took is free now: give it back to the system
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    await asyncio.to_thread(budget.release)


def _streamed(scope: Scope) -> bool:
    return bool(scope.get("state", {}).get(STREAMED))


def mark_streamed(request: Request) -> None:
    """This route streams its body in bounded memory: it takes no large-body slot."""
    request.state.streamed_body = True
