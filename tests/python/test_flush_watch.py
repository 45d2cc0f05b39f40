"""Commits that do not wait for the disk, and the flush watch that makes them lose nothing answered.

With ``synchronous_commit = off`` (the default) PostgreSQL answers a commit before its WAL is on disk.
These tests crash the session's real PostgreSQL (``pg_ctl stop -m immediate``) before its WAL writer
has flushed a tool call's run, check that the database really lost it, and that the server's flush
watch had it spooled and replayed it: the run is there, once.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from conftest import login, slow_wal_writer, tenant_service

from devdiag_db import embedded
from mcp_devdiag.flush_watch import FlushWatch
from mcp_devdiag.spool import Spool

ERROR = "Error: listen EADDRINUSE: address already in use :::3000"


def rows_of(pg, run_id: str) -> int:
    with psycopg.connect(pg.conninfo()) as conn:
        return conn.execute("select count(*) from devdiag.diag_run where run_id = %s", (run_id,)).fetchone()[0]


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def diagnosed_into_the_database(app):
    """A run diagnosed once the database takes writes (the first call after a restart finds the
    pool's connections dead and spools; the breaker then waits a second), replaying the spool first."""
    for attempt in range(60):
        result = app.diagnose(error_text=f"{ERROR}\n(after the restart, {attempt})")
        if result.recorded == "database":
            return result
        time.sleep(0.5)
    raise AssertionError("the database took no write within 30 s of its restart")


def test_the_default_holds_a_calls_writes_until_postgresql_has_flushed_them(pg, tmp_path: Path):
    """As the server's own role (which may read the WAL positions): released, not spooled."""
    app = tenant_service(login(pg, "devdiag_writer"), tmp_path, "flush-default")
    try:
        assert app.recorder.synchronous_commit is False
        result = app.diagnose(error_text=ERROR)
        assert result.recorded == "database"
        # Released once PostgreSQL's flush position passes them (its WAL writer: every 200 ms), not spooled.
        assert wait_until(lambda: app.recorder.held == 0, timeout=5)
        assert not app.recorder.spool.pending()
        assert rows_of(pg, result.run_id) == 1
    finally:
        app.recorder.close()


def test_a_run_postgresql_loses_in_a_crash_is_spooled_and_replayed_once(pg, tmp_path: Path):
    app = tenant_service(pg, tmp_path, "flush-crash")
    try:
        app.diagnose(error_text=ERROR)  # warm: the pool, the watch's connection
        assert wait_until(lambda: app.recorder.held == 0, timeout=5)
        with slow_wal_writer(pg):
            lost = app.diagnose(error_text=f"{ERROR}\n(the one the crash takes)")
            assert lost.recorded == "database"
            time.sleep(0.5)  # several of the watch's checks: PostgreSQL has not flushed it
            assert app.recorder.held == 1
            embedded.stop(mode="immediate")
            try:
                # The watch's next check fails: what it held goes to the spool.
                assert wait_until(lambda: app.recorder.held == 0)
                assert app.recorder.spool.pending()
            finally:
                embedded.start()
        assert rows_of(pg, lost.run_id) == 0, "the crash did not lose the run: this test shows nothing"
        after = diagnosed_into_the_database(app)
        assert rows_of(pg, lost.run_id) == 1
        assert rows_of(pg, after.run_id) == 1
        assert not app.recorder.spool.pending()
    finally:
        app.recorder.close()


def test_an_outcome_postgresql_loses_in_a_crash_is_applied_again(pg, tmp_path: Path):
    app = tenant_service(pg, tmp_path, "flush-outcome")
    try:
        run = app.diagnose(error_text=ERROR)
        assert wait_until(lambda: app.recorder.held == 0, timeout=5)
        with slow_wal_writer(pg):
            assert app.record_outcome(run_id=run.run_id, resolution="fixed").updated == 1
            time.sleep(0.3)
            assert app.recorder.held == 1
            embedded.stop(mode="immediate")
            try:
                assert wait_until(lambda: app.recorder.held == 0)
            finally:
                embedded.start()
        with psycopg.connect(pg.conninfo()) as conn:
            query = "select resolution from devdiag.diag_run where run_id = %s"
            assert conn.execute(query, (run.run_id,)).fetchone() == (None,), "the crash did not lose the outcome"
        diagnosed_into_the_database(app)  # replays the spool first
        with psycopg.connect(pg.conninfo()) as conn:
            assert conn.execute(query, (run.run_id,)).fetchone() == ("fixed",)
    finally:
        app.recorder.close()


def test_closing_spools_what_postgresql_has_not_flushed_within_the_wait(pg, tmp_path: Path):
    """A server that stops (SIGTERM, the end of stdio) waits a moment for the flush, then spools the rest:
    the writes it answered for outlive it, whatever PostgreSQL does next."""
    app = tenant_service(pg, tmp_path, "flush-close")
    with slow_wal_writer(pg):
        result = app.diagnose(error_text=ERROR)
        assert app.recorder.held == 1
        started = time.monotonic()
        app.recorder.close()
        waited = time.monotonic() - started
    assert app.recorder.held == 0
    assert app.recorder.spool.pending()
    assert 2.5 < waited < 10, waited  # the wait at close (3 s), not PostgreSQL's 10 s
    diagnosed_into_the_database(app)  # replays the spool: the run was stored already, and is not doubled
    assert rows_of(pg, result.run_id) == 1
    app.recorder.close()


def test_writes_held_across_a_restart_of_postgresql_go_to_the_spool(pg, tmp_path: Path):
    """A restarted PostgreSQL's flush position says nothing of what it had before: the writes whose
    position was read before the restart are spooled, not released."""
    spool = Spool(tmp_path / "spool")
    watch = FlushWatch(spool)
    app = tenant_service(pg, tmp_path, "flush-restart")
    try:
        with slow_wal_writer(pg):
            written = app.recorder.write(_rows(app))
            assert written.recorded == "database"
            watch.hold(_rows(app))
            with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
                assert watch.check(conn) == 1  # its position is read now; not flushed yet
            embedded.stop()  # a clean stop flushes everything, but the watch cannot know that
            embedded.start()
        with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
            assert watch.check(conn) == 0
        assert spool.pending()
    finally:
        app.recorder.close()


def test_a_spool_that_refuses_keeps_the_writes_held(pg, tmp_path: Path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the spool directory should be")
    watch = FlushWatch(Spool(blocked / "spool"))
    app = tenant_service(pg, tmp_path, "flush-refused")
    try:
        watch.hold(_rows(app))
        assert watch.spill("the database is away") == 0
        assert watch.held() == 1
        with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
            assert watch.check(conn) == 1, "a write whose flush could not be confirmed was released"
    finally:
        app.recorder.close()


def _rows(app):
    from datetime import UTC, datetime

    from mcp_devdiag.ids import uuid7
    from mcp_devdiag.writer import RunRow

    now = datetime.now(UTC)
    return [RunRow(id=uuid7(now), run_id=uuid7(now), ts=now, tenant_id=app.settings.tenant, environment="linux")]


@pytest.fixture(autouse=True)
def _server_running():
    yield
    if not embedded.status().running:
        embedded.start()
