"""Process preparation: models loaded and frozen, garbage collected at the ingest thresholds."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from service.infra.process import (
    OLDER_COLLECTION_THRESHOLDS,
    YOUNG_COLLECTION_THRESHOLD,
    settle_process,
)


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def test_settle_process_freezes_start_up_and_raises_the_young_threshold(restored_gc: None) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    settle_process()
    assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *OLDER_COLLECTION_THRESHOLDS)
    assert gc.get_freeze_count() > 100_000  # every model class and schema, not a handful
    assert gc.isenabled()


def test_cyclic_garbage_is_still_collected(restored_gc: None) -> None:
    settle_process()

    class Node:
        def __init__(self) -> None:
            self.me = self

    nodes = [Node() for _ in range(3)]
    refs = [weakref.ref(node) for node in nodes]
    del nodes
    assert all(ref() is not None for ref in refs)  # a cycle outlives its last name
    held = [[i] for i in range(2 * YOUNG_COLLECTION_THRESHOLD)]  # enough for a young collection
    del held
    assert [ref() for ref in refs] == [None, None, None]
