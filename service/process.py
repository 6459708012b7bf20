"""Process-wide preparation for ingest, shared by the HTTP app, the CLI and model-check workers."""

from __future__ import annotations

import gc

from fhir_mapping.validation import preload_models


def settle_process() -> None:
    """Load every model now, then take what start-up built out of the garbage collector's view.

    A Bundle allocates hundreds of thousands of containers, so full collections run often, and
    each one used to walk every model class and schema as well (~10 % of ingest time); frozen
    objects are never traversed again.
    """
    preload_models()
    gc.collect()
    gc.freeze()
