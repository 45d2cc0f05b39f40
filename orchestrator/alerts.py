"""`devdiag alerts`: the runbook's five alert conditions, evaluated now.

The rules live in ``alert_rules.yaml`` beside this module, the single source of truth: Grafana's
provisioned alert rules are generated from the same file, so both evaluate the same SQL. Each
rule's SQL returns one row with one numeric column ``value``, read only from the public views.

Evaluation runs each rule in a read-only transaction as role ``grafana`` when the connecting role
may ``SET ROLE grafana`` (the owner can), so a rule that would fail in Grafana fails here too;
otherwise as the connecting role. Exit status: 0 all normal, 1 when any rule fires (or on error).
"""

from __future__ import annotations

import re
import sys
from dataclasses import asdict, dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, Literal

import click
import psycopg
import yaml

from devdiag_db.config import ConnectionSettings
from devdiag_db.db import DatabaseUnavailable, connect
from orchestrator.contract import PUBLIC_VIEWS
from orchestrator.health import START_DB

RULES_FILE = Path(__file__).with_name("alert_rules.yaml")
GRAFANA_ROLE = "grafana"
STATEMENT_TIMEOUT_MS = 30_000
REQUIRED = (
    "name",
    "uid",
    "title",
    "severity",
    "sql",
    "operator",
    "threshold",
    "pending_for",
    "keep_firing_for",
    "summary",
    "description",
    "runbook_url",
)
SEVERITIES = ("critical", "warning")
OPERATORS = ("gt", "lt")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_UID = re.compile(r"^[a-zA-Z0-9-]{1,40}$")  # Grafana rule uids: up to 40 letters, digits and dashes
_DURATION = re.compile(r"^\d+[smhd]$")
_IN_SCHEMA = re.compile(r"\bdevdiag\s*\.\s*\"?([a-z_]\w*)", re.IGNORECASE)
_FORBIDDEN = re.compile(r"\b(diag_run|pg_\w+|information_schema)\b", re.IGNORECASE)

State = Literal["firing", "normal"]


@dataclass(frozen=True)
class AlertRule:
    name: str
    uid: str
    title: str
    severity: str
    sql: str
    operator: str
    threshold: float
    pending_for: str
    keep_firing_for: str
    summary: str
    description: str
    runbook_url: str

    def fires(self, value: float) -> bool:
        return value > self.threshold if self.operator == "gt" else value < self.threshold


@dataclass(frozen=True)
class AlertResult:
    name: str
    state: State
    value: float
    threshold: float
    operator: str
    severity: str


class RuleError(click.ClickException):
    """alert_rules.yaml is malformed; the message names the rule and the field."""


# --- rules ----------------------------------------------------------------------------------------


