"""DevDiag on a real Citus cluster: a coordinator and two workers on 127.0.0.1 (`devdiag cluster up`).

Setup distributes diag_run by tenant_id; the demo, a 100k-run load, the dbt build, the health
checks, every panel, alert and runbook query, the MCP server, the tenant boundary, backup, restore
and the drill all run against the coordinator. Skipped only when Citus is neither installed in the
embedded PostgreSQL nor buildable (no source tarball: see docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from click.testing import CliRunner
from conftest import tenant_service  # the module pytest loaded: importing it again would rerun its env reset

from devdiag_db import cluster
from devdiag_db.config import ConnectionSettings
from devdiag_db.db import connect, tenant_transaction
from orchestrator.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(cluster.unavailable_reason() is not None, reason=str(cluster.unavailable_reason())),
]

RUNBOOK = yaml.safe_load((Path(__file__).parent / "data" / "runbook_queries.yaml").read_text())["queries"]
PER_TENANT_TABLES = {
    "int_problem_counts_daily",
    "int_problem_episodes",
    "int_fix_outcomes",
    "int_fix_outcomes_daily",
    "int_fix_ranking",
}  # int_activity_hourly stays on the coordinator: the dashboard reads all tenants' week at once
# the build's results that must agree between an incremental build and a full refresh
TOTALS = """
select (select sum(cnt) from devdiag.v_problem_counts),
       (select sum(runs) from devdiag.v_activity_hourly),
       (select sum(attempts) from devdiag.int_fix_outcomes_daily),
       (select count(*) from devdiag.v_ttr_days),
       (select round(sum(confidence)::numeric, 6) from devdiag.v_fix_ranking)
"""


def devdiag(*args: str, ok: bool = True) -> Any:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def citus(pg, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectionSettings]:
    """A 3-node cluster in a DEVDIAG_HOME of this module's own, its coordinator as DEVDIAG_PG_DSN (after the
    session's own server started: `pg` stays the single-node one)."""
    home = tmp_path_factory.mktemp("citus-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DEVDIAG_HOME", str(home))
        for name in ("DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB"):
            env.delenv(name, raising=False)
        env.delenv("DEVDIAG_PG_DSN", raising=False)
        try:
            up = json.loads(devdiag("cluster", "up", "--workers", "2", "--json").stdout)
            env.setenv("DEVDIAG_PG_DSN", up["dsn"])
            settings = ConnectionSettings(dict(psycopg.conninfo.conninfo_to_dict(up["dsn"])))
            yield settings
        finally:
            devdiag("cluster", "down")


@pytest.fixture(scope="module")
def built(citus: ConnectionSettings) -> ConnectionSettings:
    """setup, then `devdiag demo` on the coordinator (3,000 runs of three tenants), every check green."""
    result = devdiag("setup")
    assert "citus: diag_run distributed by tenant_id (32 shards on 2 workers); reference tables: fix_catalog" in (
        result.output
    )
    demo = devdiag("demo", "--runs", "3000")
    checks = [line for line in demo.stdout.split("Next:")[0].splitlines()[1:] if line.strip()]
    assert len(checks) == 7 and all(line.rstrip().endswith("pass") for line in checks), demo.stdout
    assert "devdiag db stop" not in demo.stdout  # not the embedded server: nothing to stop
    return citus


def test_cluster_status_names_the_coordinator_and_two_workers(citus):
    status = json.loads(devdiag("cluster", "status", "--json").stdout)
    assert status["dsn"] and len([n for n in status["nodes"] if n["running"]]) == 3
    with connect(citus) as conn:
        assert len(conn.execute("select * from citus_get_active_worker_nodes()").fetchall()) == 2


def test_setup_refuses_citus_where_there_is_none(built, pg, monkeypatch):
    monkeypatch.delenv("DEVDIAG_PG_DSN")
    monkeypatch.setenv("DEVDIAG_PG_DSN", pg.conninfo())
    result = devdiag("setup", "--citus", ok=False)
    assert result.exit_code == 1
    assert "is not a Citus coordinator" in result.output and len(result.output.strip().splitlines()) == 1


