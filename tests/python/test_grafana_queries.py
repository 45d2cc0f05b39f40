"""Every panel, variable and alert query runs, with Grafana's macros expanded, as role grafana.

No Grafana runs here (none can be installed): ``macros.expand`` reproduces what Grafana sends to
PostgreSQL, checked first against Grafana's documented expansions, then every query runs over a TCP
password login as ``grafana`` (SELECT on the six views only) against the demo database and must return
what its panel type needs. Each alert's A → B → C chain, replayed from the generated provisioning
file, is normal on healthy data and fires on its trigger scenario.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from devdiag_db.config import ConnectionSettings
from devdiag_db.db import connect
from orchestrator import alerts
from orchestrator.grafana import alerting, dashboard, files, macros, preview
from orchestrator.grafana.charts import NUMERIC_TYPES, TIME_TYPES, Frame, is_number, time_series
from orchestrator.grafana.database import grafana_settings

NOW = datetime(2024, 3, 10, 12, 30, 15, 250000, tzinfo=UTC)
RANGE = macros.TimeRange(NOW - timedelta(days=7), NOW)
SPANS = (timedelta(hours=6), timedelta(days=7), timedelta(days=30), timedelta(days=180))


def ctx(**variables: macros.Selection) -> macros.QueryContext:
    return macros.QueryContext(RANGE, variables)


# --- the expansion, against Grafana's documented output ------------------------------------------


def test_time_macros_expand_as_grafana_documents() -> None:
    c = ctx()
    assert macros.expand("where $__timeFilter(ts)", c) == (
        "where ts BETWEEN '2024-03-03T12:30:15.25Z' AND '2024-03-10T12:30:15.25Z'"
    )
    assert (
        macros.expand("$__timeFrom() and $__timeTo()", c) == "'2024-03-03T12:30:15.25Z' and '2024-03-10T12:30:15.25Z'"
    )
    assert macros.expand("$__timeGroupAlias(ts, 1h)", c) == 'floor(extract(epoch from ts)/3600)*3600 AS "time"'
    assert macros.expand("$__timeGroup(day, '1d')", c) == "floor(extract(epoch from day)/86400)*86400"
    assert macros.expand("$__timeGroup(ts, 30d)", c) == "floor(extract(epoch from ts)/2.592e+06)*2.592e+06"
    assert macros.expand("$__time(ts), $__unixEpochFilter(t)", c) == (
        'ts AS "time", t >= 1709469015 AND t <= 1710073815'
    )


def test_interval_follows_range_and_panel_minimum() -> None:
    week = macros.QueryContext(RANGE, max_data_points=500)
    assert week.interval == "20m"  # 7 d / 500 = 20.2 min, rounded to Grafana's 20m step
    assert macros.QueryContext(RANGE, max_data_points=500, min_interval="1d").interval == "1d"
    assert (
        macros.expand("$__timeGroupAlias(ts, $__interval)", week) == 'floor(extract(epoch from ts)/1200)*1200 AS "time"'
    )
    assert macros.expand("$__interval_ms", week) == "1200000"
    assert macros.seconds_to_hms(604800) == "7d" and macros.seconds_to_hms(0.5) == "500ms"


def test_template_variables_quote_like_the_sql_data_source() -> None:
    picked = macros.Selection("tenant", options=("acme", "o'hara"), selected=("acme", "o'hara"))
    c = ctx(tenant=picked)
    assert macros.expand("tenant_id in ($tenant)", c) == "tenant_id in ('acme','o''hara')"
    assert macros.expand("in (${tenant:sqlstring}) [[tenant]] ${tenant:csv}", c) == (
        "in ('acme','o''hara') 'acme','o''hara' acme,o'hara"
    )
    everything = macros.Selection("tenant", options=("a", "b"))
    assert macros.expand("in ($tenant)", ctx(tenant=everything)) == "in ('a','b')"
    custom_all = macros.Selection("tenant", options=("a", "b"), all_value="'__all__'")
    assert macros.expand("in ($tenant)", ctx(tenant=custom_all)) == "in ('__all__')"  # inserted raw


def test_dashboard_filters_work_with_no_tenants_at_all() -> None:
    """A fresh install has no tenants: the custom All value keeps `in (...)` valid SQL."""
    empty = macros.Selection("tenant", options=(), all_value=dashboard.ALL_VALUE)
    sql = macros.expand(dashboard.tenant_filter(), ctx(tenant=empty))
    assert sql == "('__all__' in ('__all__') or tenant_id in ('__all__'))"


def test_unknown_macros_and_bad_intervals_are_refused() -> None:
    with pytest.raises(macros.MacroError, match="unknown macro"):
        macros.expand("$__nope(ts)", ctx())
    with pytest.raises(macros.MacroError, match="interval"):
        macros.expand("$__timeGroup(ts, soon)", ctx())
    with pytest.raises(macros.MacroError, match="missing time column"):
        macros.expand("$__timeFilter()", ctx())


def test_every_variable_in_the_dashboard_is_defined() -> None:
    board = files.read_dashboard()
    defined = {v["name"] for v in board["templating"]["list"]}
    for panel in board["panels"]:
        assert macros.variable_names(panel["targets"][0]["rawSql"]) <= defined, panel["title"]


# --- against the demo database, as role grafana --------------------------------------------------


@pytest.fixture(scope="module")
def as_grafana(demo_db: ConnectionSettings) -> Iterator[psycopg.Connection]:
    settings = grafana_settings()
    assert settings.params["user"] == "grafana" and settings.params["host"] == "127.0.0.1"
    with connect(settings) as conn:
        yield conn


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return files.read_dashboard()


def selections(conn: psycopg.Connection, board: dict[str, Any], span: timedelta, **chosen: tuple[str, ...]):
    return preview.resolve_variables(conn, board, macros.TimeRange.last(span), chosen)


def check_shape(panel: dict[str, Any], frame: Frame) -> None:
    """What Grafana's panel type needs from the query result (column types hold even with no rows)."""
    title = panel["title"]
    types = dict(zip(frame.columns, frame.types, strict=True))
    numbers = [c for c, t in types.items() if t in NUMERIC_TYPES]
    if panel["type"] == "timeseries":
        assert types.get("time") in NUMERIC_TYPES | TIME_TYPES, f"{title}: needs a time column, got {types}"
        times = frame.column("time")
        assert times == sorted(times), f"{title}: time must ascend"
        values = [c for c in numbers if c != "time"]
        assert values, f"{title}: no numeric value column"
        labels = [c for c in frame.columns if c != "time" and c not in values]
        assert labels in ([], ["metric"]) and all(types[c] == "text" for c in labels), f"{title}: labels {labels}"
        if frame.rows:
            assert time_series(frame)
    elif panel["type"] == "barchart":
        x_field = panel["options"]["xField"]
        assert types.get(x_field) == "text", f"{title}: the x field must be text"
        assert numbers == [c for c in frame.columns if c != x_field], f"{title}: values must be numbers: {types}"
    elif panel["type"] == "stat":
        assert len(frame.rows) == 1, title
        assert numbers == list(frame.columns), f"{title}: every stat field must be a number: {types}"
        assert all(is_number(v) for v in frame.rows[0]), title
    elif panel["type"] == "table":
        assert len(set(frame.columns)) == len(frame.columns), title


