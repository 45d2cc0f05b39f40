"""End to end: `python -m mcp_devdiag` over stdio with the SDK's stdio client, on the embedded database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

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
