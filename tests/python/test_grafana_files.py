"""The files under grafana/: generated ones equal their source, uids unique, references resolve, no secrets.

No database and no Grafana: these read the committed files as Grafana's provisioning would.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from devdiag_db.config import project_dir
from orchestrator import alerts
from orchestrator.grafana import (
    ALERT_FOLDER_TITLE,
    DASHBOARD_TITLE,
    DASHBOARD_UID,
    DATASOURCE_TYPE,
    DATASOURCE_UID,
    PUBLIC_VIEWS,
    alerting,
    dashboard,
    files,
    grafana_dir,
)

RELATION = re.compile(r"\b(?:from|join)\s+([a-z_]\w*(?:\.[a-z_]\w*)?)\b(?!\s*\()", re.IGNORECASE)
EXTRACT = re.compile(r"\bextract\s*\(\s*\w+\s+from\b", re.IGNORECASE)
TIME_MACROS = ("$__timeFilter(", "$__timeFrom()", "$__timeTo()", "$__timeGroup")
TENANT_VIEWS = {"v_problem_counts", "v_ttr_days", "v_recent_activity", "v_fix_ranking"}
# The runbook's auto-resolve durations ("Close Alert") and severities.
RUNBOOK = {
    "top_problem_dominates": ("warning", "10m"),
    "runs_stalled": ("critical", None),
    "ttr_regression": ("warning", "30m"),
    "confidence_drop": ("warning", "30m"),
    "high_diversity": ("warning", "15m"),
}


def walk(node: Any):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def views_read(sql: str) -> set[str]:
    """Relations after FROM/JOIN that are not CTE names; every one must be devdiag.<public view>."""
    ctes = {m.lower() for m in re.findall(r"\b(\w+)\s*(?:\([^)]*\))?\s+as\s+(?:not\s+materialized\s+)?\(", sql, re.I)}
    relations = {r.lower() for r in RELATION.findall(EXTRACT.sub("extract(", sql))}
    return {r for r in relations if r not in ctes}


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return files.read_dashboard()


@pytest.fixture(scope="module")
def alert_doc() -> dict[str, Any]:
    return alerting.read_provisioning()


def test_generated_files_equal_their_source() -> None:
    stale = [str(p) for p in files.stale_files()]
    assert not stale, f"run `devdiag grafana generate`: {stale}"


def test_every_file_under_grafana_is_known() -> None:
    """Grafana provisions every *.yaml in its folders: the examples must not end in .yaml."""
    root = grafana_dir()
    found = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert found == {
        "dashboards/devdiag-analytics.json",
        "provisioning/datasources/devdiag.yaml",
        "provisioning/dashboards/devdiag.yaml",
        "provisioning/alerting/devdiag-alerts.yaml",
        "provisioning/alerting/contact-points.yaml.example",
        "provisioning/alerting/notification-policies.yaml.example",
    }


def test_no_password_or_token_is_committed() -> None:
    for path in grafana_dir().rglob("*"):
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = re.search(r"(password|token|apikey|api_key|secret)\s*[:=]\s*(\S+)", line, re.IGNORECASE)
            if match and not line.lstrip().startswith("#"):
                assert re.fullmatch(r"[\"']?\$\{?\w+\}?[\"']?", match.group(2)), (
                    f"{path}:{number} holds a literal secret"
                )


def test_datasource_file() -> None:
    definition = files.datasource_definition()
    assert definition["type"] == DATASOURCE_TYPE
    assert definition["uid"] == DATASOURCE_UID
    assert definition["user"] == "grafana"
    assert definition["secureJsonData"] == {"password": "${DEVDIAG_GRAFANA_PASSWORD}"}
    json_data = definition["jsonData"]
    assert json_data["database"] == "devdiag"
    assert json_data["postgresVersion"] == 1600
    assert json_data["timescaledb"] is False
    assert json_data["sslmode"]
    assert "database" not in definition and "password" not in definition  # deprecated top-level fields


def test_datasource_is_interpolated_like_grafana_does() -> None:
    env = {
        "DEVDIAG_PG_HOST": "db.internal:5432",
        "DEVDIAG_GRAFANA_PASSWORD": "s3cr$t",
        "DEVDIAG_GRAFANA_SSLMODE": "require",
    }
    source = files.resolved_datasource(env)
    assert source["url"] == "db.internal:5432"
    assert source["secureJsonData"]["password"] == "s3cr$t"
    assert source["jsonData"]["sslmode"] == "require"
    local = files.resolved_datasource({"DEVDIAG_PG_HOST": "127.0.0.1:5433", "DEVDIAG_GRAFANA_PASSWORD": "x"})
    assert local["jsonData"]["sslmode"] == "disable"


def test_datasource_password_is_never_made_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without DEVDIAG_GRAFANA_PASSWORD and without a kept one, the import asks: a new random one would not match."""
    monkeypatch.setenv("DEVDIAG_HOME", str(tmp_path))
    with pytest.raises(click.ClickException, match="set DEVDIAG_GRAFANA_PASSWORD"):
        files.resolved_datasource({"DEVDIAG_PG_HOST": "db.internal:5432"})
    assert not list(tmp_path.iterdir())


