"""`devdiag alerts` and orchestrator/alert_rules.yaml: each alert fires on a scenario built for it and
only then; all five are normal on the demo data; every rule's SQL runs as role grafana; faults.

Scenarios run in a database of their own (the shared demo database keeps its history): a small,
healthy week of runs, then one change per scenario, then `dbt run` so the views see it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import psycopg
import pytest
from click.testing import CliRunner
from conftest import own_database
from psycopg import sql

from devdiag_db import embedded
from devdiag_db.config import ConnectionSettings
from orchestrator import alerts as alerts_module
from orchestrator import dbt
from orchestrator.alerts import AlertRule, RuleError, evaluate, load_rules, run_rule_sql
from orchestrator.secrets import role_password

DB = "devdiag_alerts_test"
REPO = Path(__file__).resolve().parents[2]
NAMES = ("top_problem_dominates", "runs_stalled", "ttr_regression", "confidence_drop", "high_diversity")
BASE_CODES = tuple(f"BASE_{i}" for i in range(8))


# --- scenario data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    run_id: uuid.UUID
    ts: datetime
    problem_code: str | None = None
    fix_suggestion: str | None = None
    confidence: float | None = None
    resolution: str | None = None
    resolved_at: datetime | None = None
    tenant_id: str = "acme"


def healthy_week(now: datetime, *, resolve_after: timedelta = timedelta(hours=2), confidence: float = 0.85):
    """A run every 2 hours over the last ~7 days and one 10 minutes ago; every third run finds one
    of 8 problems (each about 4% of the runs), gets a fix suggested and fixed `resolve_after` later."""
    findings = []
    start = now - timedelta(days=6, hours=22)
    times = [start + timedelta(hours=2 * i) for i in range(83)] + [now - timedelta(minutes=10)]
    for i, ts in enumerate(times):
        run_id = uuid.uuid4()
        if i % 3:
            findings.append(Finding(run_id, ts))
            continue
        code = BASE_CODES[(i // 3) % len(BASE_CODES)]
        done = ts + resolve_after
        findings.append(
            Finding(
                run_id,
                ts,
                code,
                f"fix-{code.lower()}",
                confidence,
                "fixed" if done <= now else None,
                done if done <= now else None,
            )
        )
    return findings


def runs(findings: list[Finding]) -> dict[uuid.UUID, datetime]:
    return {f.run_id: f.ts for f in findings}


def today_times(now: datetime, count: int) -> list[datetime]:
    """`count` distinct moments between today's UTC midnight and now."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return [midnight + (now - midnight) * (k / (count + 1)) for k in range(1, count + 1)]


def codes_today(findings: list[Finding], now: datetime) -> set[str]:
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return {f.problem_code for f in findings if f.problem_code and f.ts >= midnight}


def with_dominant_problem(now: datetime) -> list[Finding]:
    """3 runs in 10 also report HOT: 30% of the runs."""
    base = healthy_week(now)
    hot = [
        Finding(run_id, ts, "HOT", "fix-hot", 0.85)
        for n, (run_id, ts) in enumerate(sorted(runs(base).items(), key=lambda r: r[1]))
        if n % 10 in (1, 4, 7)
    ]
    return base + hot


def stalled(now: datetime) -> list[Finding]:
    """The healthy week, 3 hours earlier: the newest run is 3 h 10 min old."""
    shift = timedelta(hours=3)
    return [
        replace(f, ts=f.ts - shift, resolved_at=f.resolved_at - shift if f.resolved_at else None)
        for f in healthy_week(now)
    ]


def slow_resolutions(now: datetime) -> list[Finding]:
    """Every problem takes 3 days to fix; one team per run, so that each sighting is an episode of its own."""
    return [replace(f, tenant_id=f"team-{n}") for n, f in enumerate(healthy_week(now, resolve_after=timedelta(days=3)))]


def low_confidence(now: datetime) -> list[Finding]:
    return healthy_week(now, confidence=0.5)


