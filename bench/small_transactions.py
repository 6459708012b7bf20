"""One-patient transactions (17 small entries, an interface engine's shape) over real HTTP, as a
share of the raw fhir.resources validation rate of the same resources.

The service runs as a separate process (`python -m uvicorn api.app:app`, authentication off on
loopback, SQLite by default or a scratch PostgreSQL database). One client POSTs transaction
Bundles of a Patient and 16 Observations (fresh ids each) for `--seconds`, after a warm-up; then
the same resources are validated in this process with
`get_fhir_model_class(type).model_validate_json(raw)`. Rounds alternate so machine drift touches
both sides. It prints both rates and their ratio (issue 19's target: 0.3 with one client on SQLite).
A measurement, not a test. Run from the repository root:

    .venv/bin/python bench/small_transactions.py [--seconds 10] [--backend sqlite|postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import orjson
from fhir.resources.R4B import get_fhir_model_class

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bundle_sizes import bundle, database  # a sibling script, not a package
from ingest import HEADERS, running_service

ENTRIES = 17
ROUNDS = 3


def post_round(client: httpx.Client, seconds: float) -> tuple[int, float, list[bytes]]:
    """(resources written, seconds taken, the Bundles posted) for one timed round."""
    bodies = [bundle("transaction", ENTRIES) for _ in range(int(seconds * 400))]
    written, started = 0, time.perf_counter()
    posted = []
    for body in bodies:
        answer = client.post("/fhir", content=body)
        if answer.status_code != 200:
            raise SystemExit(f"POST answered {answer.status_code}: {answer.text[:300]}")
        written += ENTRIES
        posted.append(body)
        if time.perf_counter() - started >= seconds:
            break
    return written, time.perf_counter() - started, posted


def validate_round(bundles: list[bytes]) -> tuple[int, float]:
    """(resources validated, seconds) for the resources of `bundles`, as raw JSON."""
    payloads = [
        (e["resource"]["resourceType"], orjson.dumps(e["resource"]))
        for b in bundles
        for e in orjson.loads(b)["entry"]
    ]
    started = time.perf_counter()
    for resource_type, raw in payloads:
        get_fhir_model_class(resource_type).model_validate_json(raw)
    return len(payloads), time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args(argv)
    served = validated = 0
    served_s = validated_s = 0.0
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = stack.enter_context(database(args.backend, tmp))
        base = stack.enter_context(running_service(url, tmp / "service.log", 0))
        client = stack.enter_context(httpx.Client(base_url=base, headers=HEADERS, timeout=60))
        post_round(client, 2.0)  # warm-up
        for _ in range(ROUNDS):
            n, s, posted = post_round(client, args.seconds / ROUNDS)
            served, served_s = served + n, served_s + s
            n, s = validate_round(posted)
            validated, validated_s = validated + n, validated_s + s
    end_to_end, raw = served / served_s, validated / validated_s
    print(f"backend: {args.backend}, one client, {ENTRIES} entries a transaction")
    print(f"end to end: {end_to_end:8.0f} resources/s")
    print(f"validation: {raw:8.0f} resources/s")
    print(f"ratio:      {end_to_end / raw:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
