#!/usr/bin/env python3
"""Analytics-core figures at N raw rows, on a fresh embedded PostgreSQL in a temporary DEVDIAG_HOME.

Prints, each with how it was measured: demo load rows/s (through the batched writer, all indexes in
place), `dbt build` wall time (in-process, full), and p50/p95 of every runbook query and of a
7-day select from each public view (each run `--repeat` times after one warm-up).

    python benchmarks/core.py --runs 1000000 [--json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
VIEW_SELECTS = {
    "v_problem_counts": "select * from devdiag.v_problem_counts where day >= current_date - 7",
    "v_fix_success": "select * from devdiag.v_fix_success where last_success >= now() - interval '7 days'",
    "v_ttr_days": "select * from devdiag.v_ttr_days where first_seen_day >= current_date - 7",
    "v_env_diversity": "select * from devdiag.v_env_diversity where last_seen >= now() - interval '7 days'",
    "v_recent_activity": "select * from devdiag.v_recent_activity",
    "v_fix_ranking": "select * from devdiag.v_fix_ranking where rank = 1",
}
SKIP = {"q20": "pg_stat_statements not installed", "q29": "terminates a backend"}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def query_figures(conn, sql: str, repeat: int) -> tuple[float, float, int]:
    rows = len(conn.execute(sql).fetchall())  # warm-up, and the row count
    times = [timed(lambda: conn.execute(sql).fetchall()) for _ in range(repeat)]
    return percentile(times, 0.5) * 1000, percentile(times, 0.95) * 1000, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="demo runs to generate (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=20, help="timed executions per query (default 20)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DEVDIAG_HOME")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="devdiag-bench-"))
    os.environ["DEVDIAG_HOME"] = str(home)
    for var in ("DEVDIAG_PG_DSN", "DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB"):
        os.environ.pop(var, None)

    import psycopg

    from devdiag_db import config, embedded
    from orchestrator import dbt
    from orchestrator.demo_data import load_demo
    from orchestrator.provision import setup

    figures: dict[str, object] = {"runs_requested": args.runs}
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    try:
        settings = config.settings()
        setup(settings)
        log(f"loading {args.runs:,} demo runs ...")
        report = load_demo(settings, runs=args.runs, seed=7, now=datetime.now(UTC))
        figures["rows_loaded"] = report.inserted
        figures["load_seconds"] = round(report.seconds, 2)
        figures["load_rows_per_s"] = round(report.inserted / report.seconds) if report.seconds else None

        log("dbt build ...")
        build_s = timed(lambda: dbt.invoke(settings, ["build"]))
        figures["dbt_build_full_s"] = round(build_s, 2)
        log("dbt build again (warm) ...")
        figures["dbt_build_again_s"] = round(timed(lambda: dbt.invoke(settings, ["build"])), 2)

        queries = yaml.safe_load((ROOT / "tests/python/data/runbook_queries.yaml").read_text())["queries"]
        timings = []
        with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
            conn.execute("vacuum analyze devdiag.diag_run")
            top = conn.execute(
                "select problem_code from devdiag.v_problem_counts where day >= current_date - 7 "
                "group by 1 order by sum(cnt) desc limit 1"
            ).fetchone()[0]
            for q in queries:
                if q["id"] in SKIP:
                    continue
                sql = q["sql"].replace("<PROBLEM_CODE>", top)
                body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
                for n, stmt in enumerate(s.strip() for s in body.split(";") if s.strip()):
                    name = q["id"] + (f".{n + 1}" if body.count(";") > 1 else "")
                    try:
                        p50, p95, rows = query_figures(conn, stmt, args.repeat)
                    except psycopg.Error as error:
                        timings.append({"query": name, "error": str(error).splitlines()[0]})
                        continue
                    timings.append({"query": name, "p50_ms": round(p50, 2), "p95_ms": round(p95, 2), "rows": rows})
            for view, sql in VIEW_SELECTS.items():
                p50, p95, rows = query_figures(conn, sql, args.repeat)
                timings.append({"query": f"7d {view}", "p50_ms": round(p50, 2), "p95_ms": round(p95, 2), "rows": rows})
            figures["raw_rows"] = conn.execute("select count(*) from devdiag.diag_run").fetchone()[0]
            figures["database_size"] = conn.execute(
                "select pg_size_pretty(pg_database_size(current_database()))"
            ).fetchone()[0]
        figures["queries"] = timings
        worst = max((t for t in timings if "p95_ms" in t), key=lambda t: t["p95_ms"])
        figures["worst_query_p95_ms"] = worst["p95_ms"]
        figures["worst_query"] = worst["query"]
    finally:
        embedded.stop()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)

    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"\nDevDiag analytics core at {figures['raw_rows']:,} raw rows ({figures['database_size']})")
    print(
        f"  load (demo generator -> batched writer, COPY, 10 indexes): {figures['load_rows_per_s']:,} rows/s "
        f"({figures['rows_loaded']:,} rows in {figures['load_seconds']} s)"
    )
    print(f"  dbt build, full, in-process:  {figures['dbt_build_full_s']} s (again: {figures['dbt_build_again_s']} s)")
    print(f"  queries, {args.repeat} timed runs each after a warm-up (ms):")
    print(f"    {'query':24} {'p50':>8} {'p95':>8} {'rows':>8}")
    for t in timings:
        if "error" in t:
            print(f"    {t['query']:24} error: {t['error']}")
        else:
            print(f"    {t['query']:24} {t['p50_ms']:8.2f} {t['p95_ms']:8.2f} {t['rows']:8}")
    print(f"  slowest p95: {figures['worst_query']} at {figures['worst_query_p95_ms']} ms")


if __name__ == "__main__":
    main()