def diverse_day(now: datetime, distinct_today: int = 11) -> list[Finding]:
    """Today sees `distinct_today` distinct problems in all (new runs, one new problem each)."""
    base = healthy_week(now)
    missing = distinct_today - len(codes_today(base, now))
    extra = [Finding(uuid.uuid4(), ts, f"NEW_{k}") for k, ts in enumerate(today_times(now, missing))]
    return base + extra


SCENARIOS: dict[str, Callable[[datetime], list[Finding]]] = {
    "top_problem_dominates": with_dominant_problem,
    "runs_stalled": stalled,
    "ttr_regression": slow_resolutions,
    "confidence_drop": low_confidence,
    "high_diversity": diverse_day,
}


# --- the scenario database ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adb(pg) -> Iterator[ConnectionSettings]:
    """A database of its own with the raw schema and every view built."""
    with own_database(pg, DB) as target:
        yield target


def load(target: ConnectionSettings, findings: list[Finding]) -> None:
    """Replace the raw rows with `findings` and rebuild the models the views read."""
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        conn.execute("truncate devdiag.diag_run")
        with conn.cursor().copy(
            "copy devdiag.diag_run (id, run_id, ts, tenant_id, environment, problem_code, fix_suggestion, "
            "confidence, resolution, resolved_at) from stdin"
        ) as copy:
            for f in findings:
                copy.write_row(
                    (
                        uuid.uuid4(),
                        f.run_id,
                        f.ts,
                        f.tenant_id,
                        "linux/python-3.12",
                        f.problem_code,
                        f.fix_suggestion,
                        f.confidence,
                        f.resolution,
                        f.resolved_at,
                    )
                )
    # a full refresh: the raw table was truncated, and incremental builds do not see deletes
    results = dbt.invoke(target, ["run", "--full-refresh"])
    broken = [f"{r.name}: {r.message}" for r in results if r.status not in {"success", "pass"}]
    assert not broken, broken


def states(target: ConnectionSettings) -> dict[str, alerts_module.AlertResult]:
    return {r.name: r for r in evaluate(target)}


def devdiag_alerts(target: ConnectionSettings, *args: str):
    return CliRunner().invoke(alerts_module.alerts, list(args), env={"DEVDIAG_PG_DSN": target.conninfo()})


# --- the rules file -------------------------------------------------------------------------------


def test_the_rules_are_the_runbooks_five_alerts():
    rules = {r.name: r for r in load_rules()}
    assert tuple(rules) == NAMES
    expected = {
        # name: (severity, operator, threshold, keep_firing_for = the runbook's auto-resolve)
        "top_problem_dominates": ("warning", "gt", 0.2, "10m"),
        "runs_stalled": ("critical", "gt", 7200, "0s"),
        "ttr_regression": ("warning", "gt", 2, "30m"),
        "confidence_drop": ("warning", "lt", 0.7, "30m"),
        "high_diversity": ("warning", "gt", 10, "15m"),
    }
    for name, (severity, operator, threshold, keep) in expected.items():
        rule = rules[name]
        assert (rule.severity, rule.operator, rule.threshold, rule.keep_firing_for) == (
            severity,
            operator,
            threshold,
            keep,
        ), name
        assert rule.uid == "devdiag-" + name.replace("_", "-")


def test_each_rule_links_to_a_section_of_the_operations_runbook():
    docs = REPO / "docs"
    text = (docs / "operations.md").read_text()
    if (docs / "_alerts_section.md").exists():  # not merged into operations.md yet
        text += (docs / "_alerts_section.md").read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+\s+(.*)$", text, flags=re.MULTILINE)}
    for rule in load_rules():
        assert rule.runbook_url.split("#", 1)[1] in anchors, rule.runbook_url


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