@cache
def load_rules(path: Path = RULES_FILE) -> tuple[AlertRule, ...]:
    """The rules of ``path``, validated; raises RuleError with a one-line reason."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise RuleError(f"cannot read alert rules {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list) or not data["rules"]:
        raise RuleError(f"{path}: expected a non-empty `rules:` list")
    rules = tuple(_rule(entry, i, path) for i, entry in enumerate(data["rules"]))
    for key in ("name", "uid"):
        seen = [getattr(r, key) for r in rules]
        duplicates = sorted({v for v in seen if seen.count(v) > 1})
        if duplicates:
            raise RuleError(f"{path}: duplicate rule {key} {', '.join(duplicates)}")
    return rules


def _rule(entry: Any, index: int, path: Path) -> AlertRule:
    label = entry.get("name", f"#{index + 1}") if isinstance(entry, dict) else f"#{index + 1}"

    def bad(reason: str) -> RuleError:
        return RuleError(f"{path}: rule {label}: {reason}")

    if not isinstance(entry, dict):
        raise bad("expected a mapping")
    missing = [k for k in REQUIRED if entry.get(k) in (None, "")]
    unknown = sorted(set(entry) - set(REQUIRED))
    if missing or unknown:
        raise bad("; ".join(filter(None, [_listed("missing", missing), _listed("unknown", unknown)])))
    threshold = entry["threshold"]
    checks = [
        (_NAME.match(str(entry["name"])), "name must be snake_case"),
        (_UID.match(str(entry["uid"])), "uid must be up to 40 letters, digits and dashes"),
        (entry["severity"] in SEVERITIES, f"severity must be one of {', '.join(SEVERITIES)}"),
        (entry["operator"] in OPERATORS, f"operator must be one of {', '.join(OPERATORS)}"),
        (isinstance(threshold, int | float) and not isinstance(threshold, bool), "threshold must be a number"),
        (_DURATION.match(str(entry["pending_for"])), "pending_for must be a duration like 5m"),
        (_DURATION.match(str(entry["keep_firing_for"])), "keep_firing_for must be a duration like 10m"),
        (str(entry["runbook_url"]).startswith("docs/operations.md#"), "runbook_url must point into docs/operations.md"),
    ]
    for ok, reason in checks:
        if not ok:
            raise bad(reason)
    sql_problem = _sql_problem(str(entry["sql"]))
    if sql_problem:
        raise bad(sql_problem)
    return AlertRule(**{k: str(entry[k]) for k in REQUIRED if k != "threshold"}, threshold=float(threshold))


def _listed(what: str, keys: list[str]) -> str:
    return f"{what} {', '.join(keys)}" if keys else ""


def _sql_problem(sql: str) -> str | None:
    """What breaks the SQL contract (one statement, public views only, no Grafana macros), if anything."""
    if ";" in sql.strip().rstrip(";"):
        return "sql must be a single statement"
    if "$__" in sql:
        return "sql must be plain SQL, without Grafana macros"
    if not re.search(r"\bas\s+value\b", sql, re.IGNORECASE):
        return "sql must name its result column `value`"
    # Grafana's role can read nothing else; the test that runs each rule as grafana is the proof,
    # this catches the mistake early with a readable message.
    forbidden = _FORBIDDEN.search(sql)
    if forbidden:
        return f"sql reads {forbidden.group(0)}: only the public views devdiag.v_* are allowed (Grafana reads those)"
    relations = [name.lower() for name in _IN_SCHEMA.findall(sql)]
    others = [f"devdiag.{name}" for name in relations if name not in PUBLIC_VIEWS]
    if others or not relations:
        found = ", ".join(others) or "no devdiag.v_* view"
        return f"sql must read the public views devdiag.v_*, qualified by schema (found {found})"
    return None


# --- evaluation -----------------------------------------------------------------------------------


def evaluate(settings: ConnectionSettings, rules: tuple[AlertRule, ...] | None = None) -> list[AlertResult]:
    """Evaluate every rule now; raises DatabaseUnavailable or click.ClickException with a one-line reason."""
    rules = load_rules() if rules is None else rules
    with connect(settings) as conn:
        as_grafana = _can_become_grafana(conn)
        return [_evaluate_one(conn, rule, as_grafana) for rule in rules]


def _can_become_grafana(conn: psycopg.Connection) -> bool:
    """Whether this login may act as role grafana (the owner may; a plain login may not)."""
    try:
        with conn.transaction():
            conn.execute(f"set local role {GRAFANA_ROLE}")
    except psycopg.OperationalError as error:
        raise DatabaseUnavailable(f"cannot evaluate the alerts: {_first_line(error)}") from None
    except psycopg.Error:
        return False
    return True


def _evaluate_one(conn: psycopg.Connection, rule: AlertRule, as_grafana: bool) -> AlertResult:
    value = run_rule_sql(conn, rule, as_grafana=as_grafana)
    return AlertResult(
        name=rule.name,
        state="firing" if rule.fires(value) else "normal",
        value=value,
        threshold=rule.threshold,
        operator=rule.operator,
        severity=rule.severity,
    )


def run_rule_sql(conn: psycopg.Connection, rule: AlertRule, *, as_grafana: bool = False) -> float:
    """The rule's value, in a read-only transaction (as role grafana when asked); checks the contract."""
    try:
        with conn.transaction():
            conn.execute("set transaction read only")
            conn.execute(f"set local statement_timeout = {STATEMENT_TIMEOUT_MS}")
            if as_grafana:
                conn.execute(f"set local role {GRAFANA_ROLE}")
            cur = conn.execute(rule.sql)
            rows = cur.fetchall()
            columns = [c.name for c in cur.description or []]
    except psycopg.errors.UndefinedTable as error:
        raise click.ClickException(
            f"alert {rule.name}: {_first_line(error)}: build the views with `devdiag build`"
        ) from None
    except psycopg.OperationalError as error:
        raise DatabaseUnavailable(f"alert {rule.name}: {_first_line(error)}") from None
    except psycopg.Error as error:
        raise click.ClickException(f"alert {rule.name}: {_first_line(error)}") from None
    if columns != ["value"] or len(rows) != 1 or not _is_number(rows[0][0]):
        raise click.ClickException(
            f"alert {rule.name}: its sql must return one row with one number named value, "
            f"got {len(rows)} row(s) of {columns}"
        )
    return float(rows[0][0])


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- command --------------------------------------------------------------------------------------


def _format_number(value: float) -> str:
    return f"{value:,.3f}".rstrip("0").rstrip(".")


def _print_table(results: list[AlertResult]) -> None:
    symbols = {"gt": ">", "lt": "<"}
    width = max(len(r.name) for r in results)
    click.echo(f"{'alert':{width}}  {'severity':8}  {'value':>12}  {'fires when':<12}  state")
    for r in results:
        condition = f"{symbols[r.operator]} {_format_number(r.threshold)}"
        state = "FIRING" if r.state == "firing" else "normal"
        click.echo(f"{r.name:{width}}  {r.severity:8}  {_format_number(r.value):>12}  {condition:<12}  {state}")


@click.command("alerts")
@click.option("--json", "as_json", is_flag=True, help="Print one object per alert: name, state, value, threshold.")
@START_DB
def alerts(as_json: bool, start_db: bool) -> None:
    """Evaluate the runbook's five alerts now: firing or normal, with value and threshold.

    The SQL is orchestrator/alert_rules.yaml, the same that Grafana's alert rules run. Exit 0 when
    all are normal, 1 when any fires (or when they cannot be evaluated, a stopped embedded database
    included: it is not started unless --start-db).
    """
    import json

    from devdiag_db.config import settings

    try:
        results = evaluate(settings(start=start_db))
    except DatabaseUnavailable as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps([asdict(r) for r in results], indent=2))
    else:
        _print_table(results)
    sys.exit(1 if any(r.state == "firing" for r in results) else 0)
