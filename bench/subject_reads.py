"""Per-subject reads over HTTP with wrk: throughput at full speed, and latency at a fixed rate.

Issue 19's target: ≥ 1,000 requests/s on one worker process, p99 ≤ 10 ms at 500 requests/s.

One command: generates a seeded cohort (`bench/generate.py`; reads do not depend on its size),
loads it with `trialbridge load` into a fresh SQLite file (or a scratch PostgreSQL database with
`--backend postgresql`), starts `trialbridge serve` (one worker, authentication on, the rate
limits raised out of the way but still running, background cohort refresh off so nothing else
runs in the process), gets an access token the way a client does, then for each per-subject
endpoint:

* max: wrk with `--connections` keep-alive connections, rotating over every subject (or screening
  candidate), requests per second and wrk's latency percentiles;
* paced: wrk at `--rate` requests/s (one connection per wrk thread, each on a fixed schedule:
  `bench/subject_reads.lua`), latency from the send and from when the request was due.

Needs the `wrk` program (Debian package `wrk`: `apt-get install wrk`); exits 2 without it.
`--profile ENDPOINT` also records the server with py-spy (a bench dependency: `pip install
py-spy`) during that endpoint's full-speed run, a flame graph into bench/results/. Results (and
`uptime` load before each run, the machine is shared) go to bench/results/subject-reads-*.json.

    .venv/bin/python bench/subject_reads.py [--backend sqlite|postgresql] [--patients 200]
        [--seconds 10] [--rate 500] [--label before] [--profile timeline] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from generate import write_cohort
from ingest import (
    DEFAULT_POSTGRES,
    BenchError,
    _free_port,
    machine_facts,
    postgres_database,
    started,
)
from joserfc.jwk import ECKey

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
LUA = Path(__file__).with_name("subject_reads.lua")
STUDY = "NCT06088771"
COHORT = "cirae-dupilumab"
TARGET_RATE = 1000.0
TARGET_P99_MS = 10.0
SERVICE_ENV = {
    "TRIALBRIDGE_COHORT_REFRESH_INTERVAL_SECONDS": "0",
    "TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS": "0",
    # a budget of 200/s per client would refuse the bench: raised, so the middleware still runs
    "TRIALBRIDGE_RATE_LIMIT_CLIENT_PER_SECOND": "1000000",
    "TRIALBRIDGE_RATE_LIMIT_ADDRESS_PER_SECOND": "1000000",
}
BENCH_CLIENT = "bench-reader"
READER_SCOPES = (f"study/{STUDY}.read", f"study/{COHORT}.read")


def _trialbridge(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "trialbridge"), *args]


AUTH_OFF = {"TRIALBRIDGE_AUTH_DISABLED": "true"}  # --no-auth: loopback, no token to verify


def _env(database_url: str, workdir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        **SERVICE_ENV,
        **(extra or {}),
        "DATABASE_URL": database_url,
        "TRIALBRIDGE_AUDIT_SPOOL_DIR": str(workdir / "audit-spool"),
    }


def _run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(
            f"{' '.join(command[1:3])} exited {done.returncode}:\n{done.stderr[-3000:]}"
        )
    return done.stdout


def load_average() -> list[float]:
    """`uptime`'s load averages now (the machine is shared: every figure carries them)."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


@contextlib.contextmanager
def database(backend: str, workdir: Path, postgres: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'reads.db'}"
    else:
        with postgres_database(postgres) as url:
            yield url.replace("postgresql://", "postgresql+psycopg://", 1)


def prepare(database_url: str, workdir: Path, patients: int) -> None:
    """Generate the cohort, migrate, load, and register a reading client with its key."""
    data = workdir / "cohort"
    write_cohort(data, patients=patients, seed=1, fmt="ndjson")
    env = _env(database_url, workdir)
    _run(_trialbridge("migrate"), env)
    parts = sorted(str(p) for p in data.glob("*.ndjson"))  # not plan.json
    _run(_trialbridge("load", *parts), env)
    key = ECKey.generate_key("P-384", parameters={"use": "sig", "alg": "ES384"})
    key = ECKey.import_key({**key.as_dict(private=True), "kid": key.thumbprint()})
    (workdir / "client.jwk").write_text(json.dumps(key.as_dict(private=True)))
    (workdir / "client.jwks").write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    scopes = [arg for s in READER_SCOPES for arg in ("--scope", s)]
    _run(
        _trialbridge(
            "client", "add", BENCH_CLIENT, *scopes, "--jwks", str(workdir / "client.jwks")
        ),
        env,
    )


