"""Hostile sizes and shapes: every argument counted in the limit, only kept text redacted, a time budget."""

from __future__ import annotations

import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from mcp.server.mcpserver.exceptions import ToolError

from devdiag_db.db import DatabaseUnavailable
from mcp_devdiag import classifier
from mcp_devdiag.probes import AllowList
from mcp_devdiag.recorder import Recorder
from mcp_devdiag.redaction import redact
from mcp_devdiag.service import HARD_INPUT_LIMIT, DevDiag, echo, head_tail, redacted_head_tail
from mcp_devdiag.settings import DatabaseTarget, ServerSettings
from mcp_devdiag.spool import Spool

PORT_ERROR = "Error: listen EADDRINUSE: address already in use :::3000"
SECRET = "ghp_" + "Q" * 36


@pytest.fixture
def service(pg, tmp_path) -> Iterator:
    apps: list[DevDiag] = []

    def make(**overrides) -> DevDiag:
        from mcp_devdiag.catalog import load_catalog

        settings = ServerSettings(
            tenant=f"limits-{uuid.uuid4().hex[:8]}",
            environment="linux/python-3.12",
            database=DatabaseTarget(pg),
            spool_dir=tmp_path / f"spool-{len(apps)}",
            **overrides,
        )
        recorder = Recorder(settings.database, Spool(settings.spool_dir, settings.spool_max_bytes))
        app = DevDiag(settings, recorder, load_catalog(), rng=random.Random(1))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.recorder.close()


def _count(pg, tenant: str) -> int:
    with psycopg.connect(pg.conninfo()) as conn:
        return conn.execute("select count(*) from devdiag.diag_run where tenant_id = %s", (tenant,)).fetchone()[0]


@pytest.mark.parametrize("argument", ["url", "origin", "logs", "context"])
def test_every_argument_counts_in_the_input_limit(service, pg, argument):
    app = service()
    with pytest.raises(ToolError, match="more than"):
        app.diagnose(error_text=PORT_ERROR, **{argument: "x" * HARD_INPUT_LIMIT})
    assert _count(pg, app.settings.tenant) == 0


def test_the_limit_is_the_sum_of_the_arguments(service):
    third = HARD_INPUT_LIMIT // 3 + 10
    with pytest.raises(ToolError, match="more than"):
        service().diagnose(error_text="a" * third, logs="b" * third, context="c" * third)


@pytest.mark.parametrize("seed", range(40))
def test_redacting_only_the_kept_text_masks_what_redacting_all_of_it_masks(seed):
    """Secrets anywhere, around both cuts too: what redacting the whole text masks, the kept text
    never shows, and it is all of the redacted text when that fits."""
    rng = random.Random(seed)
    secrets = [SECRET, "postgres://app:Sup3rS3cret@db/app", "password=hunter2hunter2", "AKIA" + "Z" * 16]
    limit = rng.choice([4_000, 20_000])
    size = rng.choice([limit - 10, limit + 1, 3 * limit, 15 * limit])
    pieces: list[str] = []
    while sum(map(len, pieces)) < size:
        if rng.random() < 0.05:
            pieces.append(f" {rng.choice(secrets)} ")
        else:
            pieces.append(rng.choice(["word ", "\n", "x" * 50, "a-"]))
    text = "".join(pieces)[:size]
    kept, cut = redacted_head_tail(text, limit)
    assert len(kept) <= limit and (not cut or len(text) > limit)
    whole = redact(text)
    if len(whole) <= limit:  # nothing needed cutting once masked
        assert kept == whole
    for fragment in ("Sup3rS3cret", "hunter2hunter2", "Q" * 20, "Z" * 16):
        if fragment not in whole:  # (the text's last secret may be cut short into something else)
            assert fragment not in kept


def test_a_private_key_block_cut_in_its_middle_stays_masked():
    body = "\n".join("MIIEowIBAAKCAQEA" + "k" * 48 for _ in range(3_000))
    text = "x" * 50 + "\n-----BEGIN RSA PRIVATE KEY-----\n" + body + "\n" + PORT_ERROR
    kept, cut = redacted_head_tail(text, classifier.MAX_INPUT_CHARS)
    assert cut and "MIIEow" not in kept and PORT_ERROR in kept


