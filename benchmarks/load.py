"""Bulk-load speed of the writer: demo rows into a fresh embedded PostgreSQL with all 10 indexes.

    python benchmarks/load.py                 # 1,000,000 rows
    python benchmarks/load.py --rows 100000 --staging

Uses its own DEVDIAG_HOME in a temporary directory (removed afterwards unless --keep), so it never
touches your data. Prints generation speed, first-load rows/s and reload rows/s (inserts 0).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=50_000)
    parser.add_argument("--staging", action="store_true", help="force the conflict-safe staging path")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DEVDIAG_HOME")
    args = parser.parse_args(argv)

    home = tempfile.mkdtemp(prefix="devdiag-bench-")
    os.environ["DEVDIAG_HOME"] = home
    for var in ("DEVDIAG_PG_DSN", "DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB"):
        os.environ.pop(var, None)
    from devdiag_db import embedded

    try:
        return _bench(args)
    finally:
        embedded.stop()
        if args.keep:
            print(f"kept {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


def _bench(args: argparse.Namespace) -> int:
    from devdiag_db import config
    from devdiag_db.db import connect
    from mcp_devdiag import writer
    from orchestrator import demo_data
    from orchestrator.provision import setup

    settings = config.settings()
    setup(settings)
    if args.staging:
        writer._after_max_id = lambda conn, batch: False  # benchmark the insert-on-conflict path
    with connect(settings) as conn:
        started = time.perf_counter()
        runs = max(2000, args.rows)  # ~5% of runs have two findings: enough rows to cut at --rows
        rows = demo_data.generate(runs, conn=conn, seed=args.seed, now=datetime.now(UTC))[: args.rows]
        generated = time.perf_counter() - started
        print(
            f"generated {len(rows):,} rows ({runs:,} runs) in {generated:.1f} s = {len(rows) / generated:,.0f} rows/s"
        )
        conn.execute("checkpoint")

        backend = conn.execute("select pg_backend_pid()").fetchone()[0]
        server_cpu, client_cpu, load = _cpu_seconds(backend), time.process_time(), os.getloadavg()[0]
        started = time.perf_counter()
        inserted = writer.write_runs(conn, rows, batch_size=args.batch_size)
        loaded = time.perf_counter() - started
        server_cpu, client_cpu = _cpu_seconds(backend) - server_cpu, time.process_time() - client_cpu
        path = "staging + on conflict" if args.staging else "copy (fast path)"
        print(f"loaded {inserted:,} rows in {loaded:.1f} s = {inserted / loaded:,.0f} rows/s [{path}, 10 indexes]")
        # On a shared machine wall time depends on the neighbours; CPU time per side does not.
        print(
            f"  CPU: server backend {server_cpu:.1f} s, client {client_cpu:.1f} s; "
            f"load average {load:.1f} on {os.cpu_count()} CPUs"
        )

        started = time.perf_counter()
        again = writer.write_runs(conn, rows, batch_size=args.batch_size)
        reloaded = time.perf_counter() - started
        print(f"reloaded: {again} inserted in {reloaded:.1f} s = {len(rows) / reloaded:,.0f} rows/s checked")
        indexes = conn.execute(
            "select count(*) from pg_indexes where schemaname = 'devdiag' and tablename = 'diag_run' "
            "and indexname like 'ix_%'"
        )
        print(f"indexes on devdiag.diag_run: {indexes.fetchone()[0]} named + primary key")
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a local process (Linux /proc), 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
