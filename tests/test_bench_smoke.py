"""The other benchmarks as smoke runs: each still runs end to end and prints its figure.

A benchmark that nobody runs rots quietly (a renamed setting, a changed answer); these runs are
too short to measure anything, so they check only that the bench finishes and prints the line
its readers look for. bench/cohorts.py has its own (tests/test_bench_cohorts.py).
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.infra.settings import Settings

REPO = Path(__file__).resolve().parents[1]

# bench script and arguments -> a line the run must print (a regular expression)
RUNS = {
    "small_transactions": (
        ["small_transactions.py", "--seconds", "1.5", "--config", "sqlite"],
        r"^\s+ratio:\s+\d+\.\d\d\s+\(target 0\.3\)$",
    ),
    "matching": (
        ["matching.py", "--sizes", "1000"],
        r"^\s+1000\s+20\s+\d+\s+\d+\.\d\d",
    ),
    "bundle_sizes": (
        ["bundle_sizes.py", "--sizes", "100,200", "--backend", "sqlite"],
        r"^transaction\s+200\s+\d+\.\d\d\s+\d+\.\d{3}\s+\d+\.\d\d$",
    ),
    "write_pages": (
        ["write_pages.py", "--warm", "20", "--count", "10"],
        r"^sqlite: \d+\.\d WAL pages of \d+ bytes a transaction$",
    ),
    "subject_reads": (
        ["subject_reads.py", "--quick", "--endpoints", "timeline", "--out", "/dev/null"],
        r"^timeline: \d+ req/s \((met|NOT met) ≥ 1000\); p99 at 500/s \d+\.\d\d ms ",
    ),
    "audit_reads": (
        ["audit_reads.py", "--seconds", "1", "--backend", "sqlite", "--threads", "1"],
        r"^sqlite\s+1\s+\d+\s+\d+\s+\d+\.\d\d\s+>= 0\.9 (met|MISSED)$",
    ),
}


@pytest.mark.slow
def test_small_transactions_writes_its_figures(tmp_path: Path) -> None:
    """`--out` keeps the run's figures as JSON (bench/results/), the printed ratio among them."""
    out = tmp_path / "small.json"
    command = [sys.executable, str(REPO / "bench" / "small_transactions.py")]
    command += ["--seconds", "1.5", "--config", "sqlite", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())["sqlite"]
    printed = re.search(r"^\s+ratio:\s+(\d+\.\d\d)", done.stdout, re.MULTILINE)
    assert printed is not None, done.stdout[-3000:]
    assert abs(figures["ratio"] - float(printed.group(1))) <= 0.0055  # 3 places vs 2 printed
    assert figures["clients"] == 1
    assert figures["target"] == 0.3
    assert figures["end_to_end_resources_per_s"] > 0


@pytest.mark.slow
def test_ingest_prints_and_writes_its_figures(tmp_path: Path) -> None:
    """bench/ingest.py --quick: the ratio line, and the same figures as JSON with `--out`."""
    out = tmp_path / "ingest.json"
    command = [sys.executable, str(REPO / "bench" / "ingest.py"), "--quick", "--backend"]
    command += ["sqlite", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = re.search(
        r"^sqlite: (\d+) res/s end-to-end, validation-only (\d+) res/s, ratio (\d\.\d\d) ",
        done.stdout,
        re.MULTILINE,
    )
    assert printed is not None, done.stdout[-3000:]
    figures = json.loads(out.read_text())
    sqlite = figures["sqlite"]
    assert str(sqlite["end_to_end_resources_per_s"]) == printed.group(1)
    assert str(sqlite["validation_resources_per_s"]) == printed.group(2)
    assert abs(sqlite["ratio"] - float(printed.group(3))) <= 0.0055  # 3 places vs 2 printed
    assert (figures["target"], "postgresql" in figures) == (0.6, False)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_bench_runs_and_prints_its_figure(name: str) -> None:
    """Exit 0 and the figure's line, from the repository's own data only."""
    args, expected = RUNS[name]
    command = [sys.executable, str(REPO / "bench" / args[0]), *args[1:]]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(expected, done.stdout, re.MULTILINE), done.stdout[-3000:]


def test_measured_services_run_without_rate_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """One benchmark client posts faster than a client may by default (200 requests/s): the
    services the benchmarks start turn the limits off, or a faster service would measure 429s."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    ingest = importlib.import_module("ingest")  # a bench script, not a package
    for name, value in ingest.MEASURED_SERVICE_ENV.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.rate_limit_client_per_second == 0
    assert settings.rate_limit_address_per_second == 0
    assert settings.auth_disabled is True