def test_dashboard_provider_file() -> None:
    provider = yaml.safe_load(files.dashboard_provider_file().read_text())["providers"][0]
    assert provider["type"] == "file"
    assert provider["folderUid"] == "devdiag"
    assert provider["options"]["path"]


def test_dashboard_identity_and_panels(board: dict[str, Any]) -> None:
    assert board["uid"] == DASHBOARD_UID
    assert board["title"] == DASHBOARD_TITLE
    assert len(board["panels"]) >= 10, "an empty dashboard is the bug this project must not repeat"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["type"] in ("stat", "timeseries", "barchart", "table")
        assert len(panel["targets"]) == 1 and panel["targets"][0]["rawSql"].strip()
        assert panel["targets"][0]["format"] == ("time_series" if panel["type"] == "timeseries" else "table")


def test_panels_do_not_overlap(board: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_datasource_reference_resolves(board: dict[str, Any], alert_doc: dict[str, Any]) -> None:
    provisioned = {files.datasource_definition()["uid"]: files.datasource_definition()["type"]}
    refs = [n for n in walk(board) if isinstance(n, dict) and isinstance(n.get("datasource"), dict)]
    assert refs
    for node in refs:
        ref = node["datasource"]
        assert provisioned.get(ref["uid"]) == ref["type"], ref
    for rule in alert_doc["groups"][0]["rules"]:
        for query in rule["data"]:
            uid, model_ref = query["datasourceUid"], query["model"]["datasource"]
            assert model_ref["uid"] == uid
            if uid == "__expr__":
                assert model_ref["type"] == "__expr__"
            else:
                assert provisioned.get(uid) == model_ref["type"]


def test_uids_are_unique_and_valid(board: dict[str, Any], alert_doc: dict[str, Any]) -> None:
    uids = [board["uid"], DATASOURCE_UID] + [r["uid"] for r in alert_doc["groups"][0]["rules"]]
    assert len(uids) == len(set(uids))
    for uid in uids:
        assert re.fullmatch(r"[a-zA-Z0-9-]{1,40}", uid), uid


def test_panels_read_only_public_views_and_cover_them_all(board: dict[str, Any]) -> None:
    seen: set[str] = set()
    sqls = [p["targets"][0]["rawSql"] for p in board["panels"]]
    sqls += [v["query"] for v in board["templating"]["list"]]
    for sql in sqls:
        relations = views_read(sql)
        assert relations, sql
        for relation in relations:
            schema, _, name = relation.partition(".")
            assert schema == "devdiag" and name in PUBLIC_VIEWS, f"{relation} is not a public view"
            seen.add(name)
    assert seen == set(PUBLIC_VIEWS)


def test_panels_honour_time_range_and_variables(board: dict[str, Any]) -> None:
    now_only = {p.title for p in dashboard.PANELS if p.now_only}
    assert now_only == {"Health"}
    for panel in board["panels"]:
        sql = panel["targets"][0]["rawSql"]
        if panel["title"] not in now_only:
            assert any(m in sql for m in TIME_MACROS), f"{panel['title']} ignores the time range"
        if panel["type"] == "timeseries":
            assert "$__timeGroupAlias(" in sql and "$__interval" in sql
        views = {r.partition(".")[2] for r in views_read(sql)}
        if views & TENANT_VIEWS and panel["title"] not in now_only and views != {"v_env_diversity"}:
            assert "$tenant" in sql, f"{panel['title']} ignores the tenant variable"
        if "v_recent_activity" in views and panel["title"] not in now_only:
            assert "$environment" in sql


def test_variables(board: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"tenant", "environment"}
    for variable in variables.values():
        assert variable["type"] == "query" and variable["multi"] and variable["includeAll"]
        assert variable["allValue"] == dashboard.ALL_VALUE
        assert variable["datasource"]["uid"] == DATASOURCE_UID
    assert "$tenant" in variables["environment"]["query"]  # chained: environments of the chosen tenants


def test_alert_file_holds_the_five_rules_of_alert_rules_yaml(alert_doc: dict[str, Any]) -> None:
    rules = alerts.load_rules()
    groups = alert_doc["groups"]
    assert alert_doc["apiVersion"] == 1 and len(groups) == 1
    assert groups[0]["folder"] == ALERT_FOLDER_TITLE == "devdiag-alerts"
    generated = groups[0]["rules"]
    assert [r["uid"] for r in generated] == [r.uid for r in rules]
    assert len(generated) == 5
    for source, rule in zip(rules, generated, strict=True):
        assert rule["title"] == source.title
        assert rule["condition"] == "C"
        assert [q["refId"] for q in rule["data"]] == ["A", "B", "C"]
        assert rule["data"][0]["model"]["rawSql"] == source.sql.strip()  # the very SQL `devdiag alerts` runs
        assert rule["data"][0]["relativeTimeRange"]["from"] > 0
        evaluator = rule["data"][2]["model"]["conditions"][0]["evaluator"]
        assert evaluator == {"type": source.operator, "params": [source.threshold]}
        assert rule["for"] == source.pending_for and rule["keepFiringFor"] == source.keep_firing_for
        assert rule["labels"]["severity"] == source.severity
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook_url"] == source.runbook_url


def test_alerts_follow_the_runbook(alert_doc: dict[str, Any]) -> None:
    by_name = {r["labels"]["alert"]: r for r in alert_doc["groups"][0]["rules"]}
    assert set(by_name) == set(RUNBOOK)
    for name, (severity, resolve_after) in RUNBOOK.items():
        assert by_name[name]["labels"]["severity"] == severity
        if resolve_after:
            assert by_name[name]["keepFiringFor"] == resolve_after


def test_generator_follows_the_rule_schema(tmp_path: Path) -> None:
    """Against the schema, not the current rules: a sample with both operators and an integer threshold."""
    sample = tmp_path / "rules.yaml"
    common = {
        "severity": "warning",
        "pending_for": "5m",
        "keep_firing_for": "10m",
        "summary": "s",
        "description": "d",
        "runbook_url": "docs/operations.md#x",
    }
    sample.write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {
                        **common,
                        "name": "too_many",
                        "uid": "sample-too-many",
                        "title": "Too many",
                        "operator": "gt",
                        "threshold": 10,
                        "sql": "select count(*)::float8 as value\nfrom devdiag.v_problem_counts",
                    },
                    {
                        **common,
                        "name": "too_low",
                        "uid": "sample-too-low",
                        "title": "Too low",
                        "operator": "lt",
                        "threshold": 0.7,
                        "severity": "critical",
                        "sql": "select coalesce(avg(avg_confidence), 1) as value from devdiag.v_fix_success",
                    },
                ]
            }
        )
    )
    document = yaml.safe_load(alerting.generated_text(sample))
    rules = document["groups"][0]["rules"]
    assert [r["uid"] for r in rules] == ["sample-too-many", "sample-too-low"]
    assert rules[0]["data"][2]["model"]["conditions"][0]["evaluator"] == {"type": "gt", "params": [10]}
    assert rules[1]["data"][2]["model"]["conditions"][0]["evaluator"] == {"type": "lt", "params": [0.7]}
    assert rules[1]["labels"] == {"service": "devdiag", "severity": "critical", "alert": "too_low"}
    assert "$__" not in alerting.generated_text(sample)
    payloads = alerting.api_rules(document)
    assert payloads[0]["folderUID"] == "devdiag-alerts" and payloads[0]["keep_firing_for"] == "10m"
    assert "keepFiringFor" not in payloads[0]


