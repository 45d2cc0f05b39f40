#!/usr/bin/env python3
"""One PostgreSQL against a 3-node Citus cluster on this machine, at the same history.

    python benchmarks/citus.py [--runs 1000000] [--workers 2] [--repeat 10] [--calls 300] [--json] [--keep]

For each layout, in a temporary DEVDIAG_HOME: the same simulated history as benchmarks/scale.py
(``--runs`` runs over 185 days, 50 tenants, 60 problem codes, the last day held back), bulk-loaded
by the writer; a full dbt build; the held-back day appended with its outcomes (updated by id and
tenant, as record_outcome does); an incremental build; every panel and alert query as role grafana
and every runbook query as the owner (p50/p95 of ``--repeat`` runs); diagnose and suggest_fixes
in-process (p50/p99 of ``--calls``). The cluster is `devdiag cluster up --workers N`: a coordinator
and N workers on this machine, so every node shares its cores: the figures show what distribution
costs and where queries go, not a speed-up.

On the cluster also: each query's route from its Citus plan (router: one shard; fan-out: every
shard; coordinator: no distributed table read), and the plans of the per-tenant questions the MCP
server asks, which show shard pruning ("Task Count: 1").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from scale import DAYS, all_queries, append_day, build, load_history, time_service, vacuum  # noqa: E402

ENV = ("DEVDIAG_PG_DSN", "DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB")
# The questions the MCP server asks for one tenant (mcp_devdiag: writer, service, learning).
TENANT_QUESTIONS = {
    "a run's findings (record_outcome)": (
        "select id, problem_code, fix_suggestion from devdiag.diag_run where run_id = %(run)s and tenant_id = %(t)s"
    ),
    "the tenant's learned ranking (suggest_fixes)": (
        "select fix_id, confidence from devdiag.v_fix_ranking where tenant_id = %(t)s and problem_code = %(p)s"
    ),
    "the tenant's recent problems (recent_problems)": (
        "select problem_code, sum(cnt) from devdiag.v_problem_counts "
        "where tenant_id = %(t)s and day >= current_date - 7 group by 1"
    ),
    "the tenant's outcomes since the build (learning)": (
        "select fix_suggestion, count(*) filter (where resolution = 'fixed'), count(*) from devdiag.diag_run "
        "where tenant_id = %(t)s and problem_code = %(p)s and resolution is not null group by 1"
    ),
}


def _log(quiet: bool):
    return (lambda *_: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def route(conn, sql: str, params: dict | None = None) -> str:
    """router (one shard), fan-out (N shards) or coordinator, from the query's Citus plan."""
    plan = "\n".join(r[0] for r in conn.execute("explain " + sql, params))
    counts = [int(line.split(":")[1]) for line in plan.splitlines() if "Task Count:" in line]
    if not counts:
        return "coordinator"
    return "router" if max(counts) == 1 else f"fan-out ({max(counts)} tasks)"


def one_layout(citus: bool, runs: int, workers: int, repeat: int, calls: int, log, keep: bool) -> dict:
    home = Path(tempfile.mkdtemp(prefix="devdiag-bench-citus-" if citus else "devdiag-bench-single-"))
    os.environ["DEVDIAG_HOME"] = str(home)
    for var in ENV:
        os.environ.pop(var, None)
    from devdiag_db import cluster, config, embedded
    from orchestrator.provision import setup

    figures: dict = {"layout": f"citus 1+{workers}" if citus else "one node", "runs": runs}
    try:
        if citus:
            started = time.perf_counter()
            state = cluster.up(workers, progress=log)
            figures["cluster_up_s"] = round(time.perf_counter() - started, 1)
            os.environ["DEVDIAG_PG_DSN"] = state.dsn or ""
        settings = config.settings()
        setup(settings)
        now = datetime.now(UTC)
        loaded, held, updates = load_history(settings, runs, DAYS, 50, now, log, 60)
        figures.update(load_rows=loaded["load_rows"], load_rows_per_s=loaded["load_rows_per_s"])
        vacuum(settings)
        log("dbt build, full ...")
        seconds, bad, slowest = build(settings, full=True)
        figures.update(build_full_s=round(seconds, 1), build_full_not_pass=bad, build_full_slowest=slowest)
        log(f"appending one day: {len(held):,} rows, {len(updates):,} outcomes ...")
        figures["append_day_s"] = round(append_day(settings, held, updates), 2)
        vacuum(settings)
        log("dbt build, incremental ...")
        seconds, bad, slowest = build(settings, full=False)
        figures.update(build_incremental_s=round(seconds, 1), build_incremental_not_pass=bad)
        log("queries ...")
        timings = all_queries(settings, repeat)
        ok = [t for t in timings if "p95_ms" in t]
        for kind in ("panel", "alert", "runbook"):
            of_kind = [t for t in ok if t["query"].startswith(kind + " ")]
            figures[f"{kind}_p95_max_ms"] = max(t["p95_ms"] for t in of_kind) if of_kind else None
            figures[f"{kind}_p95_median_ms"] = round(statistics.median(t["p95_ms"] for t in of_kind), 2)
        figures["query_errors"] = [t for t in timings if "error" in t]
        figures["queries"] = timings
        log("diagnose / suggest_fixes in-process ...")
        figures.update(time_service(calls, "acme"))
        if citus:
            figures.update(citus_plans(settings, timings))
    finally:
        if citus:
            cluster.down()
        else:
            embedded.stop()
        if not keep:
            shutil.rmtree(home, ignore_errors=True)
    return figures


