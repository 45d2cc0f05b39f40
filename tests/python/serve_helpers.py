"""`devdiag serve` as a real subprocess on 127.0.0.1, and a raw JSON-RPC caller, for test_serve*.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import psycopg

from devdiag_db import tokens

ROOT = Path(__file__).resolve().parents[2]
SERVE = [sys.executable, "-c", "from orchestrator.cli import main; main()", "serve"]
HEADERS = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"}
PORT_ERROR = "Error: listen EADDRINUSE: address already in use :::3000"
DOCKER_ERROR = (
    "Got permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Served:
    port: int
    log: Path
    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen | None = None
    logs: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self, timeout: float = 60) -> Served:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"devdiag serve exited {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx2.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code in (200, 503):
                    return self
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"devdiag serve did not answer within {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def serve(tmp: Path, *extra: str, env: dict[str, str] | None = None) -> Served:
    """A `devdiag serve` (not started) on a free port, with its own spool and log under ``tmp``."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    environ = {
        **os.environ,
        "DEVDIAG_SPOOL_DIR": str(tmp / "spool"),
        "DEVDIAG_ENVIRONMENT": "linux/python-3.12/node-20",
        "DEVDIAG_LOG_LEVEL": "INFO",
        **(env or {}),
    }
    workers = (
        [] if "--workers" in extra else ["--workers", "1"]
    )  # one process: quicker to start, SIGKILL leaves no orphan
    return Served(port, tmp / "serve.log", [*SERVE, "--port", str(port), *workers, *extra], environ)


def new_token(owner, tenant: str, *, expires_in: timedelta | None = None) -> str:
    with psycopg.connect(owner.conninfo(), autocommit=True) as conn:
        token, _ = tokens.create(conn, tenant, f"t-{uuid.uuid4().hex[:8]}", expires_in)
    return token


def rpc(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


def call(
    client: httpx2.Client, url: str, token: str | None, name: str, arguments: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, the tool's structured result or {"error": text}) of one raw tools/call."""
    headers = {**HEADERS, **({"authorization": f"Bearer {token}"} if token else {})}
    response = client.post(url, json=rpc(name, arguments), headers=headers)
    if response.status_code != 200:
        return response.status_code, {"error": response.text}
    result = response.json().get("result") or {}
    if result.get("isError"):
        return 200, {"error": result["content"][0]["text"]}
    return 200, result.get("structuredContent") or {}


def rows_by_run(owner, run_ids: list[str]) -> dict[str, list[tuple[str, str | None]]]:
    """run_id -> [(tenant_id, resolution)] as the owner sees them."""
    found: dict[str, list[tuple[str, str | None]]] = {}
    with psycopg.connect(owner.conninfo(), autocommit=True) as conn:
        for run_id, tenant, resolution in conn.execute(
            "select run_id, tenant_id, resolution from devdiag.diag_run where run_id = any(%s)",
            ([uuid.UUID(r) for r in run_ids],),
        ):
            found.setdefault(str(run_id), []).append((tenant, resolution))
    return found
