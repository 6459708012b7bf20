"""The installed `trialbridge` console script, run as a real subprocess against a test database."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

TRIALBRIDGE = str(Path(sys.executable).parent / "trialbridge")


def run_trialbridge(
    database_url: str,
    *args: str,
    cwd: Path | None = None,
    timeout: float = 900,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `trialbridge ARGS` on the database, with no TRIALBRIDGE_* setting leaking in but `env`."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TRIALBRIDGE_")}
    environment.update(env or {})
    environment["DATABASE_URL"] = database_url
    return subprocess.run(
        [TRIALBRIDGE, *args],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
