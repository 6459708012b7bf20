"""Slow and surplus clients: deadlines on a request's head and body, and a cap on connections.

uvicorn's HTTP protocol waits for a request head as long as the client likes (its only timer is the
keep-alive one, armed after an answer and cancelled by any byte), reads a body as slowly as it
trickles, and serves any number of connections: a few hundred slow sockets (slowloris) hold a
process. Two pieces bound that:

- `BodyDeadline` (ASGI middleware, so also under plain `uvicorn api.app:app`): a body that has not
  fully arrived `TRIALBRIDGE_BODY_TIMEOUT_SECONDS` after the request reached the app is answered
  408 in the route's error shape, with `Connection: close`, and one INFO line.
- `GuardedHttpToolsProtocol` (the protocol `trialbridge serve` gives uvicorn): a request head must
  be complete `TRIALBRIDGE_HEADER_TIMEOUT_SECONDS` after the connection opened or, on a kept-alive
  connection, after its first byte (else a bodiless 408 and the connection closes; an idle new
  connection just closes); a body still arriving after the app answered without reading it is cut
  off at the same body deadline; and a request on a connection beyond
  `TRIALBRIDGE_MAX_CONNECTIONS` is answered 503 with `Retry-After`, except the probes and the
  scrape, which must keep answering a busy process (a refused liveness probe restarts it).

Each refusal and cut-off is counted for /metrics (`service.infra.metrics`): the connection cap's
503s, and the head deadline's 408, the body deadline's 408 and the trickle's cut-off by reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import httptools
from starlette.types import Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from api.errors import BodyTimeout, is_fhir_path, json_error
from api.fhir_http import outcome_response
from api.rate_limit import EXEMPT
from api.request_log import route_of
from api.security_headers import SecurityHeaders
from fhir_mapping.issues import Issue
from service.infra import metrics
from service.infra.settings import Settings

log = logging.getLogger(__name__)
_CONNECTIONS_RETRY_AFTER = "1"
_REFUSAL_LOG_INTERVAL = 60.0  # at most one warning a minute about refused connections


class BodyDeadline:
    """ASGI middleware: the body must be complete within the body timeout, else 408."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seconds: float = scope["app"].state.settings.body_timeout_seconds
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        # a streamed $import may take longer than any fixed deadline: for it the deadline is the
        # longest silence between two parts of the body (its size is bounded apart)
        sliding = str(scope.get("path", "")).endswith("/$import")
        complete = False

        async def bounded() -> Message:
            nonlocal complete, deadline
            if complete:  # the body is in; waiting for a disconnect has no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                log.info(
                    "request body not received within %g s: answered 408 (%s)",
                    seconds,
                    route_of(scope),
                )
                metrics.count_slow_client("body_timeout")
                raise BodyTimeout(seconds) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if sliding:
                deadline = loop.time() + seconds
            return message

        await self.app(scope, bounded, send)


async def _too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
    """503 in the route's error shape; the connection closes, so one fewer is open."""
    message = "too many connections to this server process; retry shortly"
    headers = {"Retry-After": _CONNECTIONS_RETRY_AFTER, "Connection": "close"}
    if is_fhir_path(str(scope.get("path", ""))):
        response = outcome_response(503, [Issue("transient", message)], headers)
    else:
        response = json_error(503, "too_many_connections", message, headers=headers)
    await response(scope, receive, send)


_REFUSE = SecurityHeaders(_too_many_connections)


@functools.cache
def _settings() -> Settings:
    """The process's settings, read once (`serve` validated them before it started uvicorn)."""
    return Settings()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline, a body cut-off and a connection cap."""

    # shared by the process's connections (one event loop): refusals since the last warning
    _refused = 0
    _warned_at: float | None = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = _settings()
        self.head_timeout = settings.header_timeout_seconds
        self.body_timeout = settings.body_timeout_seconds
        self.max_connections = settings.max_connections
        self._serve = self.app
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_begun = False  # a byte of the next request has arrived
        self._body_due = 0.0
        self._body_complete = True
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        if self._head_timer is None:  # a kept-alive connection's next request: its own deadline
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def on_headers_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_begun = False
        self._body_due = self.loop.time() + self.body_timeout
        self._body_complete = False
        self.app = self._serve
        if self._over_cap():
            self.app = _REFUSE
            self._note_refusal()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._body_complete = True
        if self._body_timer is not None:  # the body ended after its answer: the connection idles
            self._body_timer.cancel()
            self._body_timer = None
            if self.timeout_keep_alive_task is None and not self.transport.is_closing():
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        answered = self.cycle is not None and self.cycle.response_complete
        if answered and not self._body_complete and not self.transport.is_closing():
            # answered without reading its body: the rest is read and dropped, and each byte would
            # cancel the keep-alive timer, so a trickle could hold the connection for ever
            wait = max(0.0, self._body_due - self.loop.time())
            self._body_timer = self.loop.call_later(wait, self._body_late)

    def _over_cap(self) -> bool:
        """This connection is beyond the cap, and the request is not a probe or the scrape."""
        if not self.max_connections or len(self.connections) <= self.max_connections:
            return False
        try:
            path = httptools.parse_url(self.url).path.decode("ascii", "replace")
        except httptools.HttpParserInvalidURLError:
            path = ""
        return path not in EXEMPT

    def _note_refusal(self) -> None:
        """One warning at the first refusal, then at most one a minute with the count."""
        metrics.count_connection_refused()
        cls = GuardedHttpToolsProtocol
        cls._refused += 1
        now = self.loop.time()
        if cls._warned_at is None or now - cls._warned_at >= _REFUSAL_LOG_INTERVAL:
            log.warning(
                "over the connection cap (TRIALBRIDGE_MAX_CONNECTIONS=%d): %d request(s) "
                "answered 503",
                self.max_connections,
                cls._refused,
            )
            cls._refused = 0
            cls._warned_at = now

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        idle = self.cycle is None or self.cycle.response_complete
        if self._head_begun and idle:
            log.info(
                "request head not received within %g s: answered 408, connection closed",
                self.head_timeout,
            )
            head = [STATUS_LINE[408]]
            for name, value in self.server_state.default_headers:
                head.extend([name, b": ", value, b"\r\n"])
            head.append(b"content-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.write(b"".join(head))
            metrics.count_slow_client("head_timeout")
        self.transport.close()  # a connection that sent nothing is idle: it just closes

    def _body_late(self) -> None:
        self._body_timer = None
        if not self._body_complete and not self.transport.is_closing():
            log.info(
                "request body still arriving %g s after its head, after the answer: "
                "connection closed",
                self.body_timeout,
            )
            metrics.count_slow_client("body_trickle")
            self.transport.close()