@pytest.mark.slow
def test_grafana_reads_the_views_and_nothing_else(as_grafana: psycopg.Connection) -> None:
    for view in (
        "v_problem_counts",
        "v_fix_success",
        "v_ttr_days",
        "v_env_diversity",
        "v_recent_activity",
        "v_fix_ranking",
    ):
        preview.run_sql(as_grafana, f"select * from devdiag.{view} limit 1")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        preview.run_sql(as_grafana, "select * from devdiag.diag_run limit 1")


@pytest.mark.slow
def test_variable_queries_list_tenants_and_environments(as_grafana: psycopg.Connection, board: dict[str, Any]) -> None:
    resolved = selections(as_grafana, board, timedelta(days=30))
    assert len(resolved["tenant"].options) >= 2
    assert len(resolved["environment"].options) >= 2
    one = resolved["tenant"].options[0]
    chained = selections(as_grafana, board, timedelta(days=30), tenant=(one,))
    assert set(chained["environment"].options) <= set(resolved["environment"].options)


@pytest.mark.slow
@pytest.mark.parametrize("span", SPANS, ids=lambda s: f"last-{s.days or s.seconds // 3600}{'d' if s.days else 'h'}")
def test_every_panel_query_runs_and_fits_its_panel(
    as_grafana: psycopg.Connection, board: dict[str, Any], span: timedelta
) -> None:
    for chosen in ({}, "one"):
        picked = selections(as_grafana, board, span)
        if chosen == "one":
            picked = selections(
                as_grafana,
                board,
                span,
                tenant=(picked["tenant"].options[0],),
                environment=picked["environment"].options[:2],
            )
        results = preview.run_panels(as_grafana, board, macros.TimeRange.last(span), picked)
        assert len(results) == len(board["panels"])
        for result in results:
            assert result.error is None, f"{result.panel['title']}: {result.error}\n{result.sql}"
            assert "$" not in result.sql, f"{result.panel['title']}: unexpanded {result.sql}"
            assert result.frame is not None
            check_shape(result.panel, result.frame)
            if span == timedelta(days=30) and chosen == {}:
                assert result.frame.rows, f"{result.panel['title']} has no data on the demo database"