BAD_RULES = {
    "missing": ("    threshold: 0.2\n", "", "missing threshold"),
    "operator": ("operator: gt", "operator: ge", "operator must be one of"),
    "raw table": ("from devdiag.v_activity_hourly", "from devdiag.diag_run", "diag_run"),
    "not a public view": ("from devdiag.v_ttr_days", "from devdiag.int_problem_episodes", "int_problem_episodes"),
    "catalog": ("from devdiag.v_problem_counts", "from pg_catalog.pg_class", "pg_catalog"),
    "macro": ("from now() - max(last_ts)", "from $__timeTo() - max(last_ts)", "Grafana macros"),
    "two statements": ("as value", "as value; select 1", "single statement"),
    "not value": ("as value", "as val", "result column `value`"),
    "duration": ("pending_for: 5m", "pending_for: five", "pending_for"),
}


@pytest.mark.parametrize("case", BAD_RULES, ids=list(BAD_RULES))
def test_a_broken_rules_file_is_refused_with_one_line(tmp_path, case):
    old, new, reason = BAD_RULES[case]
    text = alerts_module.RULES_FILE.read_text()
    assert old in text
    path = tmp_path / "rules.yaml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    message = caught.value.format_message()
    assert reason in message and "\n" not in message


def test_duplicate_names_are_refused(tmp_path):
    text = alerts_module.RULES_FILE.read_text()
    path = tmp_path / "rules.yaml"
    path.write_text(text.replace("name: runs_stalled", "name: top_problem_dominates"))
    with pytest.raises(RuleError, match="duplicate rule name top_problem_dominates"):
        load_rules(path)


# --- grafana --------------------------------------------------------------------------------------


def grafana_settings(dbname: str = "devdiag") -> ConnectionSettings:
    base = embedded.tcp_settings("grafana", role_password("grafana"))
    return ConnectionSettings({**base.params, "dbname": dbname}, embedded=True)


