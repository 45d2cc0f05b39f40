#!/usr/bin/env python3
"""`devdiag serve` under load: N concurrent HTTP clients of T tenants, each with its own token.

On a fresh embedded PostgreSQL in a temporary DEVDIAG_HOME (same machine): `devdiag setup`, the dbt
models (`dbt run`, as the cron keeps them: the server reads v_fix_ranking), one token per client
(`devdiag_db.tokens.create`), then `devdiag serve --workers W` as a subprocess on a free port of
127.0.0.1. Each client is one keep-alive HTTP/1.1 connection (a minimal client of the script's own: the
generator shares the machine's two cores with the server, so it must cost little) posting MCP JSON-RPC
`tools/call` requests to /mcp directly (the server is stateless: no session to set up), alternating
`diagnose` (a realistic error text) and `record_outcome` on the run it got. Latency is timed at the
client, per call, from request to parsed answer.

After the load, the owner counts the rows of every run_id a client was given: rows lost (a run
answered but not stored, after the spool drained), rows duplicated, and rows stored under a tenant
other than the caller's token's (cross-tenant).

Where a p99 goes: the run second by second (by each call's start), the number of seconds whose own
p99 was over 100 ms and the worst second, with the machine's CPU time in it by kind (/proc/stat:
busy, iowait, steal): a miss spread over the run is too little CPU, one of a few seconds is a stall.
The disk is probed alongside (`DiskProbe`: an 8 kB write and `fdatasync` every 50 ms beside the
database, timed): `disk_flush_max_ms`, `disk_stalls_over_100ms`, and the longest flush around the worst
second. A stall there held every durable commit in flight, whatever the server does.

    python benchmarks/serve.py [--clients 50] [--calls 200] [--tenants 10] [--workers 2] [--json]   # saturation
    python benchmarks/serve.py --rate 200                                   # 200 calls/s offered: latency at that load
    python benchmarks/serve.py --rate 200 --synchronous-commit on           # every commit waiting for the disk
    python benchmarks/serve.py --clients 20 --calls 250 --fault db-restart   # 5,000 calls, PostgreSQL stopped mid-load
    python benchmarks/serve.py --clients 20 --calls 250 --fault db-crash     # the same, stopped as by a crash
    python benchmarks/serve.py --clients 20 --calls 250 --fault kill-serve   # SIGKILL of serve mid-load, restarted
    python benchmarks/serve.py --disk-only 60                                # the disk's flushes alone, no load
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing the package

ERRORS = [
    "Error: listen EADDRINUSE: address already in use :::3000",
    "Access to fetch at 'https://api.example.com/v1' from origin 'http://localhost:3000' has been blocked by CORS "
    "policy: No 'Access-Control-Allow-Origin' header is present on the requested resource.",
    "ModuleNotFoundError: No module named 'requests'",
    "psycopg.OperationalError: connection refused",
    "Got permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock",
    "npm ERR! code ERESOLVE\nnpm ERR! ERESOLVE unable to resolve dependency tree",
]
RESOLUTIONS = ["fixed", "failed", "manual"]
SERVE = [sys.executable, "-c", "from orchestrator.cli import main; main()", "serve"]  # `devdiag serve`


def run_loop(coro):
    """uvloop where it is installed (it is with the server's dependencies): a cheaper generator."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def host_speed_ms() -> float:
    """CPU milliseconds of a fixed loop of Python: the same code takes 30-60% longer in a shared host's
    busy minutes, and so does every call; printed so that a slow run can be told from a slow host."""
    started = time.process_time()
    total = 0
    for i in range(2_000_000):
        total += i
    return round((time.process_time() - started) * 1000, 1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    started: list[float] = field(default_factory=list)  # perf_counter at each call's start, for the timeline
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    runs: dict[str, tuple[str, int]] = field(default_factory=dict)  # run_id -> (tenant, rows expected)
    spooled: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def rpc(name: str, arguments: dict) -> dict:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


HEADERS = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"}


class Connection:
    """One keep-alive HTTP/1.1 connection, written for the generator's own cost: a full HTTP client
    (httpx2 took 1.3 ms of CPU a call) would spend on the machine's two cores what the server
    needs. It sends a POST with a JSON body and reads a Content-Length response, nothing more."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: dict, token: str) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        payload = json.dumps(body).encode()
        head = (
            f"POST {self.path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n"
            f"accept: {HEADERS['accept']}\r\nmcp-protocol-version: {HEADERS['mcp-protocol-version']}\r\n"
            f"authorization: Bearer {token}\r\n\r\n"
        )
        try:
            self.writer.write(head.encode() + payload)
            status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
            data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(status_line.split()[1]), headers, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None


async def call(client: Connection, token: str, body: dict, tally: Tally, retry_429: bool = True) -> dict | None:
    """One tools/call; its structured result, or None (counted as an error). A 429 waits and retries."""
    tally.calls += 1
    started = time.perf_counter()
    while True:
        try:
            status, headers, data = await asyncio.wait_for(client.post(body, token), 30)
        except Exception as error:
            tally.error(type(error).__name__)
            return None
        if status == 429 and retry_429:
            await asyncio.sleep(float(headers.get("retry-after", "1")))
            continue
        break
    tally.latencies.append(time.perf_counter() - started)
    tally.started.append(started)
    if status != 200:
        tally.error(f"http {status}")
        return None
    message = json.loads(data)
    result = message.get("result") or {}
    if "error" in message or result.get("isError"):
        text = (message.get("error") or {}).get("message") or (result.get("content") or [{}])[0].get("text", "")
        tally.error(f"tool error: {str(text)[:100]}")
        return None
    return result.get("structuredContent") or {}


async def client_loop(port: int, token: str, tenant: str, calls: int, seed: int, tally: Tally, interval: float) -> None:
    """``calls`` calls back to back, or (``interval`` > 0) one started every ``interval`` seconds, from a
    phase of its own: a constant offered load, where a slow answer does not slow the next start."""
    client = Connection("127.0.0.1", port, "/mcp")
    try:
        run_id = None
        start = time.perf_counter() + (seed * 0.618034 % 1.0) * interval
        for i in range(calls):
            if interval:
                await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
            if i % 2 == 0 or run_id is None:
                error_text = ERRORS[(seed + i) % len(ERRORS)] + f"\n(at step {i} of client {seed})"
                result = await call(client, token, rpc("diagnose", {"error_text": error_text}), tally)
                if result is not None:
                    run_id = result["run_id"]
                    tally.runs[run_id] = (tenant, max(1, len(result.get("findings", []))))
                    tally.spooled += result.get("recorded") == "spool"
            else:
                body = rpc("record_outcome", {"run_id": run_id, "resolution": RESOLUTIONS[(seed + i) % 3]})
                await call(client, token, body, tally)
                run_id = None
    finally:
        client.close()


@contextlib.contextmanager
def serve_process(home: Path, port: int, workers: int, rate_limit: str, log: Path) -> Iterator[subprocess.Popen]:
    env = {**os.environ, "DEVDIAG_HOME": str(home)}
    args = [*SERVE, "--port", str(port), "--workers", str(workers)]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [*args, "--rate-limit", rate_limit],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,  # a process group of its own: the kill fault kills the workers too
        )
    try:
        wait_healthy(port, process)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_healthy(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    import httpx2

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"devdiag serve exited with {process.returncode}")
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("devdiag serve did not become healthy within 60 s")


class Sampler:
    """Something of the machine sampled in a thread every ``every`` seconds while the run lasts."""

    every = 0.25

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.every):
                return

    def sample(self) -> None:
        raise NotImplementedError


class HostSampler(Sampler):
    """The machine's CPU time by kind (/proc/stat, every 0.25 s): what a slow second of the run had
    around it, busy, waiting on the disk (iowait) or taken by the hypervisor (steal)."""

    KINDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[tuple[float, tuple[int, ...]]] = []

    def sample(self) -> None:
        with open("/proc/stat") as stat:
            ticks = tuple(int(v) for v in stat.readline().split()[1 : 1 + len(self.KINDS)])
        self.samples.append((time.perf_counter(), ticks))

    def shares(self, start: float, end: float) -> dict[str, float]:
        """Percent of the machine's CPU time between ``start`` and ``end`` (perf_counter) by kind."""
        inside = [ticks for at, ticks in self.samples if start - 0.25 <= at <= end + 0.25]
        if len(inside) < 2:
            return {}
        delta = [b - a for a, b in zip(inside[0], inside[-1], strict=True)]
        total = sum(delta) or 1
        kinds = dict(zip(self.KINDS, delta, strict=True))
        busy = kinds["user"] + kinds["nice"] + kinds["system"] + kinds["irq"] + kinds["softirq"]
        return {
            "busy_pct": round(100 * busy / total, 1),
            "iowait_pct": round(100 * kinds["iowait"] / total, 1),
            "steal_pct": round(100 * kinds["steal"] / total, 1),
        }


class DiskProbe(Sampler):
    """The disk's own flush latency during the run: every 50 ms, 8 kB written over a block of a probe
    file beside the database and ``fdatasync``ed, timed, as PostgreSQL flushes its WAL at each commit.
    A flush that stalls here stalls every commit in flight (unless DEVDIAG_SYNCHRONOUS_COMMIT=off),
    whatever DevDiag does: 20 flushes a second, against PostgreSQL's 100-200, to see it, not cause it."""

    every = 0.05

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.path = directory / "disk-probe"
        self.flushes: list[tuple[float, float]] = []  # (start, seconds)
        self._block = os.urandom(8192)

    def __enter__(self) -> DiskProbe:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        os.close(self._fd)
        self.path.unlink(missing_ok=True)

    def sample(self) -> None:
        os.pwrite(self._fd, self._block, (len(self.flushes) % 128) * 8192)
        start = time.perf_counter()
        os.fdatasync(self._fd)
        self.flushes.append((start, time.perf_counter() - start))

    def worst_ms(self, start: float, end: float) -> float:
        """The longest flush that overlapped ``start``..``end`` (perf_counter), in ms."""
        return round(max((s for at, s in self.flushes if at <= end and at + s >= start), default=0) * 1000, 1)

    def summary(self) -> dict:
        seconds = sorted(s for _, s in self.flushes)
        return {
            "disk_flushes": len(seconds),
            "disk_flush_p50_ms": round(percentile(seconds, 0.5) * 1000, 2) if seconds else None,
            "disk_flush_max_ms": round(seconds[-1] * 1000, 1) if seconds else None,
            "disk_stalls_over_100ms": sum(s > 0.1 for s in seconds),
            "disk_stalls_ms": [round(s * 1000) for _, s in self.flushes if s > 0.1],
        }


def timeline(tally: Tally, host: HostSampler, disk: DiskProbe, threshold_s: float = 0.1) -> dict:
    """The run second by second (by each call's start): how many seconds had a p99 over the threshold,
    and the worst second, with what the machine was doing then: a miss of the p99 goal is either spread
    over the run (too little CPU) or a stall of a few seconds (the disk, the hypervisor, a pause)."""
    if not tally.started:
        return {}
    first = min(tally.started)
    seconds: dict[int, list[float]] = {}
    for started, latency in zip(tally.started, tally.latencies, strict=True):
        seconds.setdefault(int(started - first), []).append(latency)
    p99s = {second: percentile(values, 0.99) for second, values in seconds.items()}
    worst = max(p99s, key=lambda second: p99s[second])
    tenths: list[list[float]] = [[] for _ in range(10)]
    span = max(tally.started) - first or 1.0
    for started, latency in zip(tally.started, tally.latencies, strict=True):
        tenths[min(9, int((started - first) / span * 10))].append(latency)
    return {
        # a p99 that climbs from the first tenth of the run to the last: each call costs more as the data grows
        "p99_ms_by_tenth": [round(percentile(values, 0.99) * 1000, 1) for values in tenths if values],
        "seconds_over_100ms": sum(p99 > threshold_s for p99 in p99s.values()),
        "worst_second": {
            "at_s": worst,
            "calls": len(seconds[worst]),
            "p99_ms": round(p99s[worst] * 1000, 1),
            **host.shares(first + worst, first + worst + 1),
            # its calls may have waited on a stall that began in the second before
            "disk_flush_max_ms": disk.worst_ms(first + worst - 1, first + worst + 1),
        },
        "host": host.shares(first, first + max(seconds) + 1),
    }


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and its descendants, live or reaped (Linux /proc):
    a cost per call that does not depend on what else the machine runs, unlike latency."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, cpu seconds)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / ticks)
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo.extend(children.get(pid, []))
    return total


def check_rows(owner, tally: Tally) -> dict[str, int]:
    import psycopg

    with psycopg.connect(owner.conninfo(), autocommit=True) as conn:
        stored = {
            str(run_id): (count, tenants)
            for run_id, count, tenants in conn.execute(
                "select run_id, count(*), array_agg(distinct tenant_id) from devdiag.diag_run "
                "where run_id = any(%s) group by run_id",
                ([uuid.UUID(r) for r in tally.runs],),
            )
        }
    lost = duplicated = cross = 0
    for run_id, (tenant, expected) in tally.runs.items():
        count, tenants = stored.get(run_id, (0, [tenant]))
        lost += max(0, expected - count)
        duplicated += max(0, count - expected)
        cross += sum(1 for t in tenants if t != tenant)
    return {"runs": len(tally.runs), "rows_lost": lost, "rows_duplicated": duplicated, "cross_tenant_rows": cross}


def fresh_home(prefix: str) -> Path:
    """A temporary DEVDIAG_HOME, for the embedded database (an external one's settings are dropped)."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["DEVDIAG_HOME"] = str(home)
    for var in ("DEVDIAG_PG_DSN", "DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB"):
        os.environ.pop(var, None)
    return home


def built_database():
    """`devdiag setup`, then the dbt models, as the cron's build keeps them in production (the server
    reads other tenants' outcomes from v_fix_ranking; without it, it counts raw rows it may not see:
    RLS). The owner's connection settings."""
    from devdiag_db import config
    from orchestrator import dbt
    from orchestrator.provision import setup

    owner = config.settings()
    setup(owner)
    print("dbt run ...", file=sys.stderr)
    dbt.invoke(owner, ["run"])
    return owner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--calls", type=int, default=200, help="calls per client (half diagnose, half outcomes)")
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--rate", type=float, default=0, help="offered calls/s over all clients (default 0: back to back, saturation)"
    )
    parser.add_argument("--rate-limit", default="100000", help="serve's --rate-limit (default: high, not in the way)")
    parser.add_argument(
        "--synchronous-commit",
        choices=["on", "off"],
        default="off",
        help="serve's DEVDIAG_SYNCHRONOUS_COMMIT (on: every tool call's commit waits for the disk; default off)",
    )
    parser.add_argument(
        "--fault",
        choices=["none", "db-restart", "db-crash", "kill-serve"],
        default="none",
        help="db-restart: PostgreSQL stopped (fast) for 3 s mid-load; db-crash: the same, stopped with -m immediate "
        "(its unflushed WAL lost); kill-serve: serve and its workers killed with SIGKILL, restarted",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DEVDIAG_HOME")
    parser.add_argument(
        "--disk-only",
        type=float,
        metavar="SECONDS",
        help="no server, no load: only the disk probe for SECONDS in the temporary directory (the disk alone)",
    )
    args = parser.parse_args()
    if args.disk_only:
        with tempfile.TemporaryDirectory(prefix="devdiag-bench-disk-") as directory, DiskProbe(Path(directory)) as disk:
            time.sleep(args.disk_only)
        report = {"seconds": args.disk_only, **disk.summary()}
        print(json.dumps(report) if args.json else "\n".join(f"{k:22} {v}" for k, v in report.items()))
        return

    os.environ["DEVDIAG_SYNCHRONOUS_COMMIT"] = args.synchronous_commit  # for serve, and serve restarted
    home = fresh_home("devdiag-bench-serve-")
    from devdiag_db import db, embedded, tokens

    try:
        owner = built_database()
        clients = []
        with db.connect(owner) as conn:
            for i in range(args.clients):
                tenant = f"bench-{i % args.tenants}"
                token, _ = tokens.create(conn, tenant, f"client-{i}", None)
                clients.append((token, tenant))
        port = free_port()
        log = home / "serve.log"
        tally = Tally()
        load, host_before = os.getloadavg()[0], host_speed_ms()
        with serve_process(home, port, args.workers, args.rate_limit, log) as process:
            # Warm-up: one call per client (connections, pools, the classifier), not counted.
            warm = Tally()

            async def warm_up() -> None:
                await asyncio.gather(
                    *(client_loop(port, t, tenant, 1, i, warm, 0) for i, (t, tenant) in enumerate(clients))
                )

            run_loop(warm_up())

            async def fault() -> None:
                nonlocal process
                await asyncio.sleep(2)
                if args.fault in ("db-restart", "db-crash"):
                    await asyncio.to_thread(embedded.stop, mode="fast" if args.fault == "db-restart" else "immediate")
                    await asyncio.sleep(3)
                    await asyncio.to_thread(embedded.start)
                elif args.fault == "kill-serve":
                    os.killpg(process.pid, signal.SIGKILL)  # the supervisor and its workers, as a crash would
                    process.wait()
                    with open(log, "ab") as out:
                        env = {**os.environ, "DEVDIAG_HOME": str(home)}
                        cmd = [*SERVE, "--port", str(port)]
                        process = subprocess.Popen(
                            [*cmd, "--workers", str(args.workers), "--rate-limit", args.rate_limit],
                            env=env,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            cwd=ROOT,
                            start_new_session=True,
                        )
                    await asyncio.to_thread(wait_healthy, port, process)

            postmaster = embedded.status().pid or 0
            cpu_before = (tree_cpu_s(process.pid), tree_cpu_s(postmaster), time.process_time())

            async def run() -> float:
                started = time.perf_counter()
                interval = args.clients / args.rate if args.rate else 0.0
                jobs = [
                    client_loop(port, t, tenant, args.calls, i, tally, interval)
                    for i, (t, tenant) in enumerate(clients)
                ]
                if args.fault != "none":
                    jobs.append(fault())
                await asyncio.gather(*jobs)
                return time.perf_counter() - started

            with HostSampler() as host, DiskProbe(home) as disk:
                elapsed = run_loop(run())
            cpu_after = (tree_cpu_s(process.pid), tree_cpu_s(postmaster), time.process_time())
            # Let the spool drain (a background replay every 2 s) before counting.
            deadline = time.monotonic() + 60
            spool = home / "spool"
            while time.monotonic() < deadline and any(spool.glob("*.jsonl")) and not _only_rejected(spool):
                time.sleep(0.5)
            if process.poll() is None:  # a restarted server (kill-serve), which the context did not start
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        rows = check_rows(owner, tally)
        calls = tally.calls
        report = {
            "clients": args.clients,
            "tenants": args.tenants,
            "calls_per_client": args.calls,
            "workers": args.workers,
            "synchronous_commit": args.synchronous_commit,
            "fault": args.fault,
            "calls": calls,
            "seconds": round(elapsed, 2),
            "calls_per_s": round(calls / elapsed, 1),
            "p50_ms": round(percentile(tally.latencies, 0.50) * 1000, 1),
            "p95_ms": round(percentile(tally.latencies, 0.95) * 1000, 1),
            "p99_ms": round(percentile(tally.latencies, 0.99) * 1000, 1),
            "max_ms": round(max(tally.latencies, default=0) * 1000, 1),
            # CPU per call: what the figures above cost the machine, whatever else it runs (a
            # restarted serve's CPU before the kill is not counted).
            "serve_cpu_ms_per_call": round((cpu_after[0] - cpu_before[0]) / max(calls, 1) * 1000, 2),
            "postgres_cpu_ms_per_call": round((cpu_after[1] - cpu_before[1]) / max(calls, 1) * 1000, 2),
            "client_cpu_ms_per_call": round((cpu_after[2] - cpu_before[2]) / max(calls, 1) * 1000, 2),
            **timeline(tally, host, disk),
            **disk.summary(),
            "errors": sum(tally.errors.values()),
            "error_kinds": tally.errors,
            "answered_from_spool": tally.spooled,
            # Writes answered from the database whose flush PostgreSQL had not confirmed when it went away.
            "flush_watch_spooled": _watch_spooled(log),
            **rows,
            "cpus": os.cpu_count(),
            "loadavg_before": round(load, 2),
            "host_loop_ms_before": host_before,
            "host_loop_ms_after": host_speed_ms(),
            "loadavg_after": round(os.getloadavg()[0], 2),
        }
    finally:
        embedded.stop()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key:22} {value}")


def _watch_spooled(log: Path) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(int(n) for n in re.findall(r"(\d+) writes PostgreSQL had not confirmed on disk spooled", text))


def _only_rejected(spool: Path) -> bool:
    return all(p.name == "rejected.jsonl" for p in spool.glob("*.jsonl"))


if __name__ == "__main__":
    main()
