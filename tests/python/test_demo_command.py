"""`devdiag demo`: one command, every check green, safe to run again, never touching real data."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from click.testing import CliRunner
from conftest import own_database

from devdiag_db import embedded
from orchestrator.cli import main

DB = "devdiag_demo_command"


@pytest.fixture(scope="module")
def demo_env(pg):
    """`devdiag demo` pointed at an empty database of this module's own (the demo runs setup itself)."""
    state = embedded.status()
    with own_database(pg, DB, setup=False):
        yield {
            "DEVDIAG_PG_HOST": f"{state.socket_dir}:{state.port}",
            "DEVDIAG_PG_USER": "postgres",
            "DEVDIAG_PG_DB": DB,
        }


def demo(env):
    return CliRunner().invoke(main, ["demo", "--runs", "3000"], env=env, catch_exceptions=False)


def rows(pg) -> int:
    with psycopg.connect(pg.conninfo(dbname=DB)) as conn:
        return conn.execute("select count(*) from devdiag.diag_run").fetchone()[0]


def test_demo_builds_everything_and_every_check_passes(pg, demo_env):
    result = demo(demo_env)
    assert result.exit_code == 0, result.output
    table = result.stdout.split("Next:")[0]
    check_lines = [line for line in table.splitlines()[1:] if line.strip()]
    assert len(check_lines) == 7
    assert all(line.rstrip().endswith("pass") for line in check_lines), table  # as `health --json` says
    assert "devdiag db psql" in result.stdout


def test_demo_again_while_fresh_adds_nothing(pg, demo_env):
    before = rows(pg)
    result = demo(demo_env)
    assert result.exit_code == 0, result.output
    assert "nothing added" in result.output
    assert rows(pg) == before


def test_stale_demo_is_replaced_not_doubled(pg, demo_env):
    with psycopg.connect(pg.conninfo(dbname=DB), autocommit=True) as conn:
        before = conn.execute("select count(*) from devdiag.diag_run").fetchone()[0]
        conn.execute(
            "update devdiag.diag_run set ts = ts - interval '3 hours', resolved_at = resolved_at - interval '3 hours'"
        )
    result = demo(demo_env)
    assert result.exit_code == 0, result.output
    assert "replacing" in result.output
    assert abs(rows(pg) - before) < before * 0.05  # a new history of the same size, not a second one


def test_demo_refuses_a_database_with_real_tenants(pg, demo_env):
    with psycopg.connect(pg.conninfo(dbname=DB), autocommit=True) as conn:
        conn.execute(
            "insert into devdiag.diag_run (id, run_id, ts, tenant_id, environment) "
            "values (%s, %s, now(), 'bigcorp', 'linux')",
            (uuid.uuid4(), uuid.uuid4()),
        )
        before = conn.execute("select count(*) from devdiag.diag_run").fetchone()[0]
    result = demo(demo_env)
    assert result.exit_code == 1
    assert "bigcorp" in result.output and "not demo data" in result.output
    assert rows(pg) == before