def test_every_rule_sql_runs_as_role_grafana(demo_db):
    with psycopg.connect(grafana_settings().conninfo(), autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "grafana"
        for rule in load_rules():
            cur = conn.execute(rule.sql)
            rows = cur.fetchall()
            assert [c.name for c in cur.description] == ["value"], rule.name
            assert len(rows) == 1 and isinstance(rows[0][0], float), (rule.name, rows)
        # The proof means something: grafana cannot read the raw table.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select 1 from devdiag.diag_run limit 1")


def test_evaluation_runs_as_grafana_when_the_login_may(demo_db):
    """A rule the grafana role could not run fails in `devdiag alerts` too, not only in Grafana."""
    sneaky = replace(load_rules()[0], name="sneaky", sql="select count(*)::float8 as value from devdiag.diag_run")
    with pytest.raises(click.ClickException, match="permission denied"):
        evaluate(demo_db, (sneaky,))
    with psycopg.connect(demo_db.conninfo(), autocommit=True) as conn:  # as the owner it would pass
        assert run_rule_sql(conn, sneaky) > 0


# --- the demo data --------------------------------------------------------------------------------


def test_all_five_are_normal_on_the_demo_data_and_measure_something(demo_db):
    results = states(demo_db)
    assert {n: r.state for n, r in results.items()} == dict.fromkeys(NAMES, "normal")
    values = {n: r.value for n, r in results.items()}
    # Real readings, not the fallbacks of an empty window: these alerts could fire on this data.
    assert 0.02 < values["top_problem_dominates"] < 0.2
    assert 0 < values["runs_stalled"] < 7200
    assert 0 < values["ttr_regression"] < 2
    assert 0.7 < values["confidence_drop"] < 1
    assert 1 <= values["high_diversity"] <= 10


def test_cli_json_shape_and_exit_zero_when_all_normal(demo_db):
    result = CliRunner().invoke(alerts_module.alerts, ["--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert [a["name"] for a in payload] == list(NAMES)
    for alert in payload:
        assert {"name", "state", "value", "threshold"} <= set(alert)
        assert alert["state"] in {"firing", "normal"}
        assert isinstance(alert["value"], float) and isinstance(alert["threshold"], float)


def test_cli_table_for_people(demo_db):
    result = CliRunner().invoke(alerts_module.alerts, [])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["alert", "severity", "value", "fires", "when", "state"]
    assert [line.split()[0] for line in lines[1:]] == list(NAMES)
    assert all(line.endswith("normal") for line in lines[1:])


# --- scenarios ------------------------------------------------------------------------------------


def test_a_healthy_week_is_all_normal(adb):
    load(adb, healthy_week(datetime.now(UTC)))
    results = states(adb)
    assert {n: r.state for n, r in results.items()} == dict.fromkeys(NAMES, "normal")


@pytest.mark.parametrize("name", NAMES)
def test_each_alert_fires_on_its_scenario_and_only_it(adb, name):
    now = datetime.now(UTC)
    findings = SCENARIOS[name](now)
    load(adb, findings)
    results = states(adb)
    assert {n for n, r in results.items() if r.state == "firing"} == {name}, results
    if name == "top_problem_dominates":  # share of distinct runs, clean runs counted
        hot_runs = {f.run_id for f in findings if f.problem_code == "HOT"}
        assert results[name].value == pytest.approx(len(hot_runs) / len(runs(findings)))
    if name == "high_diversity":
        assert results[name].value == len(codes_today(findings, now)) == 11


def test_the_cli_exits_1_and_says_firing(adb):
    load(adb, low_confidence(datetime.now(UTC)))
    result = devdiag_alerts(adb, "--json")
    assert result.exit_code == 1, result.output
    firing = [a["name"] for a in json.loads(result.output) if a["state"] == "firing"]
    assert firing == ["confidence_drop"]
    table = devdiag_alerts(adb)
    assert table.exit_code == 1 and "FIRING" in table.output


def test_no_run_in_seven_days_is_stalled_and_nothing_else(adb):
    week = healthy_week(datetime.now(UTC))
    old = [replace(f, ts=f.ts - timedelta(days=10), resolution=None, resolved_at=None) for f in week]
    for findings in (old, []):
        load(adb, findings)
        results = states(adb)
        assert {n for n, r in results.items() if r.state == "firing"} == {"runs_stalled"}
        assert results["runs_stalled"].value == 7 * 86400
        # Nothing to judge is not an alarm: no problem share, no TTR, no confidence, no problems today.
        assert [results[n].value for n in NAMES if n != "runs_stalled"] == [0, 0, 1, 0]


def test_clean_runs_only_is_all_normal(adb):
    clean = [Finding(f.run_id, f.ts) for f in healthy_week(datetime.now(UTC))]
    load(adb, clean)
    assert {r.state for r in evaluate(adb)} == {"normal"}


def test_ten_problems_today_is_not_high_diversity(adb):
    now = datetime.now(UTC)
    load(adb, diverse_day(now, distinct_today=10))
    result = states(adb)["high_diversity"]
    assert (result.value, result.state) == (10, "normal")


# --- faults ---------------------------------------------------------------------------------------


def test_a_database_that_is_down_gives_one_line_and_exit_1():
    result = CliRunner().invoke(
        alerts_module.alerts, ["--json"], env={"DEVDIAG_PG_DSN": "postgresql://owner@127.0.0.1:9/devdiag"}
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert "not reachable" in result.output


def test_a_wrong_password_is_named_and_never_printed(pg):
    wrong = ConnectionSettings({**grafana_settings().params, "password": "not-the-password-42"})
    result = CliRunner().invoke(alerts_module.alerts, [], env={"DEVDIAG_PG_DSN": wrong.conninfo()})
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "refused the credentials" in result.output
    assert "not-the-password-42" not in result.output


def test_views_not_built_says_to_build(pg):
    name = "devdiag_alerts_unbuilt"
    with psycopg.connect(pg.conninfo(dbname="postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        target = ConnectionSettings({**pg.params, "dbname": name}, embedded=True)
        result = devdiag_alerts(target)
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
        assert "devdiag build" in result.output
    finally:
        with psycopg.connect(pg.conninfo(dbname="postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def test_rule_dataclass_decides_by_operator():
    rule = AlertRule(**{**load_rules()[0].__dict__, "operator": "lt", "threshold": 0.7})
    assert rule.fires(0.69) and not rule.fires(0.7)
    assert load_rules()[0].fires(0.21) and not load_rules()[0].fires(0.2)
