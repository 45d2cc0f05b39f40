#!/usr/bin/env python3
"""Scale figures at N diagnostic runs (default 10,000,000 over 185 days), on a fresh embedded PostgreSQL.

    python benchmarks/scale.py [--runs 10000000] [--tenants 50] [--codes 60] [--repeat 20] [--json] [--keep]
    python benchmarks/scale.py --sizes 1000000,3000000,10000000 [--all] [--json]

`--sizes`: the same runs a day as --runs over 185 days (54,054 by default), so 1M runs are 18 days
of history, 3M 56 days, 10M 185: the load, builds and queries of each size, then full build,
build after one more day and panel p95 side by side (cost against history, not against volume).

One database per size, in a temporary DEVDIAG_HOME (about 0.5 GB a million runs; 10M runs need
~3 GB of RAM for the simulation and 10-15 min). Each figure says how it was measured:

- data: the demo generator's simulation (orchestrator/demo_data.py: realistic skew, Zipf problems,
  working hours, outcomes by Thompson sampling) for ``--runs`` runs over 185 days ending now, for
  ``--tenants`` tenants (default 50: the eight named demo tenants, then team-09 ... team-50 with
  Zipf-like volumes, the largest ~9% of the runs, the smallest ~0.7%) and ``--codes`` problem codes
  (default 60: the demo's 20, then the catalog's other problems; Zipf-like popularity, at most 10
  distinct problems a day across all tenants, as the health check wants). The last day is held back.
- bulk load: the history (the last day held back) written by mcp_devdiag.writer.write_runs (COPY
  batches of 50,000, all 10 indexes in place, UUIDv7 ids in time order): rows/s of the write_runs
  calls alone (building the row objects is timed apart); outcomes recorded in the last day are left
  pending here.
- dbt build full: `devdiag build --full-refresh`'s dbt call, in-process (every model rebuilt from
  the raw table, every test but the health checks) on that history.
- dbt build incremental: the held-back day appended by the same writer, the outcomes recorded in
  that day applied as UPDATEs (as record_outcome does), `vacuum analyze`, then `devdiag build`'s
  dbt call (incremental models, the tests that do not read every raw row). Both with a lookback
  of 0 s (see NO_LOOKBACK).
- queries: every dashboard panel (macros expanded by orchestrator/grafana/macros.py for the last 7
  days, every variable on All) and every alert query (orchestrator/alert_rules.yaml), as role
  grafana; every runbook query (tests/python/data/runbook_queries.yaml) as the owner. One warm-up,
  then ``--repeat`` timed executions each, rows fetched: p50 and p95.
- diagnose / suggest_fixes: mcp_devdiag.service.DevDiag called in-process (not over stdio; see
  benchmarks/mcp_server.py for that), diagnose writing its run before it returns: p50/p99.
- retention at 180 days (deletes the oldest ~5 days), while benchmarks/operations.py's Writer
  inserts 5 rows per transaction in a loop: retention wall time, longest writer transaction.
- backup (`devdiag backup`): size and time; restore into a new database: time to the committed
  restore, and with its verification and health checks.
- database size: pg_database_size after the build, before retention.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from core import SKIP, percentile, query_figures  # noqa: E402  (benchmarks/core.py)
from operations import measure_backup_restore, measure_retention  # noqa: E402  (benchmarks/operations.py)

DAYS = 185
BATCH = 50_000  # the writer's default batch
TARGETS = {
    "load_rows_per_s": ">= 50,000 rows/s",
    "build_full_s": "< 300 s",
    "build_incremental_s": "< 30 s",
    "query_p95_ms": "< 100 ms",
    "diagnose_p99_ms": "< 20 ms",
    "retention_s": "< 120 s",
    "writer_max_wait_s": "< 1 s",
    "restore_s": "< 600 s",
}


def _log(quiet: bool):
    return (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- data ------------------------------------------------------------------------------------------


def load_history(
    settings, runs: int, days: int, tenants: int, now: datetime, log, codes: int = 60
) -> tuple[dict, list, list]:
    """Simulate, write all but the last day; return figures, the held-back rows and outcome updates."""
    from dataclasses import replace

    from devdiag_db.db import connect
    from mcp_devdiag.writer import write_runs
    from orchestrator.demo_data import _gc_paused, _iter_rows, _require_schema, _simulate

    cutoff = now - timedelta(days=1)
    held: list = []
    updates: list[tuple] = []
    figures: dict[str, object] = {}

    def history(rows):
        for row in rows:
            if row.ts >= cutoff:
                held.append(row)
                continue
            if row.resolved_at is not None and row.resolved_at >= cutoff:
                updates.append((row.resolution, row.resolved_at, row.id, row.tenant_id))
                row = replace(row, resolution=None, resolved_at=None)
            yield row

    with connect(settings) as conn, _gc_paused():
        _require_schema(conn)
        log(f"simulating {runs:,} runs over {days} days, {tenants} tenants, {codes} problem codes ...")
        started = time.perf_counter()
        simulation = _simulate(conn, runs, 7, now, days, tenants, codes)
        figures["simulate_s"] = round(time.perf_counter() - started, 1)
        log(f"  {len(simulation[0]):,} rows simulated in {figures['simulate_s']} s; writing ...")
        # Rows are built (Python objects, ids, timestamps) a batch at a time and written; only the
        # write_runs calls are timed, so the figure is the writer's, not the generator's.
        rows = history(_iter_rows(*simulation))
        inserted, seconds, building = 0, 0.0, 0.0
        while True:
            started = time.perf_counter()
            batch = list(islice(rows, BATCH))
            building += time.perf_counter() - started
            if not batch:
                break
            started = time.perf_counter()
            inserted += write_runs(conn, batch, batch_size=BATCH)
            seconds += time.perf_counter() - started
    figures.update(
        load_rows=inserted,
        load_s=round(seconds, 1),
        load_rows_per_s=round(inserted / seconds),
        build_rows_s=round(building, 1),
        day_rows=len(held),
        day_outcomes=len(updates),
    )
    return figures, held, updates


def append_day(settings, held: list, updates: list[tuple]) -> float:
    from devdiag_db.db import connect
    from mcp_devdiag.writer import write_runs

    started = time.perf_counter()
    with connect(settings) as conn:
        write_runs(conn, held)
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                # by tenant too, as record_outcome: on Citus one shard, not all of them
                "update devdiag.diag_run set resolution = %s, resolved_at = %s "
                "where id = %s and tenant_id = %s and resolution is null",
                updates,
            )
    return time.perf_counter() - started


def vacuum(settings) -> None:
    import psycopg

    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        conn.execute("vacuum analyze devdiag.diag_run")


# The history is bulk-loaded just before the first build: with the default lookback (10 minutes, for
# write transactions still open at a build's start) the next build would re-read all of it. Nothing
# writes during these builds, so they look back 0 s: the build after one more day reads that day.
NO_LOOKBACK = ["--vars", '{"devdiag_incremental_lookback": "0 seconds"}']


def build(settings, *, full: bool) -> tuple[float, list[str], list[str]]:
    """Wall time, the nodes that did not pass, and the five slowest nodes (dbt's run_results.json).
    `full`: as `devdiag build --full-refresh` (every model from the raw table, every test)."""
    from devdiag_db.config import devdiag_home
    from orchestrator import dbt

    started = time.perf_counter()
    args = ["build", "--full-refresh", "--selector", "full_build"] if full else ["build"]
    results = dbt.invoke(settings, [*args, *NO_LOOKBACK], quiet=True)
    seconds = time.perf_counter() - started
    bad = [f"{r.name}: {r.status}" for r in results if r.status not in {"pass", "success", "no-op"}]
    try:
        run = json.loads((devdiag_home() / "dbt-target" / "run_results.json").read_text())
        nodes = sorted(run["results"], key=lambda r: -r["execution_time"])[:5]
        slowest = [f"{r['unique_id'].split('.')[-1]} {r['execution_time']:.1f}s" for r in nodes]
    except (OSError, KeyError, ValueError):
        slowest = []
    return seconds, bad, slowest


# --- queries ---------------------------------------------------------------------------------------


def panel_queries(conn) -> list[tuple[str, str]]:
    from orchestrator.grafana import files, macros, preview

    board = files.read_dashboard()
    span = macros.TimeRange.last(timedelta(days=7))
    selections = preview.resolve_variables(conn, board, span)
    out = []
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":  # earlier variables on All, as resolve_variables runs them
            ctx = macros.QueryContext(span, {k: v for k, v in selections.items() if k != variable["name"]})
            out.append((f"var {variable['name']}", macros.expand(variable["query"], ctx)))
    for panel in board.get("panels", []):
        if not panel.get("targets"):
            continue
        ctx = macros.QueryContext(span, selections, min_interval=panel.get("interval"))
        out.append((f"panel {panel['title']}", macros.expand(panel["targets"][0]["rawSql"], ctx)))
    return out


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load((ROOT / "orchestrator/alert_rules.yaml").read_text())["rules"]
    return [(f"alert {r['name']}", r["sql"]) for r in rules]


def runbook_queries(conn) -> list[tuple[str, str]]:
    queries = yaml.safe_load((ROOT / "tests/python/data/runbook_queries.yaml").read_text())["queries"]
    top = conn.execute(
        "select problem_code from devdiag.v_problem_counts where day >= current_date - 7 "
        "group by 1 order by sum(cnt) desc limit 1"
    ).fetchone()[0]
    out = []
    for q in queries:
        if q["id"] in SKIP:
            continue
        body = "\n".join(
            line for line in q["sql"].replace("<PROBLEM_CODE>", top).splitlines() if not line.strip().startswith("--")
        )
        stmts = [s.strip() for s in body.split(";") if s.strip()]
        for n, stmt in enumerate(stmts):
            out.append((f"runbook {q['id']}" + (f".{n + 1}" if len(stmts) > 1 else ""), stmt))
    return out


def time_queries(conn, named: list[tuple[str, str]], repeat: int) -> list[dict[str, object]]:
    import psycopg

    out = []
    for name, sql in named:
        try:
            p50, p95, rows = query_figures(conn, sql, repeat)
        except psycopg.Error as error:
            conn.rollback() if not conn.autocommit else None
            out.append({"query": name, "error": str(error).strip().splitlines()[0]})
            continue
        out.append({"query": name, "p50_ms": round(p50, 2), "p95_ms": round(p95, 2), "rows": rows})
    return out


def all_queries(settings, repeat: int) -> list[dict[str, object]]:
    import psycopg

    from devdiag_db.db import connect
    from orchestrator.grafana.database import grafana_settings

    with connect(grafana_settings()) as conn:
        conn.autocommit = True
        timings = time_queries(conn, panel_queries(conn) + alert_queries(), repeat)
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        timings += time_queries(conn, runbook_queries(conn), repeat)
    return timings


# --- MCP service in-process ------------------------------------------------------------------------


def time_service(calls: int, tenant: str) -> dict[str, object]:
    from mcp_devdiag import settings as server_settings
    from mcp_devdiag.server import build_server
    from orchestrator.demo_data import DEMO_CODES, error_message

    env = {**os.environ, "DEVDIAG_TENANT": tenant}
    _, app = build_server(server_settings.load(env))
    rng = random.Random(5)
    texts = [error_message(rng.choice(DEMO_CODES), rng) or "Segmentation fault (core dumped)" for _ in range(calls)]
    codes = [rng.choice(DEMO_CODES) for _ in range(calls)]
    try:
        for text in texts[:20]:  # warm-up: pool, catalog, ranking cache
            app.diagnose(error_text=text)
        diag = [timed(lambda t=t: app.diagnose(error_text=t)) * 1000 for t in texts]
        suggest = [timed(lambda c=c: app.suggest_fixes(c)) * 1000 for c in codes]
    finally:
        close = getattr(app.recorder, "close", None)
        if close:
            close()
    return {
        "diagnose_p50_ms": round(percentile(diag, 0.5), 2),
        "diagnose_p99_ms": round(percentile(diag, 0.99), 2),
        "suggest_p50_ms": round(percentile(suggest, 0.5), 2),
        "suggest_p99_ms": round(percentile(suggest, 0.99), 2),
        "service_calls": calls,
    }


# --- operations ------------------------------------------------------------------------------------


def operations(settings, workdir: Path, log) -> dict[str, object]:

    figures: dict[str, object] = {}
    figures.update(measure_retention(settings, log))
    figures.update(measure_backup_restore(settings, workdir, "devdiag_scale_restore", log, digits=1))
    return figures


# --- one size --------------------------------------------------------------------------------------


def one_size(
    runs: int, days: int, tenants: int, repeat: int, calls: int, log, *, keep: bool, full: bool, codes: int = 60
) -> dict[str, object]:
    home = Path(tempfile.mkdtemp(prefix="devdiag-bench-scale-"))
    os.environ["DEVDIAG_HOME"] = str(home)
    for var in ("DEVDIAG_PG_DSN", "DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB"):
        os.environ.pop(var, None)
    import psycopg

    from devdiag_db import config, embedded
    from orchestrator.provision import setup

    figures: dict[str, object] = {"runs": runs, "days": days, "tenants": tenants, "codes": codes}
    try:
        settings = config.settings()
        setup(settings)
        now = datetime.now(UTC)
        loaded, held, updates = load_history(settings, runs, days, tenants, now, log, codes)
        figures.update(loaded)
        vacuum(settings)
        log("dbt build, full ...")
        seconds, bad, slowest = build(settings, full=True)
        figures.update(build_full_s=round(seconds, 1), build_full_not_pass=bad, build_full_slowest=slowest)
        log(f"appending one day: {len(held):,} rows, {len(updates):,} outcomes ...")
        figures["append_day_s"] = round(append_day(settings, held, updates), 2)
        vacuum(settings)
        log("dbt build, incremental (after one more day) ...")
        seconds, bad, slowest = build(settings, full=False)
        figures.update(
            build_incremental_s=round(seconds, 1), build_incremental_not_pass=bad, build_incremental_slowest=slowest
        )
        with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
            figures["raw_rows"] = conn.execute("select count(*) from devdiag.diag_run").fetchone()[0]
            figures["database_bytes"] = conn.execute("select pg_database_size(current_database())").fetchone()[0]
        log("queries ...")
        timings = all_queries(settings, repeat)
        figures["queries"] = timings
        ok = [t for t in timings if "p95_ms" in t]
        panels = [t for t in ok if t["query"].startswith("panel ")]
        figures["panel_p95_max_ms"] = max(t["p95_ms"] for t in panels) if panels else None
        figures["panel_p95_median_ms"] = round(statistics.median(t["p95_ms"] for t in panels), 2) if panels else None
        worst = max(ok, key=lambda t: t["p95_ms"])
        figures.update(query_p95_max_ms=worst["p95_ms"], query_p95_max=worst["query"])
        figures["query_errors"] = [t for t in timings if "error" in t]
        if full:
            log("diagnose / suggest_fixes in-process ...")
            figures.update(time_service(calls, "acme"))
            figures.update(operations(settings, home / "work", log))
    finally:
        embedded.stop()
        if not keep:
            shutil.rmtree(home, ignore_errors=True)
    return figures


def print_table(f: dict[str, object], repeat: int) -> None:
    def row(name, value, how, target=""):
        print(f"  {name:28} {value:>18}  {target:18} {how}")

    print(f"\nDevDiag at {f['runs']:,} runs = {f['raw_rows']:,} raw rows, {f['tenants']} tenants, {f['days']} days")
    print(f"  {'figure':28} {'value':>18}  {'target':18} how measured")
    row("simulation", f"{f['simulate_s']} s", "demo generator, in Python (not part of the load figure)")
    if "build_rows_s" in f:
        row(
            "building row objects",
            f"{f['build_rows_s']} s",
            "RunRow objects from the simulation (not part of the load)",
        )
    row(
        "bulk load",
        f"{f['load_rows_per_s']:,} rows/s",
        f"writer COPY batches, 10 indexes, {f['load_rows']:,} rows in {f['load_s']} s",
        TARGETS["load_rows_per_s"],
    )
    row(
        "dbt build full",
        f"{f['build_full_s']} s",
        "in-process dbt build, models + health checks",
        TARGETS["build_full_s"],
    )
    row(
        "append one day",
        f"{f['append_day_s']} s",
        f"writer: {f['day_rows']:,} rows + {f['day_outcomes']:,} outcome UPDATEs",
    )
    row(
        "dbt build incremental",
        f"{f['build_incremental_s']} s",
        "dbt build after that day (+ vacuum analyze before)",
        TARGETS["build_incremental_s"],
    )
    print(f"  queries: one warm-up, {repeat} timed runs, rows fetched (ms); panels 7 days, variables All")
    print(f"    {'query':44} {'p50':>8} {'p95':>8} {'rows':>7}")
    for t in f["queries"]:
        if "error" in t:
            print(f"    {t['query'][:44]:44} error: {t['error']}")
        else:
            flag = "  > 100 ms" if t["p95_ms"] >= 100 else ""
            print(f"    {t['query'][:44]:44} {t['p50_ms']:8.2f} {t['p95_ms']:8.2f} {t['rows']:7}{flag}")
    row("slowest query p95", f"{f['query_p95_max_ms']} ms", f["query_p95_max"], TARGETS["query_p95_ms"])
    if "diagnose_p99_ms" in f:
        row(
            "diagnose p99 (p50)",
            f"{f['diagnose_p99_ms']} ({f['diagnose_p50_ms']}) ms",
            f"DevDiag.diagnose in-process, incl. the write, {f['service_calls']} calls",
            TARGETS["diagnose_p99_ms"],
        )
        row(
            "suggest_fixes p99 (p50)",
            f"{f['suggest_p99_ms']} ({f['suggest_p50_ms']}) ms",
            "DevDiag.suggest_fixes in-process",
        )
        row(
            "retention 180 d",
            f"{f['retention_s']} s",
            f"{f['retention_deleted']:,} deleted, {f['retention_kept_first_last']:,} kept first/last",
            TARGETS["retention_s"],
        )
        row(
            "  longest writer stall",
            f"{f['writer_max_wait_s'] * 1000:.0f} ms",
            f"5-row insert txns in a loop ({f['writer_transactions']:,}); before: "
            f"{f['writer_baseline_max_s'] * 1000:.0f} ms",
            TARGETS["writer_max_wait_s"],
        )
        row("backup", f"{f['backup_s']} s, {f['backup_bytes'] / 1e6:.0f} MB", "devdiag backup (pg_dump custom format)")
        row(
            "restore",
            f"{f['restore_s']} s",
            f"into a new database; with verify + health {f['restore_verified_s']} s, ok={f['restore_ok']}",
            TARGETS["restore_s"],
        )
    row("database size", f"{f['database_bytes'] / 1e6:,.0f} MB", "pg_database_size after the builds")
    for key in (
        "build_full_slowest",
        "build_incremental_slowest",
        "build_full_not_pass",
        "build_incremental_not_pass",
        "restore_problems",
    ):
        if f.get(key):
            print(f"  {key}: {'; '.join(f[key])}")


def print_sizes(all_figures: list[dict[str, object]]) -> None:
    print("\nCost against history: the same runs a day, more days (one fresh database per size)")
    print(
        f"  {'runs':>12} {'days':>5} {'raw rows':>12} {'full build s':>13} {'incr. build s':>14} "
        f"{'panel p95 max ms':>17} {'panel p95 median ms':>20} {'slowest query p95 ms':>21}"
    )
    for f in all_figures:
        print(
            f"  {f['runs']:>12,} {f['days']:>5} {f['raw_rows']:>12,} "
            f"{f['build_full_s']:>13} {f['build_incremental_s']:>14} "
            f"{f['panel_p95_max_ms']:>17} {f['panel_p95_median_ms']:>20} {f['query_p95_max_ms']:>21}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000_000, help="demo runs to generate (default 10,000,000)")
    parser.add_argument(
        "--sizes",
        help="comma-separated run counts at the same runs a day as --runs over 185 days (so more runs = more days "
        "of history): builds and query p95 side by side; the operations figures are skipped (--all to keep them)",
    )
    parser.add_argument("--all", action="store_true", help="with --sizes: every figure for every size")
    parser.add_argument(
        "--tenants", type=int, default=50, help="tenants: acme ... wayne, then team-09, team-10, ... (default 50)"
    )
    parser.add_argument(
        "--codes",
        type=int,
        default=60,
        help="problem codes: the demo's 20, then the catalog's other problems with 2+ fixes (default 60)",
    )
    parser.add_argument("--repeat", type=int, default=20, help="timed executions per query (default 20)")
    parser.add_argument("--calls", type=int, default=500, help="timed diagnose and suggest_fixes calls (default 500)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DEVDIAG_HOME")
    args = parser.parse_args()
    log = _log(args.json)

    if args.sizes:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
        per_day = args.runs / DAYS
        results = []
        for n in sizes:
            days = max(2, round(n / per_day))
            log(f"== {n:,} runs over {days} days")
            results.append(
                one_size(
                    n, days, args.tenants, args.repeat, args.calls, log, keep=args.keep, full=args.all, codes=args.codes
                )
            )
        if args.json:
            print(json.dumps(results, indent=2, default=str))
        else:
            for figures in results:
                print_table(figures, args.repeat)
            print_sizes(results)
        return
    figures = one_size(
        args.runs, DAYS, args.tenants, args.repeat, args.calls, log, keep=args.keep, full=True, codes=args.codes
    )
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
    else:
        print_table(figures, args.repeat)


if __name__ == "__main__":
    main()