@pytest.mark.slow
def test_time_range_and_tenant_change_the_answer(as_grafana: psycopg.Connection, board: dict[str, Any]) -> None:
    """The macros are not decoration: a narrower range or one tenant gives fewer findings."""
    panel = next(p for p in board["panels"] if p["title"] == "Top problems: share of findings")
    sql = "select sum(cnt) from devdiag.v_problem_counts where $__timeFilter(day) and " + dashboard.tenant_filter()

    def total(span: timedelta, **chosen: tuple[str, ...]) -> float:
        picked = selections(as_grafana, board, span, **chosen)
        context = macros.QueryContext(macros.TimeRange.last(span), picked, min_interval=panel.get("interval"))
        return float(preview.run_sql(as_grafana, macros.expand(sql, context)).rows[0][0] or 0)

    everything = total(timedelta(days=30))
    assert 0 < total(timedelta(days=3)) < everything
    tenant = selections(as_grafana, board, timedelta(days=30))["tenant"].options[0]
    assert 0 < total(timedelta(days=30), tenant=(tenant,)) < everything


@pytest.mark.slow
def test_runs_and_findings_follows_the_dashboard_range(as_grafana: psycopg.Connection, board: dict[str, Any]) -> None:
    """On the 30-day dashboard the panel spans the 30 days (v_activity_hourly holds 7), per UTC day."""
    panel = next(p for p in board["panels"] if p["title"] == "Runs and findings")

    def series(span: timedelta, **chosen: tuple[str, ...]) -> dict[str, list[tuple[datetime, float | None]]]:
        picked = selections(as_grafana, board, span, **chosen)
        context = macros.QueryContext(macros.TimeRange.last(span), picked, min_interval=panel.get("interval"))
        return time_series(preview.run_sql(as_grafana, macros.expand(panel["targets"][0]["rawSql"], context)))

    now = datetime.now(UTC)
    month = series(timedelta(days=30))
    found = [t for t, v in month["findings"] if v]
    assert min(found) <= now - timedelta(days=25), f"findings start {min(found)}: the range is 30 days"
    assert all(t == t.replace(hour=0, minute=0, second=0, microsecond=0) for t, _ in month["findings"])  # per day
    first_hourly_day = datetime.combine(now.date() - timedelta(days=6), datetime.min.time(), UTC)
    assert all((v is None) == (t < first_hourly_day) for t, v in month["runs"])  # runs where they are counted
    # The daily counts have no environment: with one chosen, the days before the week are left out.
    environment = selections(as_grafana, board, timedelta(days=30))["environment"].options[0]
    one = series(timedelta(days=30), environment=(environment,))
    assert one["findings"] and min(t for t, _ in one["findings"]) >= first_hourly_day
    # Within the week, the hours as before.
    day = series(timedelta(days=3))
    hours = sorted({t for t, _ in day["runs"]})
    assert len(hours) > 48 and min(b - a for a, b in itertools.pairwise(hours)) == timedelta(hours=1)


