#!/usr/bin/env python3
"""Operations figures at N raw rows with a sixth expired, on a fresh embedded PostgreSQL in a temporary DEVDIAG_HOME.

    python benchmarks/operations.py [--rows 1000000] [--runs 1] [--json] [--keep]

Per run (the raw table is regenerated for each, deterministically):
- retention at 180 days, timed, while a writer thread inserts 5 rows per transaction in a loop and
  times each transaction: its longest wait during the retention (and before it, as a baseline);
- backup: time and size of the `devdiag backup` file;
- restore of that file into a new database: time to a committed restore, and with verification;
- the drill (`devdiag drill`): time_to_restore_s and rows_lost.

Rows: one per run, time-ordered UUIDv7-style ids, uniform over 216 days (so 36/216 = 1/6 is older than
180 days), 20 tenants, the catalog's problem codes (30% clean runs), fixes, outcomes and error texts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

RETENTION_DAYS = 180
SPAN_DAYS = 216  # 180 / 216 = 5/6 kept: a sixth expired

_GENERATE = """
with codes as (
    select array_agg(distinct problem_code order by problem_code) as a from devdiag.fix_catalog
), top_fix as (
    select distinct on (problem_code) problem_code, fix_id from devdiag.fix_catalog order by problem_code, catalog_rank
), g as (
    select i, md5(i::text) as h, r2, ts, env,
           -- 3 in 10 runs are clean; problems skewed towards a few codes, as in life
           case when r1 >= 0.3 then codes.a[1 + floor(((r1 - 0.3) / 0.7) ^ 2 * array_length(codes.a, 1))::int]
           end as problem_code
    from (
        select i, random() as r1, random() as r2,
               now() - make_interval(days => %(span)s) * (1 - (i - 0.5) / %(rows)s) as ts,
               (array['linux/python-3.12/node-20', 'linux/python-3.11/node-18', 'macos/python-3.12/node-20',
                      'windows/python-3.12/node-20', 'linux/python-3.13/node-22', 'macos/python-3.11/node-18',
                      'windows/python-3.11/node-18', 'linux/python-3.10/node-16'])[1 + i %% 8] as env
        from generate_series(1, %(rows)s) as i
    ) raw cross join codes
)
insert into devdiag.diag_run (id, run_id, ts, tenant_id, environment, problem_code, fix_suggestion,
                              confidence, resolution, resolved_at, error_msg)
select (lpad(to_hex((extract(epoch from g.ts) * 1000)::bigint), 12, '0') || '7' || substr(g.h, 1, 3) || '8'
        || substr(g.h, 4, 15))::uuid,
       md5(g.h)::uuid, g.ts, 'tenant-' || (g.i %% 20), g.env, g.problem_code, f.fix_id,
       case when f.fix_id is not null then round((0.4 + 0.6 * g.r2)::numeric, 3) end,
       case when g.problem_code is not null and g.r2 < 0.75
            then (array['fixed', 'fixed', 'manual', 'failed'])[1 + g.i %% 4] end,
       case when g.problem_code is not null and g.r2 < 0.75 then g.ts + make_interval(hours => 1 + g.i %% 70) end,
       case when g.problem_code is not null and g.i %% 5 = 0
            then 'error: ' || g.problem_code || ' at step ' || g.i %% 97 end
