"""bench/cohorts.py --quick, the CI smoke run: it measures both backends and prints its table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.postgres
def test_quick_run_prints_a_row_per_backend() -> None:
    """Exit 0; one table row per backend for the 200 planned patients; no growth rows (one size)."""
    server = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    command = [sys.executable, str(REPO / "bench" / "cohorts.py"), "--quick"]
    command += ["--postgres", server.rsplit("/", 1)[0]]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("backend "))
    assert "NCT s" in lines[header]
    assert "cirAE out p50/p95" in lines[header]
    rows = lines[header + 1 : header + 3]
    for row, backend in zip(rows, ("sqlite", "postgresql"), strict=True):
        cells = row.split()
        assert cells[:2] == [backend, "200"], row
        assert len(cells) == 16, row
        assert all(re.fullmatch(r"[0-9.]+(/[0-9.]+)?", c) for c in cells[2:]), row
    assert lines[header + 3] == ""
    assert lines[header + 4].startswith("targets at 10^5 patients")
