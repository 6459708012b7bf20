"""Helpers every repository shares: bounded IN-lists and compact JSON columns."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

# Bound parameters per IN-list: under SQLite's limit, and plans stay cheap on PostgreSQL.
CHUNK = 400


def chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    """`items` in slices of at most CHUNK, so no statement carries an unbounded parameter list."""
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def compact_json(value: Any) -> str:
    """Stable, compact JSON for text columns (sorted keys; dates as their ISO text)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
