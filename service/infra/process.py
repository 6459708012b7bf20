"""Process-wide preparation for ingest, shared by the HTTP app, the CLI and model-check workers."""

from __future__ import annotations

import ctypes
import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fhir_mapping.partial_dates import forget_parsed_dates
from fhir_mapping.references import parse_reference
from fhir_mapping.validation import preload_models
from service.infra.clock import fhir_instant

# A young-generation collection after this many net container allocations instead of 700.
# A large Bundle allocates millions of dicts and lists that live until its response is sent, so
# with the default every collection found nothing to free, and the full collections they
# triggered walked the whole request (~12 % of the request thread). Cycles are still collected.
YOUNG_COLLECTION_THRESHOLD = 50_000
OLDER_COLLECTION_THRESHOLDS = (20, 100)


def settle_process() -> None:
    """Load every model now, freeze what start-up built, and collect garbage less eagerly.

    Frozen objects (every model class and schema) are never traversed again; the thresholds
    keep collections for the garbage a request actually leaves.
    """
    preload_models()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *OLDER_COLLECTION_THRESHOLDS)


_paused = 0  # pauses in progress (threads)
_enabled_before = False  # whether the collector ran before the first of them
_pause_lock = threading.Lock()


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: for a computation that builds a large, live,
    acyclic structure (a cohort's decoded events and per-subject results).

    Each collection would walk everything built so far and free nothing; with them a cohort
    computation took two to three times as long (docs/performance.md, Cohorts). Reference
    counting still frees everything acyclic; cycles made inside wait for the first collection
    after it. Nested and concurrent pauses keep the collector off until the last one ends.
    """
    global _paused, _enabled_before
    with _pause_lock:
        if _paused == 0:
            _enabled_before = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _pause_lock:
            _paused -= 1
            if _paused == 0 and _enabled_before:
                gc.enable()


def _libc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None on another C library."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # the loaded C library's
    except (OSError, AttributeError):  # musl, macOS, Windows: nothing to call
        return None
    return trim


_MALLOC_TRIM = _libc_trim()


def return_free_memory(*forget: Callable[[], None]) -> bool:
    """After a large request: give what it freed back to the system; whether glibc could trim.

    A large request leaves hundreds of MB free inside the process, and two things keep them. The
    memo caches (parsed references and dates, instants, and those `forget` clears) hold a few
    thousand small objects made during the request, scattered over the memory it used: CPython
    frees a 1 MiB arena of small objects only once nothing in it is alive, so those few pin
    hundreds of arenas. They are dropped (they refill in a few requests). And glibc keeps freed
    blocks in its heaps (one per thread that allocated) until `malloc_trim(0)` releases every
    free page of every heap.
    """
    parse_reference.cache_clear()
    forget_parsed_dates()
    fhir_instant.cache_clear()
    for clear in forget:
        clear()
    gc.collect()
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
