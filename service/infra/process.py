"""Process-wide preparation for ingest, shared by the HTTP app, the CLI and model-check workers."""

from __future__ import annotations

import gc

from fhir_mapping.validation import preload_models

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
