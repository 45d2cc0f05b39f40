#!/usr/bin/env python3
"""What one `devdiag serve` call costs the machine: the ASGI app driven in-process, without sockets.

On a fresh embedded PostgreSQL in a temporary DEVDIAG_HOME: `devdiag setup`, the dbt models (`dbt run`),
one token per tenant; then the app that `devdiag serve` runs in each worker (`mcp_devdiag.http.build_app`,
as the database writer, its lifespan started) and, from C concurrent tasks, N calls alternating
`diagnose` and `record_outcome` on the run just diagnosed, the requests of benchmarks/serve.py. Prints
the CPU each call costs this process (the app: its event loop and its tool threads, with the driver's
small share) and PostgreSQL, and with --statements the database round trips of a call, by statement.

With no HTTP, no generator and no other worker in the way, the figure moves less than serve.py's, and
two checkouts can be compared by running each at the same time (both cores busy: one alone pays for
its process and PostgreSQL taking turns on them, 25-40% more CPU a call on this machine).

    python benchmarks/serve_cost.py [--calls 2000] [--concurrency 4] [--tenants 10] [--statements] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing the package
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve import (  # noqa: E402
    ERRORS,
    HEADERS,
    RESOLUTIONS,
    built_database,
    fresh_home,
    percentile,
    rpc,
    run_loop,
    tree_cpu_s,
)


class Statements:
    """Every statement and transaction command sent, counted by its text (literals masked)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        import psycopg
        from psycopg import _connection_base

        execute, command = psycopg.Cursor.execute, _connection_base.BaseConnection._exec_command

        def counted_execute(cursor, query, params=None, **kwargs):
            self.add(query if isinstance(query, str | bytes) else query.as_string(cursor.connection))
            return execute(cursor, query, params, **kwargs)

        def counted_command(conn, sent, *args, **kwargs):
            self.add(sent)  # BEGIN, COMMIT, SAVEPOINT ... that psycopg sends for conn.transaction()
            return command(conn, sent, *args, **kwargs)

        psycopg.Cursor.execute, _connection_base.BaseConnection._exec_command = counted_execute, counted_command
        try:
            yield
        finally:
            psycopg.Cursor.execute, _connection_base.BaseConnection._exec_command = execute, command

    def add(self, text: Any) -> None:
        text = text.decode() if isinstance(text, bytes) else str(text)
        text = re.sub(r"'[^']*'|\"_pg3_\d+\"|= \d+", "?", " ".join(text.split()))
        self.counts[text[:100]] += 1


async def request(app, body: dict, token: str) -> tuple[int, dict]:
    """One POST /mcp through the ASGI app, as uvicorn would hand it over."""
    payload = json.dumps(body).encode()
    headers = [
        (b"host", b"127.0.0.1:8765"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.encode(), v.encode()) for k, v in HEADERS.items()),
        (b"authorization", f"Bearer {token}".encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8765),
    }
    sent = False
    status, chunks = 0, []

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        return {}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, json.loads(b"".join(chunks) or b"{}")


@contextlib.asynccontextmanager
async def lifespan(app):
    """Start and stop the app as uvicorn does (the SDK's session manager, the spool's replay loop)."""
    started, stopping = asyncio.Event(), asyncio.Event()
    events = iter([{"type": "lifespan.startup"}])

    async def receive() -> dict:
        with contextlib.suppress(StopIteration):
            return next(events)
        await stopping.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: dict) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
    await started.wait()
    try:
        yield
    finally:
        stopping.set()
        await task


async def drive(app, tokens: list[str], calls: int, concurrency: int, postmaster: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()

    async def client(seed: int, count: int) -> None:
        token, run_id = tokens[seed % len(tokens)], None
        for i in range(count):
            started = time.perf_counter()
            if run_id is None:
                text = ERRORS[(seed + i) % len(ERRORS)] + f"\n(at step {i} of client {seed})"
                status, answer = await request(app, rpc("diagnose", {"error_text": text}), token)
                run_id = ((answer.get("result") or {}).get("structuredContent") or {}).get("run_id")
            else:
                outcome = {"run_id": run_id, "resolution": RESOLUTIONS[(seed + i) % 3]}
                status, answer = await request(app, rpc("record_outcome", outcome), token)
                run_id = None
            latencies.append(time.perf_counter() - started)
            if status != 200 or "error" in answer or (answer.get("result") or {}).get("isError"):
                errors[f"http {status}" if status != 200 else str(answer)[:120]] += 1

    async with lifespan(app):
        await asyncio.gather(*(client(i, 20) for i in range(concurrency)))  # warm-up: pools, caches, plans
        latencies.clear()
        errors.clear()
        cpu, db_cpu, wall = time.process_time(), tree_cpu_s(postmaster), time.perf_counter()
        await asyncio.gather(*(client(i, calls // concurrency) for i in range(concurrency)))
        cpu, db_cpu, wall = time.process_time() - cpu, tree_cpu_s(postmaster) - db_cpu, time.perf_counter() - wall
    done = len(latencies)
    return {
        "calls": done,
        "concurrency": concurrency,
        "calls_per_s": round(done / wall, 1),
        "serve_cpu_ms_per_call": round(cpu / done * 1000, 3),
        "postgres_cpu_ms_per_call": round(db_cpu / done * 1000, 3),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls in all (half diagnose, half outcomes)")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight at once")
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--statements", action="store_true", help="count the round trips of a call, by statement")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DEVDIAG_HOME")
    args = parser.parse_args()

    home = fresh_home("devdiag-bench-serve-cost-")
    from devdiag_db import db, embedded, tokens
    from orchestrator.secrets import role_password

    try:
        owner = built_database()
        with db.connect(owner) as conn:
            issued = [tokens.create(conn, f"bench-{i}", f"client-{i}", None)[0] for i in range(args.tenants)]
        # The app as a worker builds it: the writer's login, every other setting from the environment.
        writer = embedded.tcp_settings("devdiag_writer", role_password("devdiag_writer"))
        os.environ["DEVDIAG_PG_DSN"] = writer.url(with_password=True)
        from mcp_devdiag import http
        from mcp_devdiag.settings import load

        app = http.build_app(load(), http.HttpSettings(rate_per_min=0))
        statements = Statements()
        postmaster = embedded.status().pid or 0
        with statements.counting() if args.statements else contextlib.nullcontext():
            report = run_loop(drive(app, issued, args.calls, args.concurrency, postmaster))
        if args.statements:  # the warm-up's too: per call of all those driven
            driven = report["calls"] + 20 * args.concurrency
            report["round_trips_per_call"] = round(sum(statements.counts.values()) / driven, 2)
            report["statements_per_call"] = {
                text: round(count / driven, 2) for text, count in statements.counts.most_common()
            }
    finally:
        embedded.stop()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        if key == "statements_per_call":
            for text, per_call in value.items():
                print(f"  {per_call:5.2f}  {text}")
        else:
            print(f"{key:26} {value}")


if __name__ == "__main__":
    main()