@contextlib.contextmanager
def serving(database_url: str, workdir: Path, auth: bool) -> Iterator[tuple[str, int]]:
    """`trialbridge serve` (one worker) on a free port: (base URL, its pid)."""
    port = _free_port()
    log_path = workdir / "serve.log"
    command = _trialbridge("serve", "--host", "127.0.0.1", "--port", str(port))
    env = _env(database_url, workdir, None if auth else AUTH_OFF)
    with started(command, env, log_path, port) as (base, proc):
        yield base, proc.pid


def token(base: str, database_url: str, workdir: Path, auth: bool = True) -> str:
    """An access token, exchanged for a signed client assertion like any client does."""
    if not auth:
        return "none"  # authentication is off: the header is ignored
    out = _run(
        _trialbridge(
            "token",
            BENCH_CLIENT,
            "--key",
            str(workdir / "client.jwk"),
            "--url",
            base,
            *[a for s in READER_SCOPES for a in ("--scope", s)],
        ),
        _env(database_url, workdir),
    )
    return out.strip().splitlines()[-1]


def _ids(client: httpx.Client, path: str, key: str, field: str) -> list[str]:
    out: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
        answer = client.get(path, params=params)
        answer.raise_for_status()
        body = answer.json()
        out += [row[field] for row in body[key]]
        cursor = body.get("next_cursor")
        if not cursor:
            return out


