"""Rendered per-subject answers, kept in this process while the data they came from is unchanged.

A subject's timeline and outcomes are a pure function of the study's protocol, the site's zone,
the evidence key, the subject's row and the patient's events. Every write that changes the
events or the row renews the row's `read_token` in its transaction (service.derivation.refresh),
so an answer rendered from data read together with token T is current for as long as the row
still holds T: a read looks the token up (one indexed row) and serves the stored bytes, or
renders, stores and serves. Tokens are random and never reused, so a subject deleted and
re-derived, or another process's write, can never revive an old answer. The stored screening
result (eligibility) keys on its own row's `read_token`, renewed by every write of that row.

Bounded by bytes, least recently used first out; each process has its own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar


class Sized(Protocol):
    """What the cache stores: something that knows its size in bytes."""

    def __len__(self) -> int: ...


V = TypeVar("V", bound=Sized)


class SubjectCache(Generic[V]):
    """(read, study, subject) → (version, rendered answer), at most `max_bytes` of answers."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Hashable, V]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, version: Hashable) -> V | None:
        """The answer stored for `key` if it was rendered at `version`, else None."""
        with self._lock:
            found = self._entries.get(key)
            if found is None or found[0] != version:
                return None
            self._entries.move_to_end(key)
            return found[1]

    def holds(self, key: Hashable) -> bool:
        """Whether some version of `key` is kept (a lookup of its current version may pay)."""
        return key in self._entries

    def put(self, key: Hashable, version: Hashable, value: V) -> None:
        """Keep `value` as the answer of `key` at `version` (replacing any other version)."""
        size = len(value)
        if size > self.max_bytes // 4:  # one huge answer must not empty the cache
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._entries[key] = (version, value)
            self._bytes += size
            while self._bytes > self.max_bytes and self._entries:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= len(dropped)

    def clear(self) -> None:
        """Forget every answer (a test, or a process returning memory)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def size_bytes(self) -> int:
        """Bytes of answers held now."""
        return self._bytes
