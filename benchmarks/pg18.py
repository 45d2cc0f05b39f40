#!/usr/bin/env python3
"""What PostgreSQL 18 changes: demo time, `devdiag load` rows/s, build times and panel p95 on the embedded server.

    python benchmarks/pg18.py [--runs 1000000] [--load-rows 500000] [--json]
    python benchmarks/pg18.py --compare 29899ce   # also that commit (PostgreSQL 16, the pgserver wheel), side by side

Each figure on a fresh embedded PostgreSQL in its own temporary DEVDIAG_HOME, one after the other
(never two servers at once):

- demo: wall time of `devdiag demo` (20,000 runs) in a new DEVDIAG_HOME, initdb and server start included;
- devdiag load: the demo generator's rows as JSONL, imported by `devdiag load` in its own process
  (benchmarks/mcp_server.py's load_history): rows/s that the command reports;
- at --runs runs over 185 days (benchmarks/scale.py's one_size, without the service and operations
  figures): the writer's bulk load rows/s, `dbt build` full, then incremental after one more day,
  and p95 of every dashboard panel for the last 7 days as role grafana (max and median).

--compare REF extracts REF with `git archive` into a temporary directory (or --baseline-dir, kept
for the next run), installs it into its own venv (that commit's dependencies, e.g. the pgserver
wheel) and runs this same script there with --json, then here, and prints both columns. The figures
are wall times on whatever machine runs them: on a shared machine they are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
ENV_VARS = ("DEVDIAG_PG_DSN", "DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB")
ROWS = [  # (key, label, unit)
    ("postgres", "PostgreSQL", ""),
    ("demo_s", "devdiag demo (20,000 runs)", "s"),
    ("devdiag_load_rows_per_s", "devdiag load (JSONL)", "rows/s"),
    ("load_rows_per_s", "writer bulk load", "rows/s"),
    ("build_full_s", "dbt build full", "s"),
    ("build_incremental_s", "dbt build incremental", "s"),
    ("panel_p95_median_ms", "panel p95, median of panels", "ms"),
    ("panel_p95_max_ms", "panel p95, slowest panel", "ms"),
    ("query_p95_max_ms", "any query p95, slowest", "ms"),
]


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def fresh_home(prefix: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["DEVDIAG_HOME"] = str(home)
    for var in ENV_VARS:
        os.environ.pop(var, None)
    return home


def devdiag(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from orchestrator.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, env=os.environ, check=False)


def postgres_version() -> str:
    from devdiag_db import embedded

    out = subprocess.run([embedded.pg_bin("postgres"), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().rsplit(" ", 1)[-1]


def measure_demo() -> dict[str, object]:
    home = fresh_home("devdiag-bench-pg-demo-")
    try:
        started = time.perf_counter()
        done = devdiag("demo")
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"devdiag demo failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        return {"demo_s": round(seconds, 1)}
    finally:
        devdiag("db", "stop")
        shutil.rmtree(home, ignore_errors=True)


def measure_load(rows: int) -> dict[str, object]:
    from mcp_server import load_history  # benchmarks/mcp_server.py

    from devdiag_db import config, embedded
    from orchestrator.provision import setup

    home = fresh_home("devdiag-bench-pg-load-")
    figures: dict[str, object] = {}
    try:
        settings = config.settings()
        setup(settings)
        load_history(settings, home, rows, figures, log)
    finally:
        embedded.stop()
        shutil.rmtree(home, ignore_errors=True)
    load = figures["load"]
    return {"devdiag_load_rows_per_s": round(load["rows_per_s"]), "devdiag_load_rows": load["inserted"]}


def measure_scale(runs: int, repeat: int) -> dict[str, object]:
    from scale import DAYS, one_size  # benchmarks/scale.py: its own DEVDIAG_HOME

    f = one_size(runs, DAYS, 50, repeat, 0, log, keep=False, full=False)
    keys = ("load_rows_per_s", "build_full_s", "build_incremental_s", "panel_p95_max_ms", "panel_p95_median_ms")
    slowest = {"query_p95_max_ms": f["query_p95_max_ms"], "query_p95_max": f["query_p95_max"]}
    return {**{k: f[k] for k in keys}, **slowest, "raw_rows": f["raw_rows"]}


def measure(args: argparse.Namespace) -> dict[str, object]:
    figures: dict[str, object] = {"postgres": postgres_version(), "runs": args.runs}
    log(f"PostgreSQL {figures['postgres']}: devdiag demo ...")
    figures.update(measure_demo())
    log(f"PostgreSQL {figures['postgres']}: devdiag load ...")
    figures.update(measure_load(args.load_rows))
    log(f"PostgreSQL {figures['postgres']}: {args.runs:,} runs: load, builds, panels ...")
    figures.update(measure_scale(args.runs, args.repeat))
    return figures


def baseline(args: argparse.Namespace) -> dict[str, object]:
    """This script's figures on commit ``args.compare``, in its own tree and venv."""
    tree = Path(args.baseline_dir) if args.baseline_dir else Path(tempfile.mkdtemp(prefix="devdiag-bench-base-"))
    python = tree / ".venv" / "bin" / "python"
    if not python.exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.compare], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        subprocess.run([sys.executable, "-m", "venv", str(tree / ".venv")], check=True)
        log(f"installing {args.compare} into {tree / '.venv'} ...")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", str(tree)], check=True)
    shutil.copy(__file__, tree / "benchmarks" / "pg18.py")
    command = [str(python), str(tree / "benchmarks" / "pg18.py"), "--json"]
    command += ["--runs", str(args.runs), "--load-rows", str(args.load_rows), "--repeat", str(args.repeat)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False, cwd=tree)
    if not args.baseline_dir:
        shutil.rmtree(tree, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"the baseline run on {args.compare} failed (exit {done.returncode})")
    return json.loads(done.stdout)


def show(columns: list[dict[str, object]]) -> None:
    print(f"\n{'figure':34}" + "".join(f"{'PostgreSQL ' + str(c['postgres']):>18}" for c in columns))
    for key, label, unit in ROWS[1:]:
        cells = []
        for c in columns:
            value = c.get(key)
            cells.append("-" if value is None else f"{value:,}" + (f" {unit}" if unit else ""))
        print(f"{label:34}" + "".join(f"{cell:>18}" for cell in cells))
    print(f"{'slowest query':34}" + "".join(f"{c.get('query_p95_max', '-')!s:>18}" for c in columns))
    print(
        f"(at {columns[-1]['runs']:,} runs for the load, builds and panels; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end: indicative figures)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs for load, builds and panels (1,000,000)")
    parser.add_argument("--load-rows", type=int, default=500_000, help="rows in the `devdiag load` file (500,000)")
    parser.add_argument("--repeat", type=int, default=20, help="timed executions per query (20)")
    parser.add_argument("--compare", metavar="REF", help="also measure this git commit (in its own venv)")
    parser.add_argument("--baseline-dir", help="where --compare keeps REF's tree and venv (reused when present)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    # `python -c` children import orchestrator from the current directory first: this tree's, not another's.
    os.chdir(ROOT)

    columns = [baseline(args)] if args.compare else []
    columns.append(measure(args))
    if args.json:
        print(json.dumps(columns[-1] if len(columns) == 1 else columns, indent=2))
    else:
        show(columns)


if __name__ == "__main__":
    main()
