"""End to end: `python -m mcp_devdiag` over stdio with the SDK's stdio client, on the embedded database."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO

import psycopg
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

GIT_ERROR = "$ git status\nfatal: not a git repository (or any of the parent directories): .git"


def server_env(devdiag_home: Path, **extra: str) -> dict[str, str]:
    return {
        "DEVDIAG_HOME": str(devdiag_home),
        "DEVDIAG_ENVIRONMENT": "linux/python-3.12",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        **extra,
    }


def test_diagnose_record_outcome_suggest_over_stdio(pg, devdiag_home, tmp_path):
    tenant = f"stdio-{uuid.uuid4().hex[:8]}"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_devdiag"],
        env=server_env(devdiag_home, DEVDIAG_TENANT=tenant, DEVDIAG_SPOOL_DIR=str(tmp_path / "spool")),
    )
    stderr_path = tmp_path / "server.stderr"

    async def suggest(client: Client) -> dict:
        return (await client.call_tool("suggest_fixes", {"problem_code": "GIT_NOT_A_REPO"})).structured_content

    async def session() -> tuple[list[str], dict, list[dict], dict, dict]:
        with open(stderr_path, "w") as errlog:
            async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=60) as client:
                tools = sorted(t.name for t in (await client.list_tools()).tools)
                before = await suggest(client)
                outcomes = []
                for _ in range(6):
                    run = (await client.call_tool("diagnose", {"error_text": GIT_ERROR})).structured_content
                    assert run["recorded"] == "database", run["notes"]
                    finding = run["findings"][0]
                    worked = finding["suggested_fix"] != before["fixes"][0]["id"]
                    result = await client.call_tool(
                        "record_outcome", {"run_id": run["run_id"], "resolution": "fixed" if worked else "failed"}
                    )
                    assert not result.is_error, result.content
                    outcomes.append(result.structured_content)
                    now = await suggest(client)
                    if now["fixes"][0]["id"] != before["fixes"][0]["id"]:
                        break
                return tools, before, outcomes, now, run

    tools, before, outcomes, after, last_run = asyncio.run(session())
    assert tools == ["diagnose", "list_problems", "recent_problems", "record_outcome", "suggest_fixes"]
    assert before["source"] in {"catalog", "all_tenants"}
    # The ranking moved: the fix that failed here is no longer first, and the tenant's outcomes count.
    assert after["fixes"][0]["id"] != before["fixes"][0]["id"]
    assert after["source"] == "tenant"
    moved = {f["id"]: f["confidence"] for f in after["fixes"]}
    old = {f["id"]: f["confidence"] for f in before["fixes"]}
    assert moved != old
    assert all(o["recorded"] == "database" and o["updated"] == 1 for o in outcomes)
    with psycopg.connect(pg.conninfo()) as conn:
        stored = conn.execute(
            "select count(*), count(resolution) from devdiag.diag_run where tenant_id = %s", (tenant,)
        ).fetchone()
    assert stored == (len(outcomes), len(outcomes))
    assert last_run["environment"] == "linux/python-3.12"
    # stdout carried only JSON-RPC (the session worked); whatever the server logged went to stderr.
    assert "Traceback" not in stderr_path.read_text()


def test_bad_configuration_is_refused_in_one_line_before_the_transport_opens(devdiag_home):
    env = {**os.environ, **server_env(devdiag_home, DEVDIAG_TENANT="no spaces allowed", DEVDIAG_PG_HOST="")}
    done = subprocess.run(
        [sys.executable, "-m", "mcp_devdiag"], env=env, input="", capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "DEVDIAG_TENANT" in lines[0] and lines[0].startswith("mcp-devdiag: ")


def test_check_reports_configuration_and_database(pg, devdiag_home):
    env = {**os.environ, **server_env(devdiag_home, DEVDIAG_ALLOW_PROBES="*.example.com")}
    done = subprocess.run(
        [sys.executable, "-m", "mcp_devdiag", "--check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "database     ok" in done.stderr and "*.example.com" in done.stderr


class RawStdio:
    """The server as a client's pipes see it: raw lines in, one JSON answer a line out."""

    def __init__(self, env: dict[str, str], stderr: IO[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_devdiag"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env
        )
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        self.buffer = b""

    def send(self, line: bytes) -> None:
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float = 30) -> dict | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                return None
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout=30)


def test_malformed_requests_over_stdio_are_answered_and_the_server_keeps_serving(pg, devdiag_home, tmp_path):
    tenant = f"raw-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **server_env(devdiag_home, DEVDIAG_TENANT=tenant, DEVDIAG_SPOOL_DIR=str(tmp_path / "spool"))}

    def diagnose(request_id: int, error_text_json: bytes) -> bytes:
        head = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call"})[:-1].encode()
        return head + b', "params": {"name": "diagnose", "arguments": {"error_text": ' + error_text_json + b"}}}"

    git = json.dumps(GIT_ERROR)[1:-1].encode()
    cases = [  # (line, (result or error code, id) expected)
        (diagnose(1, b'"' + git + b'\\ud800"'), ("result", 1)),
        (diagnose(2, b"[" * 1_000 + b"]" * 1_000), (-32700, 2)),
        (diagnose(3, b"9" * 5_000), (-32700, 3)),
        (diagnose(4, b'"' + git + b'\xff\xfe"'), ("result", 4)),  # invalid UTF-8: U+FFFD, as the SDK does
        (b"{not json", (-32700, None)),
        (b'{"jsonrpc": "2.0", "id": true, "method": "ping"}', (-32600, None)),
        (diagnose(5, b'"' + b"x" * (9 * 1024 * 1024) + b'"'), (-32600, 5)),
    ]
    with open(tmp_path / "server.stderr", "w") as stderr:
        server = RawStdio(env, stderr)
        try:
            init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
            server.send(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}).encode())
            assert server.answer(60)["id"] == 0
            server.send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
            answers = {}
            for line, (kind, request_id) in cases:
                server.send(line)
                answer = server.answer()
                assert answer is not None, f"no answer to {line[:80]!r}"
                got = "result" if "result" in answer else answer["error"]["code"]
                assert (got, answer["id"]) == (kind, request_id), answer
                answers[request_id] = answer
            server.send(diagnose(6, json.dumps(GIT_ERROR).encode()))
            after = server.answer()
        finally:
            code = server.close()
    assert code == 0
    assert after["id"] == 6 and after["result"]["structuredContent"]["recorded"] == "database"
    first = answers[1]["result"]["structuredContent"]
    assert first["recorded"] == "database" and first["findings"][0]["code"] == "GIT_NOT_A_REPO"
    with psycopg.connect(pg.conninfo()) as conn:
        stored = conn.execute(
            "select error_msg from devdiag.diag_run where run_id = %s::uuid", (first["run_id"],)
        ).fetchone()
    assert stored[0].endswith("\ufffd"), "the lone surrogate was stored as U+FFFD"
    log = (tmp_path / "server.stderr").read_text()
    assert "Traceback" not in log and "answered with -32700" in log
