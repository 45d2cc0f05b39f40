"""`devdiag serve` through faults: PostgreSQL stopped mid-load, serve killed with SIGKILL and restarted.

Every run a client was given must end up in the database exactly once (counted by run_id against the
findings the client saw). CI runs a few hundred calls; `benchmarks/serve.py --fault ...` runs 5,000.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx2
import pytest
from conftest import slow_wal_writer
from serve_helpers import PORT_ERROR, Served, call, new_token, rows_by_run, serve

from devdiag_db import embedded

# Not PY_EXTERNALLY_MANAGED: test_server.py keeps that code's outcomes to itself in the shared database.
ERRORS = [PORT_ERROR, "ModuleNotFoundError: No module named 'requests'", "fatal: not a git repository (or any parent)"]
CLIENTS = 10
CALLS = 30  # per client: 300 calls in all


class Load:
    """CLIENTS threads, each diagnosing and recording an outcome in turn; what each was answered."""

    def __init__(self, server: Served, tokens: list[str]) -> None:
        self.server, self.tokens = server, tokens
        self.expected: dict[str, int] = {}  # run_id -> rows (findings) the client was shown
        self.statuses: list[int] = []
        self.spooled = 0
        self.failures = 0  # connection errors (a killed server)
        self.errors: list[str] = []  # tool errors
        self._lock = threading.Lock()

    def client(self, token: str, seed: int) -> None:
        with httpx2.Client(timeout=30) as http:
            run_id = None
            for i in range(CALLS):
                try:
                    if run_id is None:
                        text = f"{ERRORS[(seed + i) % len(ERRORS)]}\n(step {i})"
                        status, body = call(http, self.server.url, token, "diagnose", {"error_text": text})
                        if status == 200 and "run_id" in body:
                            run_id = body["run_id"]
                            with self._lock:
                                self.expected[run_id] = max(1, len(body["findings"]))
                                self.spooled += body["recorded"] == "spool"
                    else:
                        arguments = {"run_id": run_id, "resolution": "fixed"}
                        status, body = call(http, self.server.url, token, "record_outcome", arguments)
                        run_id = None
                except httpx2.TransportError:
                    with self._lock:
                        self.failures += 1
                    time.sleep(0.2)
                    continue
                with self._lock:
                    self.statuses.append(status)
                    if "error" in body:
                        self.errors.append(body["error"][:300])
                time.sleep(0.01)

    def run(self, during=None) -> None:
        threads = [threading.Thread(target=self.client, args=(t, i)) for i, t in enumerate(self.tokens)]
        for thread in threads:
            thread.start()
        if during is not None:
            during()
        for thread in threads:
            thread.join(timeout=180)


def drained(spool: Path, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [p for p in spool.glob("*.jsonl") if p.name != "rejected.jsonl"]:
            return True
        time.sleep(0.25)
    return False


def check(pg, load: Load) -> None:
    stored = rows_by_run(pg, list(load.expected))
    lost = {r: n for r, n in load.expected.items() if len(stored.get(r, [])) < n}
    duplicated = {r: n for r, n in load.expected.items() if len(stored.get(r, [])) > n}
    assert not lost and not duplicated, (lost, duplicated)


@pytest.fixture
def tokens(pg) -> list[str]:
    tenant = f"faults-{uuid.uuid4().hex[:8]}"
    return [new_token(pg, f"{tenant}-{i % 3}") for i in range(CLIENTS)]


def _warm(server: Served, tokens: list[str]) -> None:
    """One call per token while the database is up: what the verifier's cache serves from while it is away."""
    with httpx2.Client(timeout=30) as http:
        for token in tokens:
            assert call(http, server.url, token, "list_problems", {"category": "git"})[0] == 200


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_stopped_mid_load_loses_and_duplicates_nothing(pg, tmp_path, tokens, mode):
    """``fast``: an orderly stop (PostgreSQL flushes first). ``immediate``: a crash, with the WAL writer
    slowed so that it surely takes calls PostgreSQL had committed but not flushed: the flush watch
    spools those, and they are stored all the same."""
    server = serve(tmp_path, "--rate-limit", "0").start()
    try:
        _warm(server, tokens)
        load = Load(server, tokens)
        health: list[int] = []

        def outage() -> None:
            time.sleep(0.5)
            embedded.stop(mode=mode)
            time.sleep(1.0)
            health.append(httpx2.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10).status_code)
            time.sleep(1.5)
            embedded.start()

        with slow_wal_writer(pg) if mode == "immediate" else contextlib.nullcontext():
            load.run(during=outage)
        assert drained(tmp_path / "spool"), "the spool was not replayed within 60 s"
    finally:
        if not embedded.status().running:
            embedded.start()
        server.stop()
    if mode == "immediate":
        assert "had not confirmed on disk spooled for replay" in server.log.read_text(), "the crash took no write"
    assert health == [503]
    assert load.failures == 0 and set(load.statuses) == {200}
    assert load.spooled > 0, "no call fell in the outage: the test proved nothing"
    assert len(load.expected) >= CLIENTS * CALLS // 2 - CLIENTS
    check(pg, load)


def test_serve_killed_mid_load_replays_its_spool_on_restart(pg, tmp_path, tokens):
    server = serve(tmp_path, "--rate-limit", "0").start()
    restarted = None
    try:
        _warm(server, tokens)
        embedded.stop()  # every run now goes to the spool ...
        load = Load(server, tokens)

        def kill() -> None:
            deadline = time.monotonic() + 20
            while load.spooled < 20 and time.monotonic() < deadline:  # mid-load: runs are in the spool
                time.sleep(0.05)
            server.stop(signal.SIGKILL)  # ... and the server dies with runs in it
            embedded.start()
            nonlocal restarted
            restarted = server.start()  # same port, same spool

        load.run(during=kill)
        assert drained(tmp_path / "spool"), "the spool was not replayed within 60 s"
    finally:
        if not embedded.status().running:
            embedded.start()
        server.stop()
    assert load.spooled >= 20 and restarted is not None, (load.errors[:5], load.failures)
    assert len(load.expected) > load.spooled  # runs after the restart too
    check(pg, load)