# --- alerts: query A, reduce B, threshold C ------------------------------------------------------


def grafana_rules() -> list[dict[str, Any]]:
    return alerting.read_provisioning()["groups"][0]["rules"]


def chain_states(conn: psycopg.Connection) -> dict[str, bool]:
    """Fires or not, per rule, as Grafana would decide from the generated rule; cross-checked with devdiag alerts."""
    sources = {r.uid: r for r in alerts.load_rules()}
    states = {}
    for rule in grafana_rules():
        frame = preview.run_sql(conn, rule["data"][0]["model"]["rawSql"])
        fires = alerting.evaluate_chain(rule, frame.columns, frame.rows)
        assert fires == sources[rule["uid"]].fires(float(frame.rows[0][0])), rule["uid"]
        states[rule["labels"]["alert"]] = fires
    return states


def test_chain_replays_reduce_and_threshold() -> None:
    rule = grafana_rules()[0]
    threshold = rule["data"][2]["model"]["conditions"][0]["evaluator"]["params"][0]
    assert alerting.evaluate_chain(rule, ["value"], [(threshold + 0.01,)]) is True
    assert alerting.evaluate_chain(rule, ["value"], [(threshold,)]) is False
    with pytest.raises(alerting.ChainError):
        alerting.evaluate_chain(rule, ["value"], [])
    with pytest.raises(alerting.ChainError):
        alerting.evaluate_chain(rule, ["value"], [(None,)])


@pytest.mark.slow
def test_alerts_are_normal_on_the_demo_data(as_grafana: psycopg.Connection) -> None:
    assert chain_states(as_grafana) == dict.fromkeys(
        ["top_problem_dominates", "runs_stalled", "ttr_regression", "confidence_drop", "high_diversity"], False
    )


@pytest.fixture(scope="module")
def scenario_db(pg: ConnectionSettings) -> Iterator[ConnectionSettings]:
    """A database of its own for the alert scenarios of test_alerts.py (the demo database keeps its history)."""
    from orchestrator.provision import setup

    name = f"devdiag_grafana_{uuid.uuid4().hex[:8]}"
    with connect(pg) as conn:
        conn.execute(f'create database "{name}"')
    target = ConnectionSettings({**pg.params, "dbname": name}, embedded=True)
    setup(target)
    try:
        yield target
    finally:
        with connect(pg) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def grafana_states(target: ConnectionSettings) -> dict[str, bool]:
    reader = ConnectionSettings({**grafana_settings().params, "dbname": target.dbname}, embedded=True)
    with connect(reader) as conn:
        return chain_states(conn)


@pytest.mark.slow
def test_each_alert_fires_on_its_scenario_and_none_on_healthy_data(scenario_db: ConnectionSettings) -> None:
    """The scenarios `devdiag alerts` is tested with (test_alerts.py), judged by the Grafana rules' chains."""
    from test_alerts import SCENARIOS, healthy_week, load

    now = datetime.now(UTC)
    load(scenario_db, healthy_week(now))
    healthy = grafana_states(scenario_db)
    assert not any(healthy.values()), healthy
    assert set(SCENARIOS) == set(healthy)
    for alert, scenario in SCENARIOS.items():
        load(scenario_db, scenario(now))
        states = grafana_states(scenario_db)
        assert {name for name, fires in states.items() if fires} == {alert}, f"{alert}'s scenario: {states}"
