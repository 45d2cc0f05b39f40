#!/usr/bin/env python3
"""MCP server figures at N raw rows, on a fresh embedded PostgreSQL in a temporary DEVDIAG_HOME.

1. Bulk load: the demo history (N rows, time ordered, UUIDv7 ids) written as JSONL (fsync'd), then, after
   a checkpoint, imported by `devdiag load FILE --json` in its own process, with all 10 indexes in place:
   rows/s, with the machine's load average before and after (the figure depends on the neighbours).
2. `dbt build` (v_fix_ranking and the other views), then `vacuum analyze`, as in production.
3. `diagnose` latency: `python -m mcp_devdiag` launched over stdio with the SDK's stdio client; each
   call classifies, reads the learned ranking (v_fix_ranking plus outcomes since its build) and
   writes its run before it answers. Timed at the client, after a warm-up: p50/p95/p99/max. A
   `record_outcome` every 10 calls keeps fresh outcomes in the mix.

    python benchmarks/mcp_server.py --rows 1000000 [--calls 1000] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This file is named mcp.py: drop its own directory from the path, or `import mcp` would find it.
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing the package


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def write_history(settings, rows_wanted: int, path: Path, tenants: int = 3, codes: int = 20) -> int:
    """The demo generator's rows for about ``rows_wanted`` rows, as the JSONL `devdiag load` reads."""
    import psycopg

    from orchestrator.demo_data import generate

    runs = max(100, round(rows_wanted / 1.05))  # a run writes ~1.05 rows
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        rows = generate(runs, conn=conn, seed=7, now=datetime.now(UTC), tenants=tenants, codes=codes)
    dumps = json.dumps
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(dumps(row.to_json()) + "\n")
        fh.flush()
        os.fsync(fh.fileno())  # the file's write-back is not part of the load timed next
    return len(rows)


def load_command(path: Path) -> list[str]:
    """`devdiag load`, through the `devdiag` group when it is registered there."""
    from orchestrator.cli import main

    if "load" in getattr(main, "commands", {}):
        return [sys.executable, "-c", "from orchestrator.cli import main; main()", "load", str(path), "--json"]
    return [sys.executable, "-c", "from orchestrator.ingest import load; load()", str(path), "--json"]


def error_texts(count: int) -> list[str]:
    from orchestrator.demo_data import DEMO_CODES, error_message

    rng = random.Random(5)
    texts = []
    for i in range(count):
        if i % 10 == 9:
            texts.append("All 214 tests passed in 3.2s")  # a clean run is written too
            continue
        texts.append(error_message(rng.choice(DEMO_CODES), rng) or "Segmentation fault (core dumped)")
    return texts


