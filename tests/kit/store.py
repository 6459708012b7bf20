"""Expected row counts of the store, stated as what differs from empty or from before."""

from __future__ import annotations

from tests.conftest import STORE_TABLES


def store_counts(**rows: int) -> dict[str, int]:
    """Rows in every store table: the ones named, and none in all the others."""
    unknown = set(rows) - set(STORE_TABLES)
    assert not unknown, f"not store tables: {sorted(unknown)}"
    return {table: rows.get(table, 0) for table in STORE_TABLES}


def grown(before: dict[str, int], **added: int) -> dict[str, int]:
    """The counts `before`, with `added` rows in the tables named and no change elsewhere."""
    unknown = set(added) - set(before)
    assert not unknown, f"not store tables: {sorted(unknown)}"
    return {table: n + added.get(table, 0) for table, n in before.items()}
