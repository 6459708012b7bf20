"""How Bundle write time grows with the number of entries, per Bundle type, over real HTTP.

The service runs as a separate process (`python -m uvicorn api.app:app`, SQLite or a scratch
PostgreSQL database, authentication off on loopback). For each size (2k, 4k, 8k, 16k entries by
default) one collection, one message and one transaction Bundle of fresh Observations (each
referring to one Patient of the Bundle) is POSTed, and the wall-clock time is taken. It prints
the seconds, the time per entry, and the growth of the time per entry from the smallest size to
each size: about 1.0 is linear, 2.0 at 4× the entries would be quadratic.

It is a measurement, not a test: it exits 0 whatever it finds. Run from the repository root:

    .venv/bin/python bench/bundle_sizes.py [--sizes 2000,4000,8000,16000] [--backend sqlite|postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import (  # a sibling script, not a package
    DEFAULT_POSTGRES,
    HEADERS,
    postgres_database,
    running_service,
    sqlite_database,
)

KINDS = ("collection", "message", "transaction")


def bundle(kind: str, size: int) -> bytes:
    """`size` entries: a Patient, then Observations about it; fresh ids every call."""
    patient_id = str(uuid.uuid4())
    patient = {"resourceType": "Patient", "id": patient_id, "gender": "female"}
    entries: list[dict[str, Any]] = []
    if kind == "message":
        header = {
            "resourceType": "MessageHeader",
            "eventCoding": {"code": "admin-notify"},
            "source": {"endpoint": "urn:bench"},
        }
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": header})
    resources = [patient] + [
        {
            "resourceType": "Observation",
            "id": str(uuid.uuid4()),
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{patient_id}"},
            "valueQuantity": {"value": 60 + n % 40, "unit": "/min"},
        }
        for n in range(size - 1)
    ]
    for r in resources:
        entry: dict[str, Any] = {"fullUrl": f"urn:uuid:{r['id']}", "resource": r}
        if kind == "transaction":
            entry["request"] = {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
        entries.append(entry)
    return orjson.dumps({"resourceType": "Bundle", "type": kind, "entry": entries})


def timed_post(client: httpx.Client, body: bytes) -> float:
    """Seconds for one POST, insisting it succeeded."""
    started = time.perf_counter()
    answer = client.post("/fhir", content=body)
    elapsed = time.perf_counter() - started
    if answer.status_code != 200:
        raise SystemExit(f"POST answered {answer.status_code}: {answer.text[:500]}")
    return elapsed


@contextlib.contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    """The database the service writes to."""
    if backend == "sqlite":
        with sqlite_database(workdir) as url:
            yield url
    else:
        with postgres_database(DEFAULT_POSTGRES) as url:
            yield url


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,4000,8000,16000")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = stack.enter_context(database(args.backend, tmp))
        base = stack.enter_context(running_service(url, tmp / "service.log", 0))
        client = stack.enter_context(httpx.Client(base_url=base, headers=HEADERS, timeout=600))
        timed_post(client, bundle("transaction", 50))  # warm-up
        print(f"backend: {args.backend}")
        print(f"{'type':<12}{'entries':>9}{'seconds':>10}{'ms/entry':>10}{'growth':>8}")
        for kind in KINDS:
            first: float | None = None
            for size in sizes:
                per_entry = timed_post(client, bundle(kind, size)) / size
                first = first or per_entry
                print(
                    f"{kind:<12}{size:>9}{per_entry * size:>10.2f}"
                    f"{per_entry * 1000:>10.3f}{per_entry / first:>8.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