def endpoints(base: str, bearer: str) -> dict[str, list[str]]:
    """Each per-subject endpoint with every path it is read at (one per subject)."""
    headers = {"Authorization": f"Bearer {bearer}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        subjects = _ids(client, f"/api/v1/studies/{STUDY}/subjects", "subjects", "subject_id")
        candidates = _ids(
            client, f"/api/v1/studies/{STUDY}/eligibility", "candidates", "subject_id"
        )
        cohort = _ids(client, f"/api/v1/studies/{COHORT}/subjects", "subjects", "subject_id")
        found = {
            # the floor: the lightest authenticated, audited API read (no database), and the
            # lightest answer of the stack at all (no authentication, not audited)
            "studies-list": ["/api/v1/studies"],
            "healthz": ["/healthz"],
            "timeline": [f"/api/v1/studies/{STUDY}/subjects/{s}/timeline" for s in subjects],
            "outcomes": [f"/api/v1/studies/{STUDY}/subjects/{s}/outcomes" for s in subjects],
            "eligibility": [
                f"/api/v1/studies/{STUDY}/subjects/{s}/eligibility" for s in candidates
            ],
            "cirae-timeline": [f"/api/v1/studies/{COHORT}/subjects/{s}/timeline" for s in cohort],
        }
        for name, paths in found.items():
            if not paths:
                raise BenchError(f"no subject to read for {name}")
            answer = client.get(paths[0])
            if answer.status_code != 200:
                raise BenchError(f"{name}: GET {paths[0]} -> {answer.status_code} {answer.text}")
    return found


def wrk(
    base: str,
    paths_file: Path,
    bearer: str,
    *,
    seconds: float,
    connections: int,
    rate: float | None,
) -> dict[str, Any]:
    """One wrk run; its SUBJECT_READS line as a dict."""
    threads = connections if rate is not None else min(connections, 2)
    args = [str(paths_file), bearer] + ([str(rate), str(connections)] if rate is not None else [])
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(LUA),
        base,
        "--",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("SUBJECT_READS ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(line.removeprefix("SUBJECT_READS "))
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def profiling(pid: int, out: Path, seconds: float, fmt: str = "flamegraph") -> Iterator[None]:
    """py-spy record of the server while the block runs (a flame graph SVG, or `raw`: collapsed
    stacks, one per line with its sample count, for summing by function)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    command = [spy, "record", "--pid", str(pid), "--output", str(out), "--rate", "250"]
    command += ["--format", fmt]
    command += ["--duration", str(max(1, round(seconds))), "--nonblocking"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        try:
            proc.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "label": args.label,
        "backend": args.backend,
        "patients": args.patients,
        "seconds": args.seconds,
        "connections": args.connections,
        "rate": args.rate,
        "authentication": not args.no_auth,
        "machine": dict(machine_facts(DEFAULT_POSTGRES)),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "endpoints": {},
    }
    with tempfile.TemporaryDirectory(prefix="subject-reads-") as tmp:
        workdir = Path(tmp)
        with database(args.backend, workdir, args.postgres) as url:
            started = time.perf_counter()
            prepare(url, workdir, args.patients)
            print(f"loaded {args.patients} patients in {time.perf_counter() - started:.0f} s")
            with serving(url, workdir, not args.no_auth) as (base, pid):
                found = endpoints(base, token(base, url, workdir, not args.no_auth))
                only = args.endpoints.split(",") if args.endpoints else list(found)
                for name in only:
                    paths = found[name]
                    paths_file = workdir / f"{name}.paths"
                    paths_file.write_text("\n".join(paths) + "\n")
                    bearer = token(base, url, workdir, not args.no_auth)
                    wrk(base, paths_file, bearer, seconds=1, connections=2, rate=None)  # warm
                    entry: dict[str, Any] = {"subjects": len(paths)}
                    entry["load_before_max"] = load_average()
                    suffix = "svg" if args.profile_format == "flamegraph" else "txt"
                    flame = RESULTS / f"subject-reads-{args.label}-{name}.{suffix}"
                    with (
                        profiling(pid, flame, args.seconds, args.profile_format)
                        if args.profile == name
                        else contextlib.nullcontext()
                    ):
                        cpu = cpu_seconds(pid)
                        entry["max"] = wrk(
                            base,
                            paths_file,
                            bearer,
                            seconds=args.seconds,
                            connections=args.connections,
                            rate=None,
                        )
                        cpu = cpu_seconds(pid) - cpu
                    # CPU per request moves less with the machine's load than requests/s do
                    entry["server_cpu_ms_per_request"] = (
                        1000 * cpu / max(1, entry["max"]["requests"])
                    )
                    entry["load_before_paced"] = load_average()
                    entry["paced"] = wrk(
                        base,
                        paths_file,
                        bearer,
                        seconds=args.seconds,
                        connections=2,
                        rate=args.rate,
                    )
                    results["endpoints"][name] = entry
                    show(name, entry)
    return results


def show(name: str, entry: dict[str, Any]) -> None:
    m, p = entry["max"], entry["paced"]
    bad = {k: v for k, v in {**m["statuses"], **p["statuses"]}.items() if k != "200"}
    print(
        f"{name:15} max {m['rate']:7.0f} req/s (p50 {m['p50_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms,"
        f" load {entry['load_before_max'][0]:.1f}; server CPU"
        f" {entry['server_cpu_ms_per_request']:.2f} ms/request)  |  paced {p['rate']:5.0f} req/s:"
        f" p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms (from due: p99"
        f" {p['due_p99_ms']:.2f} ms, load {entry['load_before_paced'][0]:.1f})"
        + (f"  NON-200: {bad}" if bad else "")
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="server URL, no database")
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0, help="each wrk run")
    parser.add_argument("--connections", type=int, default=8, help="full-speed run")
    parser.add_argument("--rate", type=float, default=500.0, help="paced run, requests/s")
    parser.add_argument("--endpoints", help="comma-separated subset (timeline,outcomes,...)")
    parser.add_argument("--label", default="run")
    parser.add_argument("--profile", help="py-spy record the server during this endpoint's run")
    parser.add_argument(
        "--profile-format",
        choices=("flamegraph", "raw"),
        default="flamegraph",
        help="py-spy's output: an SVG flame graph, or raw collapsed stacks (.txt)",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="authentication off (loopback): what a cache of verified tokens would approach",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 patients, 2 s runs")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the results' JSON file (default: bench/results/subject-reads-BACKEND-LABEL.json)",
    )
    args = parser.parse_args(argv)
    if args.no_auth:
        args.label += "-noauth"
    if args.quick:
        args.patients, args.seconds = 60, 2.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "bench/subject_reads.py needs wrk (Debian: apt-get install wrk); not found on PATH",
            file=sys.stderr,
        )
        return 2
    try:
        results = run(args)
    except BenchError as exc:
        print(f"subject_reads: {exc}", file=sys.stderr)
        return 1
    for name, entry in results["endpoints"].items():
        rate, p99 = entry["max"]["rate"], entry["paced"]["p99_ms"]
        print(
            f"{name}: {rate:.0f} req/s ({'met' if rate >= TARGET_RATE else 'NOT met'} ≥ "
            f"{TARGET_RATE:.0f}); p99 at {args.rate:.0f}/s {p99:.2f} ms "
            f"({'met' if p99 <= TARGET_P99_MS else 'NOT met'} ≤ {TARGET_P99_MS:.0f} ms)"
        )
    out = args.out or RESULTS / f"subject-reads-{args.backend}-{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
