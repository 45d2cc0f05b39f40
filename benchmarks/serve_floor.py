#!/usr/bin/env python3
"""The floor under `devdiag serve`: what the MCP SDK's transport costs a call with tools that do nothing.

The same transport as `devdiag serve` (the SDK's Streamable HTTP app, stateless, JSON responses, under
uvicorn with the same worker count, event loop and HTTP parser), serving `diagnose` and `record_outcome`
tools that return at once: no token check, no database, no DevDiag code. benchmarks/serve.py's
generator drives it at the same offered load, so `serve_cpu_ms_per_call` here and there compare
directly: the difference is what DevDiag's own code (the token check, the tools, the database client)
costs a call, the floor what no change of DevDiag's can remove.

    python benchmarks/serve_floor.py [--rate 200] [--clients 50] [--calls 200] [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from pydantic import BaseModel  # noqa: E402
from serve import Tally, client_loop, free_port, percentile, run_loop, tree_cpu_s  # noqa: E402


class Diagnosis(BaseModel):  # module level: the SDK resolves the tools' annotations by name
    run_id: str
    findings: list[str]


class Outcome(BaseModel):
    updated: int


def app():  # the ASGI app each uvicorn worker builds (--factory)
    """Tools shaped like DevDiag's (same names and answer fields the generator reads), doing nothing."""
    from mcp.server.mcpserver import MCPServer

    logging.getLogger("mcp").setLevel(logging.WARNING)  # as `devdiag serve`: the SDK logs every request
    server = MCPServer("devdiag-floor")

    @server.tool()
    def diagnose(error_text: str) -> Diagnosis:
        """Return a new run id."""
        return Diagnosis(run_id=str(uuid.uuid4()), findings=[])

    @server.tool()
    def record_outcome(run_id: str, resolution: str) -> Outcome:
        """Accept an outcome."""
        return Outcome(updated=1)

    return server.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, json_response=True)


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"uvicorn exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit("uvicorn did not listen within 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--calls", type=int, default=200, help="calls per client (half diagnose, half outcomes)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=200, help="offered calls/s over all clients (0: back to back)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "serve_floor:app", "--factory", "--port", str(port)]
    options = ["--workers", str(args.workers), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")}
    process = subprocess.Popen([*command, *options], env=env, start_new_session=True)
    try:
        wait_listening(port, process)
        warm = Tally()
        run_loop(client_loop(port, "-", "floor", 20, 0, warm, 0))
        time.sleep(1)  # every worker up and warmed by the others' connections
        tally = Tally()
        interval = args.clients / args.rate if args.rate else 0.0
        cpu_before = tree_cpu_s(process.pid)

        async def run() -> float:
            import asyncio

            started = time.perf_counter()
            await asyncio.gather(
                *(client_loop(port, "-", "floor", args.calls, i, tally, interval) for i in range(args.clients))
            )
            return time.perf_counter() - started

        elapsed = run_loop(run())
        cpu = tree_cpu_s(process.pid) - cpu_before
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    report = {
        "clients": args.clients,
        "workers": args.workers,
        "calls": tally.calls,
        "calls_per_s": round(tally.calls / elapsed, 1),
        "p50_ms": round(percentile(tally.latencies, 0.50) * 1000, 1),
        "p99_ms": round(percentile(tally.latencies, 0.99) * 1000, 1),
        "serve_cpu_ms_per_call": round(cpu / max(tally.calls, 1) * 1000, 2),
        "errors": sum(tally.errors.values()),
    }
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key:22} {value}")


if __name__ == "__main__":
    main()
