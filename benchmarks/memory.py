#!/usr/bin/env python3
"""Team memory: does diagnose find the teammate's note for an error no catalog knows, and how fast?

On a fresh embedded PostgreSQL in a temporary DEVDIAG_HOME:

1. history: ``--runs`` demo runs (3 tenants, 185 days, through the batched writer, which keeps the
   memory as it writes) and ``--noise`` distinct made-up unrecognised errors in the measured tenant,
   so the lookup searches a large memory, not an empty one; then `dbt build`, as in production;
2. quality, over benchmarks/data/memory_families.yaml (errors outside the catalog, 4 variants each
   from different projects and machines): for each family one variant is diagnosed and its outcome
   recorded ('manual') with the family's note; then every other variant is diagnosed. A *hit* is the
   noted run among the (up to three) similar runs diagnose returns; *wrong first* is a run of another
   family (or of the noise) first. Bars: hits >= 90%, wrong first <= 5%;
3. speed: diagnose (classification, similarity lookup, ranking, the write) in-process as the MCP
   tools call it, p50/p99 over ``--calls`` texts (family variants and demo errors); the lookup's SQL
   alone too. Bar: diagnose p99 < 20 ms at 1M runs.

    python benchmarks/memory.py [--runs 1000000] [--noise 20000] [--calls 500] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing the package

FAMILIES = ROOT / "benchmarks" / "data" / "memory_families.yaml"
TENANT = "bench-memory"
NOISE_SHAPES = (
    "error: {a} {b} could not be {v} while {c} was {s}",
    "fatal: {a}_{b} {v} failed: {c} {s} (code {n})",
    "{A}Error: unable to {v} {a} from {b}: {c} is {s}",
    "panic: {a}.{b}: {c} {s} after {n} retries",
    "exception in {a} {b}: {c} {v} rejected, {s}",
    "{a}/{b}.{c}:{n}: {s} {v} of {a} (expected {b})",
    "[{a}] {v} {b} -> {c}: {s}",
    "{A}Exception: {c} {v} {s}; {a} {b} gave up",
)
SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "ti",
    "vo",
    "ze",
    "pa",
    "qu",
    "re",
    "to",
    "fi",
    "gu",
    "ha",
    "jo",
    "ly",
    "mo",
    "nu",
    "pe",
    "ri",
    "su",
    "ta",
    "ve",
    "wi",
    "xo",
    "yu",
    "zo",
]


def vocabulary(rng: random.Random, size: int = 3_000) -> list[str]:
    """Made-up words (a project's names are its own), drawn with a Zipf-like skew: a few are common."""
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def noise_texts(count: int, rng: random.Random) -> list[str]:
    """Distinct made-up errors from many projects (no family's words): what the lookup searches through."""
    words = vocabulary(rng)
    weights = [1 / (rank + 1) for rank in range(len(words))]

    def word() -> str:
        return rng.choices(words, weights)[0]

    texts: set[str] = set()
    while len(texts) < count:
        a, b, c = word(), word(), word()
        texts.add(
            rng.choice(NOISE_SHAPES).format(a=a, b=b, c=c, A=a.title(), v=word(), s=word(), n=rng.randrange(1, 99))
        )
    return sorted(texts)


def load_noise(settings, texts: list[str], now: datetime) -> float:
    from devdiag_db.db import connect
    from mcp_devdiag.catalog import UNRECOGNISED
    from mcp_devdiag.ids import uuid7
    from mcp_devdiag.writer import RunRow, write_runs

    start = now - timedelta(days=60)
    rows = []
    for i, text in enumerate(texts):
        at = start + timedelta(seconds=i * 60)
        rows.append(RunRow(uuid7(at), uuid7(at), at, TENANT, "linux/bench", UNRECOGNISED, error_msg=text))
    started = time.perf_counter()
    with connect(settings) as conn:
        write_runs(conn, rows)
    return time.perf_counter() - started


def quality(app, families: list[dict]) -> dict[str, object]:
    family_of: dict[str, str] = {}  # every run diagnosed here -> its family (noise and demo runs: none)
    noted: dict[str, str] = {}  # family -> the run its note was recorded on
    classified = 0
    for family in families:
        result = app.diagnose(error_text=family["variants"][0])
        classified += bool(result.findings)
        app.record_outcome("manual", run_id=result.run_id, note=family["note"])
        family_of[result.run_id] = family["id"]
        noted[family["id"]] = result.run_id
    hits = wrong_first = empty = asked = 0
    misses: list[str] = []
    for family in families:
        for variant in family["variants"][1:]:
            asked += 1
            result = app.diagnose(error_text=variant)
            classified += bool(result.findings)
            family_of[result.run_id] = family["id"]
            ids = [s.run_id for s in result.similar]
            if noted[family["id"]] in ids:
                hits += 1
            else:
                misses.append(family["id"])
            if not ids:
                empty += 1
            elif family_of.get(ids[0]) != family["id"]:
                wrong_first += 1
    return {
        "families": len(families),
        "lookups": asked,
        "hits": hits,
        "hit_rate": round(hits / asked, 4),
        "wrong_first": wrong_first,
        "wrong_first_rate": round(wrong_first / asked, 4),
        "no_similar": empty,
        "classified_variants": classified,
        "missed_families": sorted(set(misses)),
    }


def speed(app, settings, families: list[dict], calls: int) -> dict[str, object]:
    from devdiag_db.db import connect, tenant_transaction
    from mcp_devdiag import memory
    from orchestrator.demo_data import DEMO_CODES, error_message

    rng = random.Random(5)
    variants = [v for f in families for v in f["variants"]]
    texts = [
        rng.choice(variants) if i % 2 else (error_message(rng.choice(DEMO_CODES), rng) or "Segmentation fault")
        for i in range(calls)
    ]
    for text in texts[:20]:  # warm-up: pool, catalog, ranking cache
        app.diagnose(error_text=text)
    diagnose = []
    for text in texts:
        started = time.perf_counter()
        app.diagnose(error_text=text)
        diagnose.append((time.perf_counter() - started) * 1000)
    recall = memory.Memory()
    lookup = []
    with connect(settings) as conn:
        for text in texts:
            with tenant_transaction(conn, TENANT):
                started = time.perf_counter()
                recall.similar(conn, TENANT, text)
                lookup.append((time.perf_counter() - started) * 1000)
    return {
        "calls": calls,
        "diagnose_p50_ms": round(percentile(diagnose, 0.5), 2),
        "diagnose_p99_ms": round(percentile(diagnose, 0.99), 2),
        "lookup_p50_ms": round(percentile(lookup, 0.5), 2),
        "lookup_p99_ms": round(percentile(lookup, 0.99), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="demo runs in the database (default 1,000,000)")
    parser.add_argument("--noise", type=int, default=20_000, help="distinct unrecognised errors (default 20,000)")
    parser.add_argument("--calls", type=int, default=500, help="timed diagnose calls (default 500)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DEVDIAG_HOME")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="devdiag-bench-memory-"))
    os.environ["DEVDIAG_HOME"] = str(home)
    for var in ("DEVDIAG_PG_DSN", "DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB"):
        os.environ.pop(var, None)

    from devdiag_db import config, embedded
    from devdiag_db.db import connect
    from mcp_devdiag import settings as server_settings
    from mcp_devdiag.server import build_server
    from orchestrator import dbt
    from orchestrator.demo_data import load_demo
    from orchestrator.provision import setup

    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    families = yaml.safe_load(FAMILIES.read_text(encoding="utf-8"))["families"]
    figures: dict[str, object] = {"runs_requested": args.runs, "noise": args.noise}
    now = datetime.now(UTC)
    app = None
    try:
        settings = config.settings()
        setup(settings)
        if args.runs:
            log(f"loading {args.runs:,} demo runs ...")
            report = load_demo(settings, runs=args.runs, seed=7, now=now)
            figures["load_rows_per_s"] = round(report.inserted / report.load_seconds)
        if args.noise:
            log(f"writing {args.noise:,} distinct unrecognised errors ...")
            figures["noise_load_s"] = round(load_noise(settings, noise_texts(args.noise, random.Random(9)), now), 1)
        log("dbt build (the views diagnose's ranking reads) ...")
        broken = [r.name for r in dbt.invoke(settings, ["build"]) if r.status in {"error", "fail"}]
        if broken:
            raise SystemExit(f"dbt build failed: {', '.join(broken)}")
        with connect(settings) as conn:
            # the steady state autovacuum reaches after a load (not its work competing with the timings)
            conn.execute("vacuum analyze devdiag.diag_run, devdiag.error_memory")
            rows, signatures, mine = conn.execute(
                "select (select count(*) from devdiag.diag_run), (select count(*) from devdiag.error_memory), "
                "(select count(*) from devdiag.error_memory where tenant_id = %s)",
                (TENANT,),
            ).fetchone()
        figures.update(db_rows=rows, memory_signatures=signatures, tenant_signatures=mine)
        log(f"{rows:,} rows; {signatures:,} remembered signatures ({mine:,} in {TENANT}); measuring ...")
        _, app = build_server(server_settings.load({**os.environ, "DEVDIAG_TENANT": TENANT}))
        figures["quality"] = quality(app, families)
        figures["speed"] = speed(app, settings, families, args.calls)
    finally:
        if app is not None:
            app.recorder.close()
        if not args.keep:
            embedded.stop()
            shutil.rmtree(home, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    q, s = figures["quality"], figures["speed"]
    assert isinstance(q, dict) and isinstance(s, dict)
    print(f"database: {figures['db_rows']:,} rows; memory: {figures['memory_signatures']:,} signatures", end="")
    print(f" ({figures['tenant_signatures']:,} in the measured tenant)")
    if "load_rows_per_s" in figures:
        print(f"demo load through the writer (memory kept as it writes): {figures['load_rows_per_s']:,} rows/s")
    print(f"families: {q['families']} (variants classified by the catalog: {q['classified_variants']})")
    print(f"noted run among the similar three: {q['hits']}/{q['lookups']} = {q['hit_rate']:.1%}   (bar >= 90%)")
    print(f"another family's run first:        {q['wrong_first']}/{q['lookups']} = {q['wrong_first_rate']:.1%}", end="")
    print("   (bar <= 5%)")
    print(f"no similar run at all:             {q['no_similar']}/{q['lookups']}")
    if q["missed_families"]:
        print(f"families missed at least once: {', '.join(q['missed_families'])}")
    print(f"diagnose p50/p99 over {s['calls']} calls: {s['diagnose_p50_ms']}/{s['diagnose_p99_ms']} ms", end="")
    print("   (bar p99 < 20 ms)")
    print(f"similarity lookup alone p50/p99: {s['lookup_p50_ms']}/{s['lookup_p99_ms']} ms")


if __name__ == "__main__":
    main()
