"""Public key sets to verify signatures with: from a file, or fetched from a URL and cached.

A URL is fetched under the webhook rules (http(s) only, no credentials, no internal addresses
unless allowed; the connection goes to the address that was checked), with a short timeout and
a size cap, and kept for five minutes so a key rotation is picked up without a restart.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from joserfc.jwk import KeySet

from service.errors import ApiError
from service.notifications.outbound import check_form, pinned_client

CACHE_SECONDS = 300.0
TIMEOUT_SECONDS = 5.0
MAX_JWKS_BYTES = 256 * 1024  # a JWKS of a few dozen keys is a few KiB; more is not a key set


def _parsed(raw: Any) -> KeySet:
    keys = KeySet.import_key_set(raw)
    if any(k.is_private for k in keys):
        raise ValueError("a JWKS for verification holds public keys only")
    return keys


def _capped(answer: httpx.Response) -> bytes:
    """The body, read no further than MAX_JWKS_BYTES (a hostile server cannot fill memory)."""
    body = bytearray()
    for chunk in answer.iter_bytes():
        body += chunk
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"the key set is larger than {MAX_JWKS_BYTES} bytes")
    return bytes(body)


class KeySets:
    """Key sets by source, cached for CACHE_SECONDS."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, KeySet]] = {}

    def from_file(self, path: Path) -> KeySet:
        """The key set in a file (re-read after the cache time)."""
        return self._cached(f"file:{path}", lambda: _parsed(json.loads(path.read_text("utf-8"))))

    def from_url(self, url: str) -> KeySet:
        """The key set at a URL, fetched under the outbound-URL rules."""

        def fetch() -> KeySet:
            check_form(url)
            # resolved once and checked; connects to the checked address
            pinned = pinned_client(allow_private=self.allow_private, timeout=TIMEOUT_SECONDS)
            with pinned as client, client.stream("GET", url, follow_redirects=False) as answer:
                answer.raise_for_status()
                body = _capped(answer)
            return _parsed(json.loads(body))

        return self._cached(f"url:{url}", fetch)

    def _cached(self, key: str, load: Any) -> KeySet:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < CACHE_SECONDS:
                return hit[1]
        try:
            keys: KeySet = load()
        except (OSError, ValueError, TypeError, KeyError, httpx.HTTPError, ApiError) as exc:
            raise KeySetUnavailable(f"{key}: {exc}") from exc
        with self._lock:
            self._cache[key] = (now, keys)
        return keys


class KeySetUnavailable(Exception):  # noqa: N818 (a condition, not an API error)
    """The keys could not be read or fetched; the token or assertion cannot be verified."""