def test_raw_table_is_distributed_and_the_tenant_tables_co_located(built):
    with connect(built) as conn:
        layout = dict(
            conn.execute(
                "select logicalrelid::regclass::text, partmethod::text || ':' || colocationid from pg_dist_partition"
            ).fetchall()
        )
        placements = conn.execute(
            "select count(distinct nodeport) from citus_shards where table_name = 'devdiag.diag_run'::regclass"
        ).fetchone()
        key = conn.execute("select pg_get_constraintdef(oid) from pg_constraint where conname = 'diag_run_pkey'")
        key = key.fetchone()
    assert layout["devdiag.fix_catalog"].startswith("n:")
    raw = layout["devdiag.diag_run"]
    assert raw.startswith("h:")
    colocated = {t.removeprefix("devdiag.") for t, kind in layout.items() if kind == raw}
    assert colocated == {"diag_run", "error_memory", *PER_TENANT_TABLES}
    assert placements == (2,)
    assert key == ("PRIMARY KEY (id, tenant_id)",)


def test_health_checks_pass(built):
    from orchestrator.health import run_health

    checks = run_health(built)
    assert len(checks) == 7 and all(c.status == "pass" for c in checks), [c.message for c in checks]


def test_every_panel_and_alert_query_runs_as_grafana(built):
    from orchestrator import alerts
    from orchestrator.grafana import files, macros, preview
    from orchestrator.grafana.database import grafana_settings

    board = files.read_dashboard()
    with connect(grafana_settings()) as conn:
        assert conn.execute("select current_user").fetchone() == ("grafana",)
        span = macros.TimeRange.last(timedelta(days=30))
        picked = preview.resolve_variables(conn, board, span, {})
        results = preview.run_panels(conn, board, span, picked)
        assert len(results) == len(board["panels"])
        for result in results:
            assert result.error is None, f"{result.panel['title']}: {result.error}"
            assert result.frame is not None and result.frame.rows, result.panel["title"]
        for rule in alerts.load_rules():
            (value,) = conn.execute(rule.sql).fetchone()
            assert isinstance(value, float), rule.name


@pytest.mark.parametrize("query", RUNBOOK, ids=[q["id"] for q in RUNBOOK])
def test_runbook_query_runs_verbatim(built, query):
    if query["id"] == "q21":
        pytest.skip("q21 names columns pg_stat_user_indexes lacks, on any PostgreSQL (docs/operations.md)")
    with connect(built) as conn:
        top = conn.execute(
            "select problem_code from devdiag.v_problem_counts where day >= current_date - 7 "
            "group by problem_code order by sum(cnt) desc limit 1"
        ).fetchone()[0]
        body = "\n".join(
            re.sub(r"--.*$", "", line) for line in query["sql"].replace("<PROBLEM_CODE>", top).splitlines()
        )
        for statement in (s.strip() for s in body.split(";") if s.strip()):
            conn.execute(statement).fetchall()


def test_a_100k_run_load_is_idempotent_and_builds_like_a_full_refresh(built, tmp_path):
    from orchestrator import demo_data

    with connect(built) as conn:
        rows = demo_data.generate(100_000, conn=conn, seed=5, tenants=5, now=datetime.now(UTC))
    path = tmp_path / "runs.jsonl"
    with open(path, "w") as out:
        for row in rows:
            line = row.to_json()
            line["tenant_id"] = f"load-{line['tenant_id']}"  # beside the demo's tenants, not mixed in
            out.write(json.dumps(line) + "\n")
    first = json.loads(devdiag("load", str(path), "--json").stdout)
    again = json.loads(devdiag("load", str(path), "--json").stdout)
    assert first["inserted"] == len(rows) >= 100_000
    assert again["inserted"] == 0 and again["already_present"] == len(rows)

    devdiag("build")
    with connect(built) as conn:
        incremental = conn.execute(TOTALS).fetchone()
        loaded = conn.execute("select count(*) from devdiag.diag_run where tenant_id like 'load-%'").fetchone()
    devdiag("build", "--full-refresh")
    with connect(built) as conn:
        assert conn.execute(TOTALS).fetchone() == incremental
    assert loaded == (len(rows),)


