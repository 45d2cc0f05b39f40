"""`python -m mcp_devdiag` is found by the runbook's `ps aux | grep mcp-devdiag`, and its stdio still works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "ps-test", "version": "0"}},
}


def test_python_m_server_shows_as_mcp_devdiag_and_keeps_its_pid_and_stdio(pg, devdiag_home):
    env = {
        "PATH": "/usr/bin:/bin",
        "DEVDIAG_HOME": str(devdiag_home),
        "DEVDIAG_TENANT": "ps-test",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "mcp_devdiag"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        # An answer on the pipes the editor opened proves that stdin and stdout went through the exec.
        server.stdin.write(json.dumps(INITIALIZE) + "\n")
        server.stdin.flush()
        answer = json.loads(server.stdout.readline())
        assert answer["id"] == 1 and answer["result"]["serverInfo"]["name"], answer
        args = subprocess.run(
            ["ps", "-o", "args=", "-p", str(server.pid)], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert "mcp-devdiag" in args, args  # what `ps aux | grep mcp-devdiag` looks for, at the editor's pid
        assert "-u -m mcp_devdiag" in args, args  # the interpreter's own flags and arguments kept
    finally:
        server.stdin.close()  # end of input: the server exits by itself
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
        stderr = server.stderr.read()
        server.stdout.close()
        server.stderr.close()
    assert code == 0, stderr
