"""Shared fixtures: one real embedded PostgreSQL per test session, in its own DEVDIAG_HOME."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

for var in ("DEVDIAG_PG_DSN", "DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB"):
    os.environ.pop(var, None)


@pytest.fixture(scope="session")
def devdiag_home() -> Iterator[Path]:
    """A fresh DEVDIAG_HOME with a running embedded server, stopped and removed at the end.

    Not under pytest's basetemp: a second pytest session resets that tree's permissions and would
    pull the data directory from under this session's server.
    """
    from devdiag_db import embedded

    home = Path(tempfile.mkdtemp(prefix="devdiag-test-"))
    os.environ["DEVDIAG_HOME"] = str(home)
    embedded.start()
    yield home
    embedded.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def pg(devdiag_home: Path):
    """Owner connection settings for the session's database, with `devdiag setup` applied."""
    from devdiag_db import config
    from orchestrator.provision import setup

    settings = config.settings()
    setup(settings)
    return settings


DEMO_RUNS = 20_000


@pytest.fixture(scope="session")
def demo_db(pg):
    """The session database with `devdiag demo`'s data loaded and every model built."""
    from datetime import UTC, datetime

    from orchestrator import dbt
    from orchestrator.demo_data import load_demo

    load_demo(pg, runs=DEMO_RUNS, seed=7, now=datetime.now(UTC))
    results = dbt.invoke(pg, ["build"])
    broken = [f"{r.name}: {r.message}" for r in results if r.status in {"error", "fail"}]
    assert not broken, broken
    return pg


@contextlib.contextmanager
def own_database(pg, name: str, *, setup: bool = True) -> Iterator:
    """A database of a test module's own on the session's server (created fresh, dropped after), so
    its rows never reach the shared `devdiag` database. With `setup`, `devdiag setup` is applied."""
    import psycopg
    from psycopg import sql

    from devdiag_db.config import ConnectionSettings
    from orchestrator.provision import setup as run_setup

    drop = sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
    with psycopg.connect(pg.conninfo(dbname="postgres"), autocommit=True) as admin:
        admin.execute(drop)
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    settings = ConnectionSettings({**pg.params, "dbname": name}, embedded=pg.embedded)
    if setup:
        run_setup(settings)
    try:
        yield settings
    finally:
        with psycopg.connect(pg.conninfo(dbname="postgres"), autocommit=True) as admin:
            admin.execute(drop)


def login(db, role: str):
    """``db``'s settings as ``role`` over its own TCP password login (what a real client of that role uses)."""
    from devdiag_db import embedded
    from devdiag_db.config import ConnectionSettings
    from orchestrator.secrets import role_password

    tcp = embedded.tcp_settings(role, role_password(role))
    return ConnectionSettings({**tcp.params, "dbname": db.dbname}, embedded=True)


def tenant_service(target, spool_root: Path, tenant: str, *, environment: str = "linux/python-3.12", seed: int = 2):
    """The MCP tools' service for one tenant on ``target``, with its own spool under ``spool_root``."""
    import random

    from mcp_devdiag.catalog import load_catalog
    from mcp_devdiag.recorder import Recorder
    from mcp_devdiag.service import DevDiag
    from mcp_devdiag.settings import DatabaseTarget, ServerSettings
    from mcp_devdiag.spool import Spool

    settings = ServerSettings(
        tenant=tenant, environment=environment, database=DatabaseTarget(target), spool_dir=spool_root / tenant
    )
    recorder = Recorder(settings.database, Spool(settings.spool_dir, settings.spool_max_bytes))
    return DevDiag(settings, recorder, load_catalog(), rng=random.Random(seed))


@contextlib.contextmanager
def slow_wal_writer(pg) -> Iterator[None]:
    """PostgreSQL flushes a commit that did not wait within wal_writer_delay (200 ms): at its maximum,
    10 s, the tests have the time to crash it first."""
    import psycopg

    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        conn.execute("alter system set wal_writer_delay = '10s'")
        conn.execute("select pg_reload_conf()")
    time.sleep(0.3)  # the WAL writer reads the new delay when its current sleep ends
    try:
        yield
    finally:
        with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
            conn.execute("alter system reset wal_writer_delay")
            conn.execute("select pg_reload_conf()")
