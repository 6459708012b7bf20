"""What one one-patient transaction writes to the database's log, by table and index.

The write-path redesign in docs/performance.md rests on one observation: every resource of a
transaction lands on a random page of each index keyed by its client-chosen id. This script
measures it. It serves a fresh database as one process (`python -m uvicorn api.app:app`,
authentication off, loopback), posts `--warm` one-patient transactions (the Bundles of
`bench/small_transactions.py`: a Patient and 16 Observations, PUT with fresh UUID ids) so the
indexes have some depth, then `--count` more, and prints:

* SQLite: the WAL pages the measured transactions appended (a reader's open snapshot keeps the
  checkpointer from reusing the log meanwhile), each attributed to its table or index through the
  `dbstat` virtual table;
* PostgreSQL: WAL bytes, records and full-page images per transaction from `pg_stat_wal`
  (server-wide: run it on a quiet server), and the index blocks each transaction touched
  (`pg_statio_user_indexes`' hits and reads: every descent counts its root and inner pages, so
  this is work done, not pages written; PostgreSQL does not attribute its log by relation).

A measurement, not a test. Run from the repository root:

    .venv/bin/python bench/write_pages.py [--backend sqlite|postgresql] [--warm 300] [--count 200]
"""

from __future__ import annotations

import argparse
import collections
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bundle_sizes import bundle  # a sibling script, not a package
from ingest import DEFAULT_POSTGRES, HEADERS, postgres_database, running_service

ENTRIES = 17
WAL_HEADER = 32
FRAME_HEADER = 24


def _post(http: httpx.Client, count: int) -> None:
    for _ in range(count):
        answer = http.post("/fhir", content=bundle("transaction", ENTRIES))
        if answer.status_code != 200:
            raise SystemExit(f"POST answered {answer.status_code}: {answer.text[:300]}")


def sqlite_pages(workdir: Path, warm: int, count: int) -> None:
    """WAL pages per transaction on SQLite, by the B-tree each page belongs to."""
    path = workdir / "pages.db"
    with (
        running_service(f"sqlite:///{path}", workdir / "service.log") as base,
        httpx.Client(base_url=base, headers=HEADERS, timeout=60) as http,
    ):
        _post(http, warm)
        time.sleep(1.0)  # the checkpointer's last pass
        reader = sqlite3.connect(path, isolation_level=None)
        page_size = reader.execute("PRAGMA page_size").fetchone()[0]
        frame = FRAME_HEADER + page_size
        reader.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM fhir_resource").fetchone()  # holds the log
        start = os.path.getsize(f"{path}-wal")
        _post(http, count)
        log = Path(f"{path}-wal").read_bytes()
        reader.execute("ROLLBACK")
        reader.close()
    first = WAL_HEADER + max(start - WAL_HEADER, 0) // frame * frame
    pages = [
        int.from_bytes(log[offset : offset + 4], "big")
        for offset in range(first, len(log) - frame + 1, frame)
    ]
    with sqlite3.connect(path) as conn:
        owner = dict(conn.execute("SELECT pageno, name FROM dbstat").fetchall())
    by_tree = collections.Counter(owner.get(page, "(freed since)") for page in pages)
    print(f"sqlite: {len(pages) / count:.1f} WAL pages of {page_size} bytes a transaction")
    for name, n in by_tree.most_common():
        print(f"  {n / count:7.2f}  {name}")


def postgres_pages(server: str, workdir: Path, warm: int, count: int) -> None:
    """WAL volume and index pages touched per transaction on PostgreSQL."""
    with (
        postgres_database(server) as url,
        running_service(url, workdir / "service.log") as base,
        httpx.Client(base_url=base, headers=HEADERS, timeout=60) as http,
    ):
        _post(http, warm)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")  # the measured writes start a checkpoint cycle
            before_wal = conn.execute(
                "SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal"
            ).fetchone()
            before_ix: dict[str, int] = dict(conn.execute(_INDEX_BLOCKS).fetchall())
            _post(http, count)
            time.sleep(0.6)  # the statistics collector's flush
            after_wal = conn.execute(
                "SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal"
            ).fetchone()
            after_ix: dict[str, int] = dict(conn.execute(_INDEX_BLOCKS).fetchall())
    assert before_wal is not None
    assert after_wal is not None
    records, fpi, size = (int(a) - int(b) for a, b in zip(after_wal, before_wal, strict=True))
    print(
        f"postgresql: {size / count / 1024:.0f} KiB of WAL a transaction, {records / count:.0f}"
        f" records, {fpi / count:.1f} full-page images (first touch of a page since the"
        " checkpoint)"
    )
    touched = {k: after_ix[k] - before_ix.get(k, 0) for k in after_ix}
    print("  index blocks touched a transaction (hits + reads):")
    for name, n in sorted(touched.items(), key=lambda kv: -kv[1])[:20]:
        print(f"  {n / count:7.2f}  {name}")


_INDEX_BLOCKS = (
    "SELECT indexrelname, idx_blks_hit + idx_blks_read FROM pg_statio_user_indexes"
    " WHERE idx_blks_hit + idx_blks_read > 0"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a fresh database, post one-patient transactions, print what they wrote."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="server URL, no database")
    parser.add_argument("--warm", type=int, default=300, help="transactions before measuring")
    parser.add_argument("--count", type=int, default=200, help="transactions measured")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="write-pages-") as tmp:
        if args.backend == "sqlite":
            sqlite_pages(Path(tmp), args.warm, args.count)
        else:
            postgres_pages(args.postgres, Path(tmp), args.warm, args.count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
