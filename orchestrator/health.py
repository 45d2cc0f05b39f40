"""The runbook's Morning Health Check, run as dbt tests.

Each check is one row of the ``health_checks`` model (the value measured now, its threshold and
severity) and one dbt test tagged ``health`` with that severity; data freshness is dbt's own
``source freshness`` on ``diag_run`` (warn after 2 h, error after 6 h). The status of a check comes
from its dbt result (pass / warn / fail-or-error), never from re-judging the value here; the
value, threshold and detail are read back from ``health_checks`` for the report. Units: rows,
hours (data_freshness), average confidence, views, indexes, days (retention_days), problems.

The dbt calls run with ``DEVDIAG_DBT_OBSERVE_ONLY=1``: the project's on-run-start hook skips the
raw-schema DDL then, so that a health run observes a missing index instead of quietly recreating it
(see dbt_project.yml). A plain ``dbt build`` leaves the health tests out (selectors.yml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import click

from devdiag_db.config import SCHEMA, ConnectionSettings
from devdiag_db.db import connect
from orchestrator import dbt

# `devdiag health` and `devdiag alerts` check the database, so they must see it down: they start a
# stopped embedded server only when asked.
START_DB = click.option(
    "--start-db", is_flag=True, help="Start the embedded PostgreSQL if it is stopped (default: report it, exit 1)."
)

Status = Literal["pass", "warn", "fail"]
Severity = Literal["error", "warn"]

#: The checks in report order: name, dbt test (None: decided by `dbt source freshness`), severity
#: (the runbook's critical -> error, warning -> warn; the dbt tests and health_checks agree, tested).
CHECKS: tuple[tuple[str, str | None, Severity], ...] = (
    ("new_rows_today", "health_new_rows_today", "error"),
    ("data_freshness", None, "error"),
    ("fix_confidence_30d", "health_fix_confidence_30d", "warn"),
    ("views_present", "health_views_present", "error"),
    ("indexes_present", "health_indexes_present", "error"),
    ("retention_days", "health_retention_days", "warn"),
    ("problem_diversity_today", "health_problem_diversity_today", "warn"),
)
FRESHNESS_SOURCE = "source:devdiag.diag_run"
OBSERVE_ONLY_ENV = "DEVDIAG_DBT_OBSERVE_ONLY"


@dataclass(frozen=True)
class HealthCheck:
    name: str
    value: float | None
    threshold: str
    status: Status
    severity: Severity
    message: str


@dataclass(frozen=True)
class _Measurement:
    value: float | None
    unit: str
    threshold: str
    detail: str | None


def run_health(settings: ConnectionSettings) -> list[HealthCheck]:
    """Run every health check; one result per check in ``CHECKS`` order.

    Raises ``click.ClickException`` only when dbt itself cannot run (no database, broken project);
    a failing check is a result with status ``fail``, and the other checks still report.
    """
    observe = {OBSERVE_ONLY_ENV: "1"}
    tests = {r.name: r for r in dbt.invoke(settings, ["build", "--select", "tag:health"], env=observe)}
    freshness = next(
        (
            r
            for r in dbt.invoke(settings, ["source", "freshness", "--select", FRESHNESS_SOURCE], env=observe)
            if r.resource_type == "source"
        ),
        None,
    )
    measured = _measurements(settings)
    report = []
    for name, test_name, severity in CHECKS:
        result = freshness if test_name is None else tests.get(test_name)
        m = measured.get(name)
        if result is None:
            status: Status = "fail"
            outcome = "no dbt result (was the check selected?)"
        else:
            status = _status(result.status)
            outcome = _outcome(result)
        report.append(
            HealthCheck(
                name=name,
                value=m.value if m else None,
                threshold=m.threshold if m else "",
                status=status,
                severity=severity,
                message=_message(name, m, outcome),
            )
        )
    return report


def _status(dbt_status: str) -> Status:
    """pass / warn as dbt says; fail, error, runtime error and skipped all fail the check."""
    if dbt_status in {"pass", "success"}:
        return "pass"
    if dbt_status == "warn":
        return "warn"
    return "fail"


def _outcome(result: dbt.NodeResult) -> str:
    """Nothing for a pass; the dbt status otherwise, with dbt's message when dbt could not decide."""
    if result.status in {"pass", "success"}:
        return ""
    if result.status in {"warn", "fail"}:
        return f"dbt: {result.status}"
    return f"dbt: {result.status}: {result.message or 'no message'}"


def _message(name: str, m: _Measurement | None, outcome: str) -> str:
    if m is None:
        text = f"{name}: not measured (the health_checks model did not build)"
    else:
        value = "n/a" if m.value is None else f"{m.value:.2f}".rstrip("0").rstrip(".")
        text = f"{name}: {value} {m.unit} (threshold {m.threshold})"
        if m.detail:
            text += f"; {m.detail}"
    return f"{text}; {outcome}" if outcome else text


def _measurements(settings: ConnectionSettings) -> dict[str, _Measurement]:
    """The values behind the verdicts, read from the health_checks view (empty if it is missing)."""
    import psycopg

    try:
        with connect(settings) as conn:
            rows = conn.execute(
                f"select check_name, value, unit, threshold, detail from {SCHEMA}.health_checks"
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    return {name: _Measurement(value, unit, threshold, detail) for name, value, unit, threshold, detail in rows}
