"""Figures drawn from a snapshot's figure data, kept per process, drawn once per snapshot and format.

A snapshot stores each figure's data, never a rendering (drawing every figure in both formats was
most of a cohort refresh, issue 19). The first read of a figure draws it and keeps the bytes here,
keyed by study, snapshot digest, figure and format: a snapshot never changes, so neither does a
drawing of it, and a new snapshot has a new digest (its drawings are new keys; the old ones age out).
Concurrent first reads of one figure wait for one drawing. Memory is bounded by `max_bytes`, least
recently used first out. Kept in memory rather than stored: a read then never writes (reads may be
served by a replica), and a drawing costs well under a second with the data's size bounded
(service.stats.figures).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from service.stats.figures import FigureData, Format, draw

Key = tuple[str, str, str, str]  # study id, snapshot digest, figure name, format
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class FigureCache:
    """Drawn figures by (study, snapshot digest, name, format), bounded in bytes (LRU)."""

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        drawer: Callable[[FigureData, Format], bytes] = draw,
    ) -> None:
        self.max_bytes = max_bytes
        self.drawer = drawer
        self._bodies: OrderedDict[Key, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._drawing: dict[Key, threading.Lock] = {}
        self.draws = 0  # how many drawings this process made (tests, metrics)

    def _hit(self, key: Key) -> bytes | None:
        """The kept drawing, marked recently used (caller holds `_lock`)."""
        body = self._bodies.get(key)
        if body is not None:
            self._bodies.move_to_end(key)
        return body

    def get(self, key: Key, data: Callable[[], FigureData], fmt: Format) -> bytes:
        """The drawing for `key`, drawn from `data()` if no one has drawn it yet."""
        with self._lock:
            body = self._hit(key)
            if body is not None:
                return body
            drawing = self._drawing.setdefault(key, threading.Lock())
        with drawing:  # one drawing per key at a time; the others find it kept
            with self._lock:
                body = self._hit(key)
            if body is not None:
                return body
            try:
                body = self.drawer(data(), fmt)
            except BaseException:
                with self._lock:
                    self._drawing.pop(key, None)
                raise
            with self._lock:  # kept before the key's lock goes, so no one draws it twice
                self.draws += 1
                self._keep(key, body)
                self._drawing.pop(key, None)
        return body

    def _keep(self, key: Key, body: bytes) -> None:
        """Keep a drawing, dropping the least recently used ones beyond the bound."""
        if len(body) > self.max_bytes or key in self._bodies:
            return
        self._bodies[key] = body
        self._size += len(body)
        while self._size > self.max_bytes:
            _, dropped = self._bodies.popitem(last=False)
            self._size -= len(dropped)