def citus_plans(settings, timings: list[dict]) -> dict:
    import psycopg
    from scale import alert_queries, panel_queries, runbook_queries

    out: dict = {"routes": {}, "tenant_plans": {}}
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        named = panel_queries(conn) + alert_queries() + runbook_queries(conn)
        for name, sql in named:
            try:
                out["routes"][name] = route(conn, sql)
            except psycopg.Error as error:
                out["routes"][name] = f"not explained ({str(error).splitlines()[0][:60]})"
        run, problem = conn.execute(
            "select run_id, problem_code from devdiag.diag_run where tenant_id = 'acme' and problem_code is not null "
            "order by ts desc limit 1"
        ).fetchone()
        params = {"t": "acme", "run": run, "p": problem}
        for name, sql in TENANT_QUESTIONS.items():
            plan = [r[0] for r in conn.execute("explain " + sql, params)]
            out["tenant_plans"][name] = plan
            out["routes"]["tenant: " + name] = route(conn, sql, params)
    return out


def print_side_by_side(single: dict, citus: dict) -> None:
    rows = [
        ("load (writer, COPY batches)", "load_rows_per_s", "rows/s"),
        ("dbt build, full", "build_full_s", "s"),
        ("append one day + its outcomes", "append_day_s", "s"),
        ("dbt build, incremental", "build_incremental_s", "s"),
        ("panel p95, slowest", "panel_p95_max_ms", "ms"),
        ("panel p95, median", "panel_p95_median_ms", "ms"),
        ("alert p95, slowest", "alert_p95_max_ms", "ms"),
        ("runbook p95, slowest", "runbook_p95_max_ms", "ms"),
        ("diagnose p50", "diagnose_p50_ms", "ms"),
        ("diagnose p99", "diagnose_p99_ms", "ms"),
        ("suggest_fixes p99", "suggest_p99_ms", "ms"),
    ]
    print(f"\n{single['runs']:,} runs (50 tenants, 60 problems, 185 days)")
    print(f"  {'':34} {'one node':>12} {citus['layout']:>12}")
    for label, key, unit in rows:
        a, b = single.get(key), citus.get(key)
        print(f"  {label:34} {a!s:>12} {b!s:>12}  {unit}")
    for layout in (single, citus):
        for error in layout["query_errors"]:
            print(f"  {layout['layout']}: {error['query']} failed: {error['error']}")
    for layout in (single, citus):
        timed = sorted((t for t in layout["queries"] if "p95_ms" in t), key=lambda t: -t["p95_ms"])[:6]
        shown = "; ".join(f"{t['query']} {t['p95_ms']}" for t in timed)
        print(f"\nSlowest queries, {layout['layout']} (p95 ms): {shown}")
    routes = citus.get("routes", {})
    by_route: dict[str, list[str]] = {}
    for name, how in routes.items():
        by_route.setdefault(how.split(" (")[0], []).append(name)
    print("\nWhere each query runs on the cluster:")
    for how, names in sorted(by_route.items()):
        print(f"  {how} ({len(names)}): {', '.join(sorted(names))}")
    print("\nPer-tenant plans (tenant acme):")
    for name, plan in citus.get("tenant_plans", {}).items():
        tasks = next((line.strip() for line in plan if "Task Count" in line), "no distributed scan")
        print(f"  {name}: {tasks}")
        for line in plan[:8]:
            print(f"      {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10, help="timed executions per query")
    parser.add_argument("--calls", type=int, default=300, help="timed diagnose and suggest_fixes calls")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DEVDIAG_HOMEs")
    parser.add_argument("--citus-only", action="store_true", help="measure the cluster alone")
    args = parser.parse_args()
    log = _log(args.json)
    single: dict = {"layout": "one node", "runs": args.runs, "queries": [], "query_errors": []}
    if not args.citus_only:
        log(f"== one node, {args.runs:,} runs")
        single = one_layout(False, args.runs, args.workers, args.repeat, args.calls, log, args.keep)
    log(f"== Citus, coordinator + {args.workers} workers, {args.runs:,} runs")
    citus = one_layout(True, args.runs, args.workers, args.repeat, args.calls, log, args.keep)
    if args.json:
        print(json.dumps({"one_node": single, "citus": citus}, indent=2, default=str))
    else:
        print_side_by_side(single, citus)


if __name__ == "__main__":
    main()