async def time_diagnose(home: Path, tenant: str, calls: int, warmup: int) -> dict[str, object]:
    from mcp.client import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    env = {
        "DEVDIAG_HOME": str(home),
        "DEVDIAG_TENANT": tenant,
        "DEVDIAG_ENVIRONMENT": "linux/python-3.12/node-20",
        "DEVDIAG_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_devdiag"], env=env)
    texts = error_texts(warmup + calls)
    latencies: list[float] = []
    recorded: dict[str, int] = {}
    started = time.perf_counter()
    with open(home / "server.stderr", "w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=60) as client:
            ready = time.perf_counter() - started
            for i, text in enumerate(texts):
                t0 = time.perf_counter()
                result = await client.call_tool("diagnose", {"error_text": text})
                elapsed = time.perf_counter() - t0
                if result.is_error:
                    raise SystemExit(f"diagnose failed: {result.content}")
                data = result.structured_content
                if i >= warmup:
                    latencies.append(elapsed)
                    recorded[data["recorded"]] = recorded.get(data["recorded"], 0) + 1
                if i % 10 == 0 and data["findings"]:
                    await client.call_tool("record_outcome", {"run_id": data["run_id"], "resolution": "failed"})
    ms = [x * 1000 for x in latencies]
    return {
        "server_ready_s": round(ready, 2),
        "calls": len(ms),
        "p50_ms": round(percentile(ms, 0.50), 2),
        "p95_ms": round(percentile(ms, 0.95), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "recorded": recorded,
    }


def load_history(settings, home: Path, rows: int, figures: dict, log, tenants: int = 3, codes: int = 20) -> None:
    """The demo history as JSONL, imported by `devdiag load` in its own process."""
    path = home / "history.jsonl"
    log(f"generating ~{rows:,} demo rows as JSONL ...")
    figures["rows_in_file"] = write_history(settings, rows, path, tenants, codes)
    figures["file_mb"] = round(path.stat().st_size / 1e6, 1)

    import psycopg

    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        conn.execute("checkpoint")  # as benchmarks/load.py: the load starts from a clean WAL position
    log("devdiag load ...")
    before = os.getloadavg()[0]
    done = subprocess.run(load_command(path), capture_output=True, text=True, env=os.environ, check=False)
    if done.returncode != 0:
        raise SystemExit(f"devdiag load failed: {done.stderr.strip() or done.stdout.strip()}")
    report = json.loads(done.stdout)
    figures["load"] = {k: report[k] for k in ("rows", "inserted", "seconds", "rows_per_s")}
    figures["load"]["bad_lines"] = len(report["bad_lines"])
    # On a shared machine the figure depends on the neighbours: keep the 1-minute load average with it.
    figures["load"]["load_average"] = [round(before, 2), round(os.getloadavg()[0], 2)]
    path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="raw rows to load (default 1,000,000)")
    parser.add_argument("--calls", type=int, default=1000, help="timed diagnose calls (default 1000)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls first (default 50)")
    parser.add_argument("--tenants", type=int, default=3, help="demo tenants (default 3, as `devdiag demo`)")
    parser.add_argument("--codes", type=int, default=20, help="demo problem codes (default 20, as `devdiag demo`)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DEVDIAG_HOME")
    parser.add_argument("--home", type=Path, help="use (and keep) this DEVDIAG_HOME; skip the load if it has the rows")
    args = parser.parse_args()

    home = args.home.resolve() if args.home else Path(tempfile.mkdtemp(prefix="devdiag-mcp-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    keep = args.keep or args.home is not None
    os.environ["DEVDIAG_HOME"] = str(home)
    for var in ("DEVDIAG_PG_DSN", "DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB"):
        os.environ.pop(var, None)

    import psycopg

    from devdiag_db import config, embedded
    from orchestrator import dbt
    from orchestrator.demo_data import demo_tenants
    from orchestrator.provision import setup

    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    figures: dict[str, object] = {
        "rows_requested": args.rows,
        "tenants": args.tenants,
        "codes": args.codes,
        "cpus": os.cpu_count(),
    }
    try:
        settings = config.settings()
        setup(settings)
        with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
            present = conn.execute("select count(*) from devdiag.diag_run").fetchone()[0]
        if present >= args.rows * 0.9:
            log(f"{present:,} rows already in {home}: no load")
            figures["load"] = None
        else:
            load_history(settings, home, args.rows, figures, log, args.tenants, args.codes)

        log("dbt build ...")
        started = time.perf_counter()
        results = dbt.invoke(settings, ["build"])
        figures["dbt_build_s"] = round(time.perf_counter() - started, 1)
        figures["dbt_failures"] = [r.name for r in results if r.status in {"error", "fail"}]
        with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
            conn.execute("vacuum analyze devdiag.diag_run")
            figures["raw_rows"] = conn.execute("select count(*) from devdiag.diag_run").fetchone()[0]

        tenant = demo_tenants(3)[0].name
        log(f"diagnose over stdio: {args.warmup} warm-up + {args.calls} timed calls as tenant {tenant} ...")
        figures["diagnose"] = asyncio.run(time_diagnose(home, tenant, args.calls, args.warmup))
        with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
            figures["raw_rows_after"] = conn.execute("select count(*) from devdiag.diag_run").fetchone()[0]
    finally:
        embedded.stop()
        if keep:
            log(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)

    if args.json:
        print(json.dumps(figures, indent=2))
        return
    load, diag = figures["load"], figures["diagnose"]
    print(
        f"\nDevDiag MCP server at {figures['raw_rows']:,} raw rows, {figures['tenants']} tenants, "
        f"{figures['codes']} codes ({figures['cpus']} CPUs)"
    )
    if load:
        print(
            f"  devdiag load (JSONL -> COPY, 10 indexes): {load['rows_per_s']:,} rows/s "
            f"({load['inserted']:,} rows, {figures['file_mb']} MB, in {load['seconds']:.1f} s; "
            f"{load['bad_lines']} bad lines; load average {load['load_average'][0]} -> {load['load_average'][1]})"
        )
    print(f"  dbt build: {figures['dbt_build_s']} s; failing nodes: {figures['dbt_failures'] or 'none'}")
    print(
        f"  diagnose over stdio, incl. ranking read and write ({diag['calls']} calls, {diag['recorded']}): "
        f"p50 {diag['p50_ms']} ms, p95 {diag['p95_ms']} ms, p99 {diag['p99_ms']} ms, max {diag['max_ms']} ms"
    )
    print(f"  server ready (spawn + handshake): {diag['server_ready_s']} s")


if __name__ == "__main__":
    main()
