"""The README's quickstart, executed as written against the real service.

The quickstart's first fenced block (```sh) is the install-and-run command, which must be the one
"The two commands" documents: this environment already did the install, so the test starts only its
last step, `trialbridge serve`, as a subprocess on a free loopback port with its own SQLite file
(`DATABASE_URL`). Every following ```bash block then runs, in order, in one bash session with
`TB` pointing at that service and `set -eo pipefail` (the README uses `curl -fsS`, so an HTTP error
fails its step). A ```text block right after a bash block is that step's expected output, compared
line by line (runs of spaces are one space; `…` stands for an id that differs on every install).
The "Try a correction" steps of examples/README.md run last, in the same session.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
NCT = "NCT06088771"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The two commands, exactly as documented (the install is the environment's job, not this test's).
INSTALL_AND_RUN = (
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/trialbridge serve"
)
INSTALL_AND_TEST = (
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
)
_FENCE = re.compile(r"^```(?P<lang>[a-z]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
_MARK = "@@trialbridge-quickstart-step@@"


@dataclass(frozen=True)
class Step:
    """A bash block and the output shown after it (None when the README shows none)."""

    where: str
    script: str
    expected: str | None


def section(markdown: str, heading: str) -> str:
    """The text under a `## ` or `### ` heading that starts with `heading`, up to the next one."""
    match = re.search(rf"^(#{{2,3}}) {re.escape(heading)}.*$", markdown, re.MULTILINE)
    assert match is not None, f"no heading {heading!r}"
    level = match.group(1)
    end = re.compile(rf"^#{{2,{len(level)}}} ", re.MULTILINE).search(markdown, match.end())
    return markdown[match.end() : end.start() if end else len(markdown)]


def fences(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order."""
    return [(m["lang"], m["body"]) for m in _FENCE.finditer(text)]


def steps(text: str, where: str) -> list[Step]:
    """The bash blocks of a section, each with the text block that follows it, if any."""
    blocks = fences(text)
    out: list[Step] = []
    for i, (lang, body) in enumerate(blocks):
        if lang != "bash":
            continue
        after = blocks[i + 1] if i + 1 < len(blocks) else None
        expected = after[1] if after is not None and after[0] == "text" else None
        out.append(Step(f"{where}, bash block {len(out) + 1}", body, expected))
    return out


def quickstart() -> tuple[str, list[Step]]:
    """The quickstart's start command (its first block) and the steps that follow it."""
    text = section(README.read_text(encoding="utf-8"), "Quickstart")
    first_lang, first_body = fences(text)[0]
    assert first_lang == "sh", "the quickstart must start with the install-and-run command (```sh)"
    return first_body.strip(), steps(text, "README quickstart")


def correction() -> list[Step]:
    """examples/README.md's "Try a correction" steps."""
    text = section((EXAMPLES / "README.md").read_text(encoding="utf-8"), "Try a correction")
    return steps(text, "examples/README.md, Try a correction")


def _normal(line: str) -> str:
    return " ".join(line.split())


def assert_output(step: Step, got: str) -> None:
    """The step printed exactly the lines the README shows (`…` = one id-like token)."""
    if step.expected is None:
        return
    want = [_normal(line) for line in step.expected.strip("\n").split("\n")]
    lines = [_normal(line) for line in got.strip("\n").split("\n")]
    assert len(lines) == len(want), f"{step.where}: expected\n{step.expected}\ngot\n{got}"
    for want_line, got_line in zip(want, lines, strict=True):
        pattern = re.escape(want_line).replace("…", r"[\w-]+")
        assert re.fullmatch(pattern, got_line), f"{step.where}: {got_line!r} != {want_line!r}"


# -- the README's shape -------------------------------------------------------------------------


def test_readme_keeps_the_two_commands_and_starts_the_quickstart_with_the_first() -> None:
    """The two commands are unchanged, and the quickstart starts the service with the first of them."""
    start, quick = quickstart()
    assert start == INSTALL_AND_RUN
    two = [
        body.strip()
        for lang, body in fences(section(README.read_text(encoding="utf-8"), "The two commands"))
    ]
    assert two == [INSTALL_AND_RUN, INSTALL_AND_TEST]
    assert len(quick) >= 6
    for step in [*quick, *correction()]:
        for call in re.findall(r"\bcurl\b[^|\n]*", step.script):
            assert call.startswith("curl -fsS"), f"{step.where}: {call!r} must fail on HTTP errors"


# -- the quickstart, run ------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """The quickstart's service: its URL and the folder the commands run in."""

    url: str
    workdir: Path
    token: str  # the local admin's, as the quickstart gets it

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header of the admin's token."""
        return {"authorization": f"Bearer {self.token}"}


