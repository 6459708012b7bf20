"""HTTP to one hospital source: SMART Backend Services tokens, retries, and the allowed hosts.

Every request goes through `HospitalClient.send`, which refuses any URL outside the source's
base URL, its declared file host and its token endpoint before anything is sent, never follows a
redirect on its own, honours `Retry-After` on 429/503 (capped), retries network errors with
backoff, gives up after the configured retries with a `PullError`, and answers a 401 by fetching a
new token once and sending the request again.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from joserfc import jwt

from service.fhir.pull.sources import HospitalSource

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 240  # seconds; SMART allows at most 5 minutes
REFRESH_MARGIN = 30  # seconds before a token's expiry when a new one is fetched
_RETRY_STATUSES = {429, 503}


class PullError(Exception):
    """A pull that cannot go on: the message says why, for an operator (no patient data)."""


class RefusedUrlError(PullError):
    """A URL outside the source's allowed hosts: refused, never requested."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: retries of one request, the longest wait, the wait function (a seam)."""

    max_retries: int = 5
    max_wait_seconds: float = 120.0
    timeout_seconds: float = 60.0
    sleep: Callable[[float], None] = time.sleep


def origin(url: str) -> str:
    """scheme://host[:port], lower-cased, default ports left out."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    port = parts.port
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date), None if absent."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


class HospitalClient:
    """Requests to one source, with its token; thread-safe enough for one pull at a time."""

    def __init__(
        self,
        source: HospitalSource,
        policy: RetryPolicy,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.policy = policy
        self.clock = clock
        self._http = httpx.Client(
            transport=transport, timeout=policy.timeout_seconds, follow_redirects=False
        )
        self._token: str | None = None
        self._expires = 0.0
        self._token_url: str | None = source.token_url
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    # -- the allowed hosts -----------------------------------------------------------------------

    def allowed(self, url: str) -> bool:
        """Under the base URL (same origin, path below it), on the file host, or the token URL."""
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or parts.username or parts.password:
            return False
        base = self.source.base_url
        if origin(url) == origin(base):
            base_path = urlsplit(base).path.rstrip("/")
            if parts.path == base_path or parts.path.startswith(base_path + "/"):
                return True
        if self.source.file_host is not None and origin(url) == self.source.file_host:
            return True
        return self._token_url is not None and url == self._token_url

    def check(self, url: str, what: str) -> str:
        """The URL, or a RefusedUrlError naming what it was for and its origin (nothing else of it)."""
        if not self.allowed(url):
            raise RefusedUrlError(
                f"refused {what} at {origin(url) or 'an invalid URL'}: outside the source's "
                "base URL and declared file host"
            )
        return url

    # -- tokens ----------------------------------------------------------------------------------

    def token_url(self) -> str:
        """The configured token URL, or the one the source's smart-configuration names."""
        if self._token_url is not None:
            return self._token_url
        found = self.send_json(
            "GET",
            f"{self.source.base_url}/.well-known/smart-configuration",
            "the smart-configuration",
            auth=False,
        )
        url = found.get("token_endpoint") if isinstance(found, dict) else None
        if not isinstance(url, str):
            raise PullError("the source's smart-configuration names no token_endpoint")
        if not self.allowed(url):  # a discovered endpoint elsewhere must be configured by name
            raise RefusedUrlError(
                f"refused the discovered token endpoint at {origin(url)}: outside the source's "
                "base URL and declared file host; set token_url for the source to trust it"
            )
        self._token_url = url
        return url

    def assertion(self, token_url: str) -> str:
        """A signed client assertion: iss = sub = our client id, aud = the token URL, a new jti."""
        key = self.source.signing_key()
        now = int(self.clock())
        header = {"alg": self.source.algorithm, "typ": "JWT"}
        kid = self.source.key_id or key.kid
        if kid:
            header["kid"] = kid
        claims = {
            "iss": self.source.client_id,
            "sub": self.source.client_id,
            "aud": token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(header, claims, key, algorithms=[self.source.algorithm])

    def token(self, *, renew: bool = False) -> str:
        """A current access token, fetched again shortly before it expires (or when `renew`)."""
        with self._lock:
            if renew or self._token is None or self.clock() >= self._expires - REFRESH_MARGIN:
                self._fetch_token()
            assert self._token is not None
            return self._token

    def _fetch_token(self) -> None:
        url = self.token_url()
        form = {
            "grant_type": "client_credentials",
            "scope": self.source.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(url),
        }
        with self._exchange("POST", url, "the token endpoint", auth=False, data=form) as answer:
            answer.read()
        if answer.status_code != 200:
            raise PullError(f"the token endpoint refused our assertion (HTTP {answer.status_code})")
        try:
            body = answer.json()
            token = body["access_token"]
            lifetime = float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            raise PullError("the token endpoint's answer holds no access_token") from None
        if not isinstance(token, str) or not token:
            raise PullError("the token endpoint's answer holds no access_token")
        self._token, self._expires = token, self.clock() + lifetime

    # -- requests --------------------------------------------------------------------------------

    @contextmanager
    def stream(
        self, method: str, url: str, what: str, *, auth: bool = True, **kwargs: Any
    ) -> Iterator[httpx.Response]:
        """An open response to a request, after retries; the caller reads it (line by line)."""
        with self._exchange(method, url, what, auth=auth, **kwargs) as response:
            yield response

    def send_json(self, method: str, url: str, what: str = "a FHIR request", **kwargs: Any) -> Any:
        """A request whose 200 answer is JSON; any other answer is a PullError."""
        with self._exchange(method, url, what, **kwargs) as answer:
            answer.read()
        if answer.status_code != 200:
            raise PullError(f"{what} answered HTTP {answer.status_code}")
        try:
            return answer.json()
        except ValueError:
            raise PullError(f"{what} answered with invalid JSON") from None

    @contextmanager
    def _exchange(
        self, method: str, url: str, what: str, *, auth: bool = True, **kwargs: Any
    ) -> Iterator[httpx.Response]:
        self.check(url, what)
        headers = dict(kwargs.pop("headers", {}))
        renewed = False
        attempt = 0
        while True:
            if auth:
                headers["Authorization"] = f"Bearer {self.token()}"
            request = self._http.build_request(method, url, headers=headers, **kwargs)
            try:
                response = self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                attempt = self._wait(attempt, None, what, type(exc).__name__)
                continue
            if response.status_code == 401 and auth and not renewed:
                response.close()
                renewed = True
                self.token(renew=True)  # one new token, one more try
                continue
            if response.status_code in _RETRY_STATUSES:
                asked = retry_after(response.headers.get("retry-after"), _utc(self.clock()))
                response.close()
                attempt = self._wait(attempt, asked, what, f"HTTP {response.status_code}")
                continue
            try:
                yield response
            finally:
                response.close()
            return

    def _wait(self, attempt: int, asked: float | None, what: str, reason: str) -> int:
        """Sleep before the next try (Retry-After, else backoff; capped) or give up."""
        if attempt >= self.policy.max_retries:
            raise PullError(
                f"gave up on {what} after {attempt + 1} attempt(s): last answer {reason}"
            )
        wait = asked if asked is not None else min(2.0**attempt, 30.0)
        self.policy.sleep(min(wait, self.policy.max_wait_seconds))
        return attempt + 1


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)
