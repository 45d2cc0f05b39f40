"""`devdiag review`, `devdiag capacity`, `devdiag perf`: the runbook's reviews on the demo data, their
JSON, exit codes and faults; slow queries from the embedded server's pg_stat_statements."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner
from conftest import own_database
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


def test_perf_lists_the_slowest_devdiag_statements_from_pg_stat_statements(demo_db):
    """The embedded PostgreSQL 18 preloads pg_stat_statements and `devdiag setup` creates it."""
    with psycopg.connect(demo_db.conninfo(), autocommit=True) as conn:
        for _ in range(3):
            conn.execute("select count(*) from devdiag.diag_run where ts > now() - interval '1 day'")
    slow = reviews.perf_report(demo_db)["slow_queries"]
    assert slow["enabled"] is True and slow["message"] is None
    rows = slow["rows"]
    assert 0 < len(rows) <= 10 and all("devdiag" in row["query"] for row in rows)
    assert [r["mean_exec_time"] for r in rows] == sorted((r["mean_exec_time"] for r in rows), reverse=True)
    assert any("devdiag.diag_run where ts >" in r["query"] and r["calls"] >= 3 for r in rows) or len(rows) == 10
    assert {"query", "calls", "total_exec_time", "mean_exec_time", "max_exec_time"} <= set(rows[0])
    people = invoke(reviews.perf)
    assert people.exit_code == 0, people.output
    assert "Table sizes" in people.output and "Index usage" in people.output
    assert "Slow queries (pg_stat_statements" in people.output and "mean_exec_time" in people.output


def test_perf_says_plainly_when_pg_stat_statements_is_not_created(empty_db):
    """A database that `devdiag setup` never ran in: the library is loaded, the extension is not there."""
    result = invoke(reviews.perf, env={"DEVDIAG_PG_DSN": empty_db.conninfo()})
    assert result.exit_code == 0, result.output
    assert "pg_stat_statements is not enabled: it is loaded: run `devdiag setup`" in result.output
    with psycopg.connect(empty_db.conninfo(), autocommit=True) as conn:
        slow = reviews.slow_queries(conn)
        assert slow["enabled"] is False and slow["rows"] == []
        conn.execute("create extension pg_stat_statements")
        conn.execute("select 1 as devdiag_probe")
        assert reviews.slow_queries(conn)["enabled"] is True


def test_role_passwords_never_reach_pg_stat_statements(pg):
    """Setup and a tenant's read role send SCRAM verifiers in `alter role ... password`: kept out of
    the statement texts even where the server tracks utility statements (the embedded one does not)."""
    from orchestrator.provision import grafana_tenant, setup

    with own_database(pg, "devdiag_pss_secrets", setup=False) as db:
        with psycopg.connect(pg.conninfo(dbname="postgres"), autocommit=True) as admin:
            admin.execute("alter database devdiag_pss_secrets set pg_stat_statements.track_utility = on")
        setup(db)
        # roles are cluster-wide: a tenant no other test uses, and its role dropped again, so that a
        # later test's `grafana_tenant(..., "acme")` does not meet a role its database never registered
        reader = grafana_tenant(db, "pss-secrets")
        try:
            with psycopg.connect(db.conninfo(), autocommit=True) as conn:
                conn.execute("create table public.pss_probe (x int)")  # a utility statement: tracked here
                texts = [
                    row[0]
                    for row in conn.execute(
                        "select query from pg_stat_statements where dbid = "
                        "(select oid from pg_database where datname = current_database())"
                    )
                ]
        finally:
            with psycopg.connect(db.conninfo(), autocommit=True) as conn:
                conn.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(reader.schema)))
                conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(reader.role)))
                conn.execute(sql.SQL("drop role {}").format(sql.Identifier(reader.role)))
    assert any("pss_probe" in text for text in texts), "utility statements are not tracked: the test proves nothing"
    assert not [text for text in texts if "SCRAM-SHA-256$" in text or "password" in text.lower()]


def test_setup_creates_pg_stat_statements_and_pg_trgm_in_public(pg):
    from orchestrator.cli import main

    with own_database(pg, "devdiag_extensions", setup=False) as db:
        result = invoke(main, "setup", env={"DEVDIAG_PG_DSN": db.conninfo()})
        assert result.exit_code == 0, result.output
        assert "extensions: pg_stat_statements, pg_trgm" in result.output
        with psycopg.connect(db.conninfo()) as conn:
            where = dict(conn.execute("select extname, extnamespace::regnamespace::text from pg_extension"))
            assert where == {"plpgsql": "pg_catalog", "pg_stat_statements": "public", "pg_trgm": "public"}
            similar = "select similarity('ModuleNotFoundError: x', 'ModuleNotFoundError: y')"
            assert conn.execute(similar).fetchone()[0] > 0.5
            assert conn.execute("select count(*) from pg_stat_statements").fetchone()[0] > 0
        again = invoke(main, "setup", env={"DEVDIAG_PG_DSN": db.conninfo()})  # idempotent
        assert again.exit_code == 0 and "extensions: pg_stat_statements, pg_trgm" in again.output
