"""`devdiag demo`: one command, every check green, safe to run again, never touching real data."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from click.testing import CliRunner
from conftest import own_database

from devdiag_db import embedded
from orchestrator.cli import main
from orchestrator.demo_data import demo_tenants, refresh_demo

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
    assert "DEVDIAG_PG_" in result.output  # it was configured: the hint to point it elsewhere is right here


def insert_run(conninfo: str, tenant: str, age: str = "0 minutes") -> None:
    """One clean run of ``tenant``, as the MCP server writes it."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "insert into devdiag.diag_run (id, run_id, ts, tenant_id, environment) "
            "values (%s, %s, now() - %s::interval, %s, 'linux')",
            (uuid.uuid4(), uuid.uuid4(), age, tenant),
        )


def test_embedded_demo_keeps_an_mcp_servers_runs_and_refreshes_only_its_own(pg):
    """A local MCP server tried on the embedded database wrote tenant `default`: the demo runs anyway."""
    demo_names = [t.name for t in demo_tenants()]
    with own_database(pg, "devdiag_demo_embedded") as settings:
        assert settings.embedded
        insert_run(settings.conninfo(), "default", "5 minutes")  # fresh: must not pass for a fresh demo
        first = refresh_demo(settings, runs=500)
        assert first.action == "loaded" and first.report is not None and first.report.inserted > 0
        assert first.others == {"default": 1}
        with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
            conn.execute(
                "update devdiag.diag_run set ts = ts - interval '3 hours' where tenant_id = any(%s)", (demo_names,)
            )
        insert_run(settings.conninfo(), "default")
        second = refresh_demo(settings, runs=500)
        assert second.action == "replaced" and second.removed > 0  # stale demo rows, whatever `default` holds
        assert second.others == {"default": 2}
        with psycopg.connect(settings.conninfo()) as conn:
            assert conn.execute("select count(*) from devdiag.diag_run where tenant_id = 'default'").fetchone() == (2,)
            newest = conn.execute(
                "select now() - max(ts) < interval '1 hour' from devdiag.diag_run where tenant_id = any(%s)",
                (demo_names,),
            ).fetchone()
        assert newest == (True,)


@pytest.mark.slow
def test_demo_again_after_an_mcp_server_wrote_tenant_default(pg, tmp_path):
    """The newcomer's path, on an embedded database of its own: demo, try the server, demo again."""
    home = tmp_path / "home"
    env = {"DEVDIAG_HOME": str(home)}
    try:
        first = CliRunner().invoke(main, ["demo", "--runs", "1000"], env=env, catch_exceptions=False)
        assert first.exit_code == 0, first.output
        url = CliRunner().invoke(main, ["db", "url"], env=env).output.strip()
        insert_run(url, "default")
        again = CliRunner().invoke(main, ["demo", "--runs", "1000"], env=env, catch_exceptions=False)
        assert again.exit_code == 0, again.output
        assert "unset DEVDIAG_PG" not in again.output
        assert "kept the runs of other tenants" in again.output and "'default' (1 row)" in again.output
        with psycopg.connect(url) as conn:
            assert conn.execute("select count(*) from devdiag.diag_run where tenant_id = 'default'").fetchone() == (1,)
    finally:
        CliRunner().invoke(main, ["db", "stop"], env=env)