def test_a_tenant_sees_and_changes_only_its_own_runs_on_the_workers(built):
    from orchestrator.secrets import role_password

    writer = ConnectionSettings(
        {**built.params, "host": "127.0.0.1", "user": "devdiag_writer", "password": role_password("devdiag_writer")}
    )
    with connect(built) as owner:
        acme = owner.execute("select count(*) from devdiag.diag_run where tenant_id = 'acme'").fetchone()[0]
        globex_run = owner.execute("select run_id from devdiag.diag_run where tenant_id = 'globex' limit 1").fetchone()[
            0
        ]
        plan = "\n".join(
            r[0] for r in owner.execute("explain select count(*) from devdiag.diag_run where tenant_id = 'acme'")
        )
    assert acme > 0 and "Task Count: 1" in plan  # one tenant's question goes to one shard
    with connect(writer) as conn:
        with tenant_transaction(conn, "acme"):
            assert conn.execute("select count(*), count(distinct tenant_id) from devdiag.diag_run").fetchone() == (
                acme,
                1,
            )
            changed = conn.execute(
                "update devdiag.diag_run set resolution = 'manual', resolved_at = now() where run_id = %s",
                (globex_run,),
            )
            assert changed.rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(conn, "acme"):
            conn.execute(
                "insert into devdiag.diag_run (id, run_id, ts, tenant_id, environment) "
                "values (gen_random_uuid(), gen_random_uuid(), now(), 'globex', 'linux')"
            )
        with tenant_transaction(conn, None):
            assert conn.execute("select count(*) from devdiag.diag_run").fetchone() == (0,)


def test_the_mcp_server_diagnoses_and_learns_on_the_cluster(built, tmp_path):
    from mcp.client import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    from orchestrator.secrets import role_password

    dsn = (
        f"host=127.0.0.1 port={built.params['port']} dbname={built.dbname} user=devdiag_writer "
        f"password={role_password('devdiag_writer')}"
    )
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_devdiag"],
        env={
            "DEVDIAG_HOME": str(tmp_path),
            "DEVDIAG_TENANT": "acme",
            "DEVDIAG_PG_DSN": dsn,
            "DEVDIAG_SPOOL_DIR": str(tmp_path / "spool"),
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        },
    )
    error = "$ git status\nfatal: not a git repository (or any of the parent directories): .git"

    async def session() -> tuple[dict, dict]:
        with open(tmp_path / "server.stderr", "w") as errlog:
            async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=60) as client:
                run = (await client.call_tool("diagnose", {"error_text": error})).structured_content
                outcome = await client.call_tool("record_outcome", {"run_id": run["run_id"], "resolution": "fixed"})
                return run, outcome.structured_content

    run, outcome = asyncio.run(session())
    assert run["recorded"] == "database" and run["findings"][0]["code"] == "GIT_NOT_A_REPO"
    assert outcome["recorded"] == "database" and outcome["updated"] == 1
    assert "unusable" not in (tmp_path / "server.stderr").read_text()  # v_fix_ranking was readable
    with connect(built) as conn:
        assert conn.execute(
            "select tenant_id, resolution from devdiag.diag_run where run_id = %s", (run["run_id"],)
        ).fetchall() == [("acme", "fixed")]


def test_the_team_memory_answers_within_its_tenant_on_the_workers(built, tmp_path):
    from orchestrator.secrets import role_password

    writer = ConnectionSettings(
        {**built.params, "host": "127.0.0.1", "user": "devdiag_writer", "password": role_password("devdiag_writer")}
    )

    def service(tenant: str):
        return tenant_service(writer, tmp_path, tenant, environment="linux/rust", seed=1)

    acme, globex = service("acme"), service("globex")
    try:
        first = acme.diagnose(error_text="error[E0499]: cannot borrow `items` as mutable more than once at a time")
        acme.record_outcome("manual", run_id=first.run_id, note="cloned it first")
        second = acme.diagnose(error_text="error[E0499]: cannot borrow `self.pool` as mutable more than once at a time")
        assert [(s.run_id, s.note, s.outcome) for s in second.similar] == [(first.run_id, "cloned it first", "manual")]
        assert (
            globex.diagnose(error_text="error[E0499]: cannot borrow `x` as mutable more than once at a time").similar
            == []
        )
        assert second.recorded == "database"
        # The flush watch reads the coordinator's WAL only: on Citus the tool calls' commits wait instead.
        assert acme.recorder.synchronous_commit is True
        assert acme.recorder.held == 0
    finally:
        acme.recorder.close()
        globex.recorder.close()
    with connect(writer) as conn, tenant_transaction(conn, "acme"):
        assert conn.execute("select count(distinct tenant_id) from devdiag.error_memory").fetchone() == (1,)