def _default_env() -> dict[str, str]:
    """The environment without the test suite's authentication switch: the service's default."""
    return {k: v for k, v in os.environ.items() if k != "TRIALBRIDGE_AUTH_DISABLED"}


def _serve_argv(start: str, port: int) -> list[str]:
    """The install-and-run command's last step, on this environment's venv and a free port."""
    program, *args = start.split(" && ")[-1].split()
    assert program == ".venv/bin/trialbridge", start
    return [str(BIN / "trialbridge"), *args, "--host", "127.0.0.1", "--port", str(port)]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    """`trialbridge serve` from the quickstart, in a fresh folder holding the examples."""
    missing = [tool for tool in ("curl", "jq") if shutil.which(tool) is None]
    assert not missing, f"the quickstart needs {', '.join(missing)} (README: test prerequisites)"
    start, _ = quickstart()
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    (tmp_path / ".venv").symlink_to(BIN.parent)  # the quickstart runs .venv/bin/trialbridge
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**_default_env(), "DATABASE_URL": f"sqlite:///{tmp_path}/var/trialbridge.db"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _serve_argv(start, port),
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its model-check worker ends with it
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        minted = subprocess.run(
            [
                str(BIN / "trialbridge"),
                "token",
                "admin",
                "--key",
                "var/admin-key.jwk",
                "--url",
                url,
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert minted.returncode == 0, minted.stderr
        yield Service(url, tmp_path, minted.stdout.strip())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def run_steps(service: Service, script_steps: list[Step]) -> list[str]:
    """Run the steps in one bash session; each step's output, in order."""
    marker = "\n".join(f"{step.script}\nprintf '\\n%s\\n' '{_MARK}'" for step in script_steps)
    result = subprocess.run(
        ["bash", "-c", f"set -eo pipefail\n{marker}\n"],
        cwd=service.workdir,
        env={**_default_env(), "TB": service.url, "AUTH": f"Authorization: Bearer {service.token}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    outputs = result.stdout.split(f"\n{_MARK}\n")
    done = len(outputs) - 1
    assert result.returncode == 0, (
        f"{script_steps[done].where if done < len(script_steps) else 'after the last step'} failed "
        f"(exit {result.returncode}):\n{script_steps[min(done, len(script_steps) - 1)].script}\n"
        f"stdout:\n{outputs[-1]}\nstderr:\n{result.stderr}"
    )
    return outputs[:done]


def _get(service: Service, path: str, **params: Any) -> Any:
    response = httpx.get(
        f"{service.url}/api/v1{path}", params=params, headers=service.auth, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_quickstart_runs_as_written(service: Service) -> None:
    """Each quickstart step succeeds and prints what the README shows; the API agrees."""
    _, quick = quickstart()
    outputs = run_steps(service, quick)
    for step, got in zip(quick, outputs, strict=True):
        assert_output(step, got)

    (subject,) = _get(service, f"/studies/{NCT}/subjects")["subjects"]
    assert (subject["subject_number"], subject["status"]) == ("101-001", "on-study")
    assert (subject["enrolled_on"], subject["day1"]) == ("2025-02-24", "2025-03-10")
    sid = subject["subject_id"]
    eligibility = _get(service, f"/studies/{NCT}/subjects/{sid}/eligibility")
    assert (eligibility["overall"], eligibility["at_enrollment"]) == ("eligible", "eligible")
    assert eligibility["counts"] == {"met": 4, "not_met": 5, "unknown": 0}
    assert len(_get(service, f"/studies/{NCT}/subjects/{sid}/timeline")["events"]) == 26
    (deviation,) = _get(service, f"/studies/{NCT}/deviations", subject=sid)["deviations"]
    assert (deviation["rule"], deviation["severity"], deviation["status"]) == (
        "surgery_window",
        "major",
        "open",
    )
    assert deviation["study_day"] == 25
    for plot in ("swimmer", "efs"):
        assert (service.workdir / "var" / f"{plot}.png").read_bytes().startswith(PNG_SIGNATURE)

    again = httpx.post(
        f"{service.url}/fhir",
        content=(EXAMPLES / "nct06088771-patient.json").read_bytes(),
        headers={"content-type": "application/fhir+json", **service.auth},
        timeout=60,
    )
    assert again.status_code == 200, again.text
    assert {e["response"]["status"] for e in again.json()["entry"]} == {"200 OK"}  # a replay
    assert _get(service, f"/studies/{NCT}/deviations")["deviations"] == [deviation]

    fix = correction()
    for step, got in zip(fix, run_steps(service, fix), strict=True):
        assert_output(step, got)
    resolved = _get(service, f"/studies/{NCT}/deviations/{deviation['id']}")
    assert (resolved["status"], resolved["rule"]) == ("resolved", "surgery_window")
    assert [h["action"] for h in resolved["history"]] == ["opened", "resolved"]
