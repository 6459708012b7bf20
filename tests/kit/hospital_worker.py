"""A `trialbridge worker` whose hospital is respx (tests/kit/hospital.py), run as its own process.

A job worker is a process of its own, which respx in the test's process cannot reach, so this
launcher mocks the hospital inside the worker's process and then runs the worker's real entry
point. Everything else goes out for real (PostgreSQL through psycopg; 127.0.0.1 passes through).
When the worker ends (SIGTERM), what the hospital saw is written to RECORD_FILE as JSON.

    python -m tests.kit.hospital_worker PUBLIC_JWK_FILE RECORD_FILE
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import respx
from joserfc.jwk import RSAKey

from api import cli
from tests.kit.hospital import hospital_for_everyone


def main(argv: Sequence[str]) -> int:
    """Run the worker under the hospital's routes; record the hospital's side afterwards."""
    key_file, record_file = argv
    hospital = hospital_for_everyone(RSAKey.import_key(json.loads(Path(key_file).read_text())))
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        mock.route().mock(side_effect=hospital.router.handler)
        code = cli.main(["worker"])
    record = {
        "kickoffs": hospital.kickoffs,
        "issued": hospital.issued,
        "hosts": sorted({call.request.url.host for call in hospital.router.calls}),
    }
    Path(record_file).write_text(json.dumps(record))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