def test_a_tenants_own_grafana_role_is_refused_in_one_line(built):
    result = devdiag("role", "grafana-tenant", "acme", ok=False)
    assert result.exit_code == 1 and "not available on Citus" in result.output


def test_retention_keeps_each_tenants_first_and_last_sightings_on_the_cluster(built):
    dry = json.loads(devdiag("retention", "--days", "150", "--dry-run", "--json").stdout)
    done = json.loads(devdiag("retention", "--days", "150", "--json").stdout)
    assert done["rows_deleted"] == dry["rows_deleted"] > 0
    assert done["rows_kept_first_last"] == dry["rows_kept_first_last"] > 0
    with connect(built) as conn:
        older = conn.execute("select count(*) from devdiag.diag_run where ts < %s", (done["cutoff"],)).fetchone()
    assert older == (done["rows_kept_first_last"],)


def test_capacity_counts_the_workers_databases(built):
    report = json.loads(devdiag("capacity", "--json").stdout)
    with connect(built) as conn:
        coordinator = conn.execute("select pg_database_size(current_database())").fetchone()[0]
    assert report["db_size_bytes"] > coordinator  # the shards live on the workers


def test_drill_backup_and_restore_into_the_distributed_layout(built, tmp_path):
    drill = json.loads(devdiag("drill", "--json").stdout)
    assert drill["rows_lost"] == 0
    report = json.loads(devdiag("backup", "--dir", str(tmp_path), "--json").stdout)
    backup = Path(report["file"])
    with connect(built) as conn:
        before = conn.execute("select count(*), count(distinct tenant_id) from devdiag.diag_run").fetchone()
    refused = devdiag("restore", "--force", str(backup), ok=False)
    assert refused.exit_code == 1 and "holds distributed tables" in refused.output
    with connect(built) as conn:
        conn.execute("drop schema devdiag cascade")
        for schema in conn.execute("select nspname from pg_namespace where nspname like 'devdiag_tenant_%'"):
            conn.execute(f'drop schema "{schema[0]}" cascade')
        conn.commit()
    devdiag("restore", str(backup))
    with connect(built) as conn:
        assert conn.execute("select count(*), count(distinct tenant_id) from devdiag.diag_run").fetchone() == before
        assert conn.execute(
            "select partmethod from pg_dist_partition where logicalrelid = 'devdiag.diag_run'::regclass"
        ).fetchone() == ("h",)


def test_down_stops_exactly_the_cluster_and_up_brings_it_back(built, pg):
    with connect(built) as conn:
        rows = conn.execute("select count(*) from devdiag.diag_run").fetchone()
    before = json.loads(devdiag("cluster", "status", "--json").stdout)
    stopped = json.loads(devdiag("cluster", "down", "--json").stdout)
    assert stopped["stopped"] == ["worker-2", "worker-1", "coordinator"]
    after = devdiag("cluster", "status", "--json", ok=False)
    assert after.exit_code == 1 and not any(n["running"] for n in json.loads(after.stdout)["nodes"])
    with psycopg.connect(pg.conninfo()) as conn:  # the session's single-node server was left alone
        assert conn.execute("select 1").fetchone() == (1,)
    again = json.loads(devdiag("cluster", "up", "--json").stdout)
    assert again["dsn"] == before["dsn"] and [n["port"] for n in again["nodes"]] == [n["port"] for n in before["nodes"]]
    with connect(built) as conn:
        assert conn.execute("select count(*) from devdiag.diag_run").fetchone() == rows


def test_up_without_citus_or_its_source_says_what_to_pass(monkeypatch, tmp_path):
    monkeypatch.setenv("DEVDIAG_HOME", str(tmp_path))
    monkeypatch.setattr(cluster, "installed", lambda: False)
    monkeypatch.setattr(cluster, "find_source", lambda explicit=None: None)
    result = devdiag("cluster", "up", ok=False)
    assert result.exit_code == 1
    assert "--citus-src" in result.output and len(result.output.strip().splitlines()) == 1
    missing = devdiag("cluster", "up", "--citus-src", str(tmp_path / "nope.tar.gz"), ok=False)
    assert missing.exit_code == 1 and "no such file" in missing.output