def test_kept_text_is_what_head_tail_keeps_when_there_is_nothing_to_mask():
    text = "\n".join(f"INFO line {i}" for i in range(50_000))
    assert redacted_head_tail(text, 10_000) == head_tail(text, 10_000)


def test_arguments_quoted_in_errors_are_redacted_and_bounded():
    assert SECRET not in echo(SECRET, 40) and "ghp_" in echo(SECRET, 40)
    assert echo("x" * 10_000, 40) == "(10,000 characters)"
    assert echo("port_in_use", 60) == "'port_in_use'"


@pytest.mark.parametrize("tool", ["suggest_fixes", "list_problems", "record_outcome"])
def test_a_secret_passed_where_an_id_belongs_is_not_echoed(service, tool):
    app = service()
    call = {
        "suggest_fixes": lambda: app.suggest_fixes(SECRET),
        "list_problems": lambda: app.list_problems(SECRET),
        "record_outcome": lambda: app.record_outcome("fixed", run_id=SECRET),
    }[tool]
    with pytest.raises(ToolError) as raised:
        call()
    assert SECRET not in str(raised.value) and "ghp_" in str(raised.value)


HOSTILE_SHAPES = {
    "url credentials": "a-" * 490_000 + "://",
    "mysql -p": "mysql -p" * 120_000,
    "pem without end": "-----BEGIN RSA PRIVATE KEY-----\n" + "QUJD" * 240_000,
    "key=value": "password=" * 105_000,
    "bearer": "Bearer " * 140_000,
}


@pytest.mark.parametrize("shape", sorted(HOSTILE_SHAPES))
def test_a_hostile_megabyte_is_diagnosed_in_linear_time(service, shape):
    """A megabyte of the shapes that made redaction quadratic (30 s for the first one) is diagnosed
    in well under the 10 s bound here (benchmarks/hardening.py prints the real figures)."""
    app = service()
    text = HOSTILE_SHAPES[shape] + "\n" + PORT_ERROR
    started = time.perf_counter()
    result = app.diagnose(error_text=text)
    assert time.perf_counter() - started < 10
    assert [f.code for f in result.findings] == ["PORT_IN_USE"] and result.truncated


def test_redaction_of_the_evidence_and_stored_text_matches_redact(service, pg):
    app = service()
    text = f"{PORT_ERROR}\nDATABASE_URL=postgres://app:Sup3rS3cret@db/app\n"
    result = app.diagnose(error_text=text)
    with psycopg.connect(pg.conninfo()) as conn:
        (stored,) = conn.execute(
            "select error_msg from devdiag.diag_run where run_id = %s", (result.run_id,)
        ).fetchone()
    assert stored == redact(text).strip() or stored == redact(text)
    assert "Sup3rS3cret" not in stored


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback server that accepts and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_the_call_budget_bounds_a_probe_that_would_take_longer(service, silent_server):
    app = service(allow_probes=AllowList.parse("127.0.0.1"), probe_timeout_s=60, call_budget_s=2)
    started = time.perf_counter()
    result = app.diagnose(error_text=PORT_ERROR, url=f"http://127.0.0.1:{silent_server}/")
    took = time.perf_counter() - started
    assert took < 5, f"the 2 s budget did not bound a 60 s probe timeout: {took:.1f}s"
    assert result.recorded == "database"  # the budget kept time back for the write
    assert any(f.code == "REQUEST_TIMEOUT" for f in result.findings) or result.probe is not None


def test_database_statements_stop_at_the_deadline(pg, tmp_path):
    recorder = Recorder(DatabaseTarget(pg), Spool(Path(tmp_path) / "spool", 1 << 20))
    try:
        with pytest.raises(DatabaseUnavailable), recorder.session("t", time.monotonic() + 0.3) as session:
            session.conn.execute("select pg_sleep(5)")  # cut off: the call spools instead of waiting
        recorder._retry_at = 0  # (the breaker opened; the next call may try again at once)
        with recorder.session("t") as session:  # the next call has the usual timeout back
            assert session.conn.execute("show statement_timeout").fetchone()[0] == "10s"
    finally:
        recorder.close()