from g left join top_fix f on f.problem_code = g.problem_code
order by g.ts
"""


def load(settings, rows: int) -> float:
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        conn.execute("truncate devdiag.diag_run")
        conn.execute("select setseed(0.42)")
        conn.execute(_GENERATE, {"rows": rows, "span": SPAN_DAYS})
        conn.execute("vacuum analyze devdiag.diag_run")
    return time.perf_counter() - started


class Writer(threading.Thread):
    """Inserts 5 rows per transaction, back to back; records (start, seconds) of each transaction."""

    def __init__(self, settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.settings.conninfo()) as conn:
            while not self.stop.is_set():
                started = time.perf_counter()
                with conn.transaction():
                    conn.execute(
                        "insert into devdiag.diag_run (id, run_id, ts, tenant_id, environment, problem_code) "
                        "select gen_random_uuid(), gen_random_uuid(), now(), 'tenant-writer', 'linux/python-3.12', "
                        "'NPM_ERESOLVE' from generate_series(1, 5)"
                    )
                self.samples.append((started, time.perf_counter() - started))

    def worst(self, start: float, end: float) -> tuple[float, int]:
        during = [s for t, s in self.samples if start <= t <= end]
        return (max(during) if during else 0.0), len(during)


def one_run(settings, rows: int, workdir: Path, log, *, build: bool) -> dict[str, object]:
    import psycopg

    from orchestrator.drill import run_drill

    figures: dict[str, object] = {}
    log(f"loading {rows:,} rows over {SPAN_DAYS} days ...")
    figures["load_s"] = round(load(settings, rows), 2)
    if build:
        from orchestrator import dbt

        log("dbt build (the six views and their tables) ...")
        started = time.perf_counter()
        dbt.invoke(settings, ["build"])
        figures["dbt_build_s"] = round(time.perf_counter() - started, 2)
    with psycopg.connect(settings.conninfo()) as conn:
        figures["raw_rows"], figures["expired_rows"] = conn.execute(
            "select count(*), count(*) filter (where ts < now() - make_interval(days => %s)) from devdiag.diag_run",
            (RETENTION_DAYS,),
        ).fetchone()

    figures.update(measure_retention(settings, log))
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        conn.execute("delete from devdiag.diag_run where tenant_id = 'tenant-writer'")
        figures["rows_after_retention"] = conn.execute("select count(*) from devdiag.diag_run").fetchone()[0]

    figures.update(measure_backup_restore(settings, workdir, "devdiag_bench_restore", log))

    log("drill ...")
    drill = run_drill(settings, quiet=True)
    figures.update(
        drill_time_to_restore_s=round(drill.time_to_restore_s, 2),
        drill_rows_lost=drill.rows_lost,
        drill_passed=drill.passed,
        drill_problems=drill.problems,
    )
    return figures


def summarise(runs: list[dict[str, object]]) -> dict[str, object]:
    """The median of each number over the runs (the max for the writer's wait); the rest from the last run."""
    summary = dict(runs[-1])
    for key, value in runs[-1].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [r[key] for r in runs]
            if key.startswith("writer_"):
                summary[key] = max(values)
            elif isinstance(value, int):
                summary[key] = statistics.median_low(values)
            else:
                summary[key] = round(statistics.median(values), 2)
    return summary


def print_table(summary: dict[str, object], runs: int) -> None:
    mb = summary["backup_bytes"] / 1e6
    rows = [
        ("raw rows (expired)", f"{summary['raw_rows']:,} ({summary['expired_rows']:,})", ""),
        ("load (generated in SQL)", f"{summary['load_s']} s", ""),
        ("retention (180 d)", f"{summary['retention_s']} s", "< 30 s"),
        (
            "  deleted / kept first-last",
            f"{summary['retention_deleted']:,} / {summary['retention_kept_first_last']:,}",
            "",
        ),
        ("  writer max wait during", f"{summary['writer_max_wait_s'] * 1000:.1f} ms", "< 1000 ms"),
        ("  writer max wait before", f"{summary['writer_baseline_max_s'] * 1000:.1f} ms", ""),
        ("backup", f"{summary['backup_s']} s, {mb:.1f} MB", ""),
        ("restore (committed)", f"{summary['restore_s']} s", ""),
        ("restore + verify + health", f"{summary['restore_verified_s']} s", ""),
        ("drill time_to_restore_s", f"{summary['drill_time_to_restore_s']} s", "< 1800 s"),
        ("drill rows_lost", f"{summary['drill_rows_lost']}", "0"),
    ]
    print(f"\nDevDiag operations, {runs} run(s) (median; writer waits: max)")
    print(f"  {'figure':30} {'value':>26}  target")
    for name, value, target in rows:
        print(f"  {name:30} {value:>26}  {target}")
    for key in ("restore_problems", "drill_problems"):
        if summary[key]:
            print(f"  {key}: {'; '.join(summary[key])}")


def measure_retention(settings, log) -> dict:
    """Retention at RETENTION_DAYS while a Writer inserts in small transactions; its longest wait."""
    from orchestrator.retention import run_retention

    log(f"retention ({RETENTION_DAYS} days) with a concurrent writer ...")
    writer = Writer(settings)
    writer.start()
    time.sleep(2.0)  # baseline
    started = time.perf_counter()
    report = run_retention(settings, days=RETENTION_DAYS, quiet=True)
    ended = time.perf_counter()
    time.sleep(0.5)
    writer.stop.set()
    writer.join()
    worst, count = writer.worst(started, ended)
    baseline, _ = writer.worst(0, started)
    return {
        "retention_s": round(ended - started, 2),
        "retention_deleted": report.rows_deleted,
        "retention_kept_first_last": report.rows_kept_first_last,
        "retention_batches": report.batches,
        "writer_max_wait_s": round(worst, 4),
        "writer_transactions": count,
        "writer_baseline_max_s": round(baseline, 4),
    }


def measure_backup_restore(settings, workdir: Path, scratch_db: str, log, digits: int = 2) -> dict:
    """Backup time and size, then restore time into a new database (dropped again)."""
    from orchestrator.backup import run_backup
    from orchestrator.restore import drop_database, run_restore

    log("backup ...")
    backup = run_backup(settings, workdir / "backups", keep_days=None, quiet=True)
    log("restore into a new database ...")
    drop_database(settings, scratch_db)
    restored = run_restore(settings, backup.path, database=scratch_db, quiet=True)
    drop_database(settings, scratch_db)
    return {
        "backup_s": round(backup.seconds, digits),
        "backup_bytes": backup.bytes,
        "restore_s": round(restored.restore_seconds, digits),
        "restore_verified_s": round(restored.seconds, digits),
        "restore_ok": restored.ok,
        "restore_problems": restored.problems,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="raw rows to generate (default 1,000,000)")
    parser.add_argument("--runs", type=int, default=1, help="repetitions, each on freshly generated rows (default 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DEVDIAG_HOME")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="devdiag-bench-ops-"))
    os.environ["DEVDIAG_HOME"] = str(home)
    for var in ("DEVDIAG_PG_DSN", "DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB"):
        os.environ.pop(var, None)

    from devdiag_db import config, embedded
    from orchestrator.provision import setup

    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    runs = []
    try:
        settings = config.settings()
        setup(settings)
        for n in range(args.runs):
            log(f"run {n + 1}/{args.runs}")
            runs.append(one_run(settings, args.rows, home / f"run-{n}", log, build=n == 0))
    finally:
        embedded.stop()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)

    summary = summarise(runs)
    if args.json:
        print(json.dumps({"rows": args.rows, "runs": runs, "summary": summary}, indent=2))
    else:
        print_table(summary, args.runs)


if __name__ == "__main__":
    main()