def test_alerting_examples_route_the_rules(alert_doc: dict[str, Any]) -> None:
    folder = grafana_dir() / "provisioning" / "alerting"
    points = yaml.safe_load((folder / "contact-points.yaml.example").read_text())
    policies = yaml.safe_load((folder / "notification-policies.yaml.example").read_text())
    names = {p["name"] for p in points["contactPoints"]}
    route = policies["policies"][0]["routes"][0]
    assert route["receiver"] in names
    matchers = {(k, v) for k, op, v in route["object_matchers"] if op == "="}
    for rule in alert_doc["groups"][0]["rules"]:
        assert all(rule["labels"].get(k) == v for k, v in matchers)


def test_exposure_lists_the_views_the_dashboard_reads(board: dict[str, Any], alert_doc: dict[str, Any]) -> None:
    document = yaml.safe_load((project_dir() / "models" / "marts" / "_exposures.yml").read_text())
    exposures = {e["name"]: e for e in document["exposures"]}

    def refs(name: str) -> set[str]:
        return {re.fullmatch(r"ref\('(\w+)'\)", r).group(1) for r in exposures[name]["depends_on"]}

    panel_views = {r.partition(".")[2] for p in board["panels"] for r in views_read(p["targets"][0]["rawSql"])}
    assert refs("devdiag_analytics_dashboard") == panel_views
    rule_views = {
        r.partition(".")[2]
        for rule in alert_doc["groups"][0]["rules"]
        for r in views_read(rule["data"][0]["model"]["rawSql"])
    }
    assert refs("devdiag_alert_rules") == rule_views
