#!/usr/bin/env python3
"""Hostile-input figures of the MCP server over stdio, on a fresh embedded PostgreSQL.

For each input shape (realistic logs and the shapes that made regexes backtrack), a `diagnose` of
about 1 MB (just under the input limit, every argument counted) is sent to `python -m mcp_devdiag`
through the SDK's stdio client while a second task calls `list_problems` every 20 ms. Printed per
shape: the diagnose latency, and the slowest other call answered while it ran.

    python benchmarks/hardening.py [--size 990000] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import string
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing the package

PORT_ERROR = "Error: listen EADDRINUSE: address already in use :::3000"


def shapes(size: int) -> dict[str, dict[str, str]]:
    """Tool arguments of about ``size`` characters in all, by name."""
    rng = random.Random(3)

    def fill(unit: str) -> str:
        return (unit * (size // len(unit) + 1))[: size - len(PORT_ERROR) - 1] + "\n" + PORT_ERROR

    log = "".join(f"2026-12-03T08:00:{i % 60:02d}Z INFO GET /api/items/{i} 200 12ms\n" for i in range(size // 48))
    return {
        "log lines": {"error_text": log[: size - len(PORT_ERROR) - 1] + "\n" + PORT_ERROR},
        "random printable": {"error_text": "".join(rng.choice(string.printable) for _ in range(size))},
        "'a-' * n + '://'": {"error_text": fill("a-")[:-200] + "://"},
        "'mysql -p' * n": {"error_text": fill("mysql -p")},
        "PEM BEGIN, no END": {"error_text": "-----BEGIN RSA PRIVATE KEY-----\n" + fill("QUJD")},
        "key=value * n": {"error_text": fill("password=")},
        "one long line, no spaces": {"error_text": fill("x")},
        "split over 3 arguments": {
            "error_text": fill("a:")[: size // 3],
            "logs": fill("@")[: size // 3],
            "context": fill("Bearer ")[: size // 3],
        },
    }


async def measure(home: Path, size: int) -> list[dict[str, object]]:
    from mcp.client import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    env = {
        "DEVDIAG_HOME": str(home),
        "DEVDIAG_TENANT": "bench-hardening",
        "DEVDIAG_ENVIRONMENT": "linux/python-3.12",
        "DEVDIAG_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_devdiag"], env=env)
    out: list[dict[str, object]] = []
    with open(home / "server.stderr", "w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=120) as client:
            await client.call_tool("diagnose", {"error_text": PORT_ERROR})  # warm-up
            for name, args in shapes(size).items():
                done = asyncio.Event()
                pings: list[float] = []

                async def ping(done: asyncio.Event, pings: list[float]) -> None:
                    while not done.is_set():
                        t0 = time.perf_counter()
                        await client.call_tool("list_problems", {"category": "git"})
                        pings.append(time.perf_counter() - t0)
                        await asyncio.sleep(0.02)

                pinger = asyncio.create_task(ping(done, pings))
                await asyncio.sleep(0.05)
                t0 = time.perf_counter()
                result = await client.call_tool("diagnose", args)
                took = time.perf_counter() - t0
                done.set()
                await pinger
                text = " ".join(getattr(c, "text", "") for c in result.content)
                out.append(
                    {
                        "shape": name,
                        "chars": sum(len(v) for v in args.values()),
                        "diagnose_s": round(took, 3),
                        "slowest_other_call_ms": round(max(pings) * 1000, 1),
                        "other_calls": len(pings),
                        "answer": "error: " + text[:80] if result.is_error else "ok",
                    }
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=990_000, help="characters per diagnose (default 990,000)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DEVDIAG_HOME")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="devdiag-hardening-bench-"))
    os.environ["DEVDIAG_HOME"] = str(home)
    for var in ("DEVDIAG_PG_DSN", "DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB"):
        os.environ.pop(var, None)

    from devdiag_db import config, embedded
    from orchestrator.provision import setup

    try:
        setup(config.settings())
        rows = asyncio.run(measure(home, args.size))
    finally:
        embedded.stop()
        if args.keep:
            print(f"kept {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)

    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "shapes": rows}, indent=2))
        return
    print(f"\ndiagnose of ~{args.size:,} characters over stdio, another call every 20 ms ({os.cpu_count()} CPUs)")
    print(f"  {'shape':28} {'chars':>9} {'diagnose':>9} {'slowest other call':>19}  answer")
    for row in rows:
        print(
            f"  {row['shape']:28} {row['chars']:>9,} {row['diagnose_s']:>8.3f}s "
            f"{row['slowest_other_call_ms']:>17.1f}ms  {row['answer']}"
        )


if __name__ == "__main__":
    main()
