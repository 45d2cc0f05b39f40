"""`devdiag review`, `devdiag capacity`, `devdiag perf`: the runbook's reviews on the demo data, their
JSON, exit codes and faults; slow queries from a real pg_stat_statements when the machine has one."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from devdiag_db.config import ConnectionSettings
from orchestrator import reviews
from orchestrator.contract import RAW_INDEXES


def invoke(command, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(command, list(args), env=env)


def scalar(settings: ConnectionSettings, query: str):
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        return conn.execute(query).fetchone()[0]


@pytest.fixture
def empty_db(pg) -> Iterator[ConnectionSettings]:
    """A database with nothing in it: no schema, no views."""
    name = "devdiag_reviews_empty"
    with psycopg.connect(pg.conninfo(dbname="postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    yield ConnectionSettings({**pg.params, "dbname": name}, embedded=True)
    with psycopg.connect(pg.conninfo(dbname="postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


# --- review ---------------------------------------------------------------------------------------


def test_review_json_is_the_runbooks_four_queries(demo_db):
    result = invoke(reviews.review, "--json", "--recent", "7")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) == {
        "learning_effectiveness",
        "top_problems_7d",
        "environment_diversity_7d",
        "activity_7d",
        "recent_activity",
    }
    learning = report["learning_effectiveness"]
    assert learning["problems_with_fixes"] == scalar(
        demo_db, "select count(distinct problem_code) from devdiag.v_fix_success"
    )
    assert learning["total_successes"] == scalar(demo_db, "select sum(successful_fixes) from devdiag.v_fix_success")
    assert 0 < learning["overall_confidence"] < 1
    top = [row["total_occurrences"] for row in report["top_problems_7d"]]
    assert 0 < len(top) <= 10 and top == sorted(top, reverse=True)
    assert len(report["recent_activity"]) == 7
    newest = report["recent_activity"][0]
    assert {"ts", "run_id", "tenant_id", "environment", "problem_code", "confidence"} <= set(newest)
    activity = report["activity_7d"]
    assert activity["runs"] > activity["clean_runs"] > 0 and activity["findings"] > 0


def test_review_for_people(demo_db):
    result = invoke(reviews.review, "--recent", "3")
    assert result.exit_code == 0, result.output
    for title in ("Learning effectiveness", "Top problems, last 7 days", "Environment diversity", "Recent activity"):
        assert title in result.output
    assert " UTC " in result.output  # times for people, not ISO strings with microseconds


def test_review_without_views_says_what_to_run(empty_db):
    result = invoke(reviews.review, env={"DEVDIAG_PG_DSN": empty_db.conninfo()})
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "devdiag build" in result.output


COMMANDS = {"review": reviews.review, "capacity": reviews.capacity, "perf": reviews.perf}


@pytest.mark.parametrize("name", COMMANDS)
def test_a_database_that_is_down_is_one_line_and_exit_1(name):
    result = invoke(COMMANDS[name], "--json", env={"DEVDIAG_PG_DSN": "postgresql://owner@127.0.0.1:9/devdiag"})
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: ") and "not reachable" in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_a_wrong_password_is_named_and_never_printed(pg, name):
    from devdiag_db import embedded

    wrong = embedded.tcp_settings("grafana", "wrong-password-77")
    result = invoke(COMMANDS[name], env={"DEVDIAG_PG_DSN": wrong.conninfo()})
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "refused the credentials" in result.output and "wrong-password-77" not in result.output


# --- capacity -------------------------------------------------------------------------------------


def test_capacity_json_and_the_12_month_extrapolation(demo_db):
    result = invoke(reviews.capacity, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["database"] == "devdiag" and report["status"] == "ok"
    size = scalar(demo_db, "select pg_database_size('devdiag')")
    assert abs(report["db_size_bytes"] - size) < 1024 * 1024  # the same, give or take autovacuum
    days = scalar(demo_db, "select extract(epoch from now() - min(ts)) / 86400 from devdiag.diag_run")
    assert report["projected_12_months_bytes"] == pytest.approx(report["db_size_bytes"] / float(days) * 365, rel=1e-3)
    assert report["retention_days"] == int(float(days))
    months = report["monthly_growth"]
    assert 6 <= len(months) <= 12 and sum(m["rows_added"] for m in months) == scalar(
        demo_db, "select count(*) from devdiag.diag_run"
    )
    assert (report["warning_bytes"], report["critical_bytes"]) == (5 * 1024**3, 10 * 1024**3)


@pytest.mark.parametrize(("warning", "critical", "status", "code"), [(1, 10**15, "warning", 1), (1, 2, "critical", 2)])
def test_capacity_exit_codes(demo_db, monkeypatch, warning, critical, status, code):
    real = reviews.Thresholds
    monkeypatch.setattr(reviews, "Thresholds", lambda: real(warning_bytes=warning, critical_bytes=critical))
    result = invoke(reviews.capacity, "--json")
    assert result.exit_code == code and json.loads(result.output)["status"] == status
    people = invoke(reviews.capacity)
    assert people.exit_code == code and f"status: {status.upper()}" in people.output


def test_capacity_thresholds_and_formula():
    t = reviews.Thresholds()
    gib = 1024**3
    assert [t.status(s) for s in (0, 5 * gib, 5 * gib + 1, 10 * gib, 10 * gib + 1, None)] == [
        "ok",
        "ok",
        "warning",
        "warning",
        "critical",
        "ok",
    ]
    assert reviews.extrapolate_12_months(180 * 1000, 180.0) == 365_000
    assert reviews.extrapolate_12_months(1000, 0.01) == 365_000  # under a day counts as one
    assert reviews.extrapolate_12_months(1000, None) is None


def test_capacity_of_an_empty_raw_table(empty_db):
    """A fresh database: no rows, no span, no projection, still a report."""
    from orchestrator.provision import setup

    setup(empty_db)
    result = invoke(reviews.capacity, "--json", env={"DEVDIAG_PG_DSN": empty_db.conninfo()})
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["retention_days"] is None and report["projected_12_months_bytes"] is None
    assert report["monthly_growth"] == [] and report["status"] == "ok"


# --- perf -----------------------------------------------------------------------------------------


def test_perf_json_sizes_and_index_usage(demo_db):
    with psycopg.connect(demo_db.conninfo(), autocommit=True) as conn:
        conn.execute("analyze devdiag.diag_run")
    result = invoke(reviews.perf, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    tables = {t["table_name"]: t for t in report["tables"]}
    raw = tables["devdiag.diag_run"]
    assert raw["total_bytes"] >= raw["table_bytes"] + raw["indexes_bytes"] > 0
    assert raw["rows_estimate"] == pytest.approx(scalar(demo_db, "select count(*) from devdiag.diag_run"), rel=0.05)
    indexes = {i["indexname"]: i for i in report["indexes"]}
    assert sum(name.startswith("ix_diag_run_") for name in indexes) == len(RAW_INDEXES)
    for index in report["indexes"]:
        assert index["unused"] == (index["idx_scan"] == 0)
        assert bool(index["note"]) == index["unused"]
    assert report["unused_indexes"] == [i["indexname"] for i in report["indexes"] if i["unused"]]


def test_perf_flags_an_unused_raw_index_and_spares_the_used_one(demo_db):
    with psycopg.connect(demo_db.conninfo(), autocommit=True) as conn:
        conn.execute("set enable_seqscan = off")
        conn.execute("select count(*) from devdiag.diag_run where ts >= now() - interval '1 hour'")
    # Statistics reach the views a moment after the other session ends.
    deadline = time.monotonic() + 10
    while True:
        report = reviews.perf_report(demo_db)
        by_name = {i["indexname"]: i for i in report["indexes"]}
        if by_name["ix_diag_run_ts"]["idx_scan"] > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert by_name["ix_diag_run_ts"]["idx_scan"] > 0 and not by_name["ix_diag_run_ts"]["unused"]
    for index in report["indexes"]:
        if index["unused"] and index["indexname"].startswith("ix_diag_run_"):
            assert index["note"] == "unused: consider dropping"
        if index["unused"] and index["indexname"] == "diag_run_pkey":
            assert index["note"] == "enforces uniqueness: keep"


def test_perf_says_plainly_when_pg_stat_statements_is_missing(demo_db):
    result = invoke(reviews.perf)
    assert result.exit_code == 0, result.output
    assert "Table sizes" in result.output and "Index usage" in result.output
    assert "pg_stat_statements is not enabled" in result.output
    slow = json.loads(invoke(reviews.perf, "--json").output)["slow_queries"]
    assert slow["enabled"] is False and slow["rows"] == [] and "pg_stat_statements" in slow["message"]


# --- a real pg_stat_statements --------------------------------------------------------------------


def _system_postgres() -> Path | None:
    """The bin directory of a system PostgreSQL that ships pg_stat_statements, if any."""
    for bin_dir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        lib = Path(bin_dir).parent / "lib" / "pg_stat_statements.so"
        if (Path(bin_dir) / "postgres").exists() and lib.exists():
            return Path(bin_dir)
    return None


@pytest.fixture(scope="module")
def statements_server(devdiag_home) -> Iterator[ConnectionSettings]:
    """A throwaway system PostgreSQL with pg_stat_statements loaded (skipped when there is none)."""
    bin_dir = _system_postgres()
    if bin_dir is None:
        pytest.skip("no system PostgreSQL with pg_stat_statements on this machine")
    as_user = {"user": "pgserver"} if os.geteuid() == 0 else {}  # postgres refuses to run as root
    base = Path(tempfile.mkdtemp(prefix="devdiag-pss-"))
    base.chmod(0o755)
    data, sock = base / "data", base / "sock"
    for d in (data, sock):
        d.mkdir(mode=0o700)
        if as_user:
            shutil.chown(d, "pgserver", "pgserver")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, check=False, timeout=120, **as_user)

    init = run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--locale=C", "-E", "UTF8")
    assert init.returncode == 0, init.stderr
    options = f"-k {sock} -c listen_addresses='' -c shared_preload_libraries=pg_stat_statements -p 5439"
    start = run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", str(sock / "log"), "start")
    try:
        assert start.returncode == 0, start.stderr
        settings = ConnectionSettings({"host": str(sock), "port": "5439", "user": "postgres", "dbname": "postgres"})
        yield settings
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        with contextlib.suppress(OSError):
            shutil.rmtree(base)


def test_perf_lists_slow_queries_from_pg_stat_statements(statements_server):
    with psycopg.connect(statements_server.conninfo(), autocommit=True) as conn:
        conn.execute("create schema if not exists devdiag")
        conn.execute("create table if not exists devdiag.diag_run (id int primary key, ts timestamptz)")
        conn.execute("create index if not exists ix_diag_run_ts on devdiag.diag_run (ts)")
        for _ in range(3):
            conn.execute("select count(*) from devdiag.diag_run where ts > now() - interval '1 day'")
        before = reviews.slow_queries(conn)
        assert before["enabled"] is False and "`create extension pg_stat_statements`" in before["message"]
        conn.execute("create extension if not exists pg_stat_statements")
        conn.execute("select count(*) from devdiag.diag_run where ts > now() - interval '2 days'")
    report = reviews.perf_report(statements_server)
    slow = report["slow_queries"]
    assert slow["enabled"] is True and slow["message"] is None
    assert slow["rows"] and all("devdiag" in row["query"] for row in slow["rows"])
    assert {"query", "calls", "total_exec_time", "mean_exec_time", "max_exec_time"} <= set(slow["rows"][0])
    people = invoke(reviews.perf, env={"DEVDIAG_PG_DSN": statements_server.conninfo()})
    assert people.exit_code == 0 and "mean_exec_time" in people.output
