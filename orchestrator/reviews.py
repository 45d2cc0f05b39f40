"""The runbook's reviews as commands: `devdiag review` (weekly), `devdiag capacity` (quarterly),
`devdiag perf` (monthly database performance review).

Each runs the runbook's SQL (verbatim where it runs as written; `pg_stat_user_indexes` needs its real
column names) and prints readable tables, or one JSON object with ``--json``.

Exit status: `review` and `perf` report and exit 0. `capacity` exits 0 when the database is under
5 GB, 1 over 5 GB (warning), 2 over 10 GB (critical); like every command, 1 with a one-line error
when it cannot measure (no JSON is printed then).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import click
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from devdiag_db.config import ConnectionSettings
from devdiag_db.db import DatabaseUnavailable, Query, connect, is_citus

GIB = 1024**3
CAPACITY_WARNING_BYTES = 5 * GIB
CAPACITY_CRITICAL_BYTES = 10 * GIB
EXIT_BY_STATUS = {"ok": 0, "warning": 1, "critical": 2}
# Tables that `devdiag setup` owns; every other table in the schema is rebuilt by dbt, which resets
# its index statistics at each build.
RAW_TABLES = frozenset({"diag_run", "fix_catalog"})
CELL_WIDTH = 48

Row = dict[str, Any]

# --- the runbook's SQL ----------------------------------------------------------------------------

LEARNING_EFFECTIVENESS = """
SELECT
  COUNT(DISTINCT problem_code) AS problems_with_fixes,
  AVG(avg_confidence) AS overall_confidence,
  SUM(successful_fixes) AS total_successes
FROM devdiag.v_fix_success
"""

TOP_PROBLEMS_7D = """
SELECT problem_code, SUM(cnt) AS total_occurrences
FROM devdiag.v_problem_counts
WHERE day >= CURRENT_DATE - 7
GROUP BY problem_code
ORDER BY total_occurrences DESC LIMIT 10
"""

ENVIRONMENT_DIVERSITY_7D = """
SELECT * FROM devdiag.v_env_diversity
WHERE first_seen >= NOW() - INTERVAL '7 days'
ORDER BY environment_combos DESC LIMIT 10
"""

RECENT_ACTIVITY = "SELECT * FROM devdiag.v_recent_activity LIMIT %(limit)s"

# Not in the runbook: the week in numbers, to read the 50 rows above against.
ACTIVITY_SUMMARY_7D = """
select
    count(distinct run_id) as runs,
    count(distinct run_id) filter (where problem_code is null) as clean_runs,
    -- text that matched no catalog problem: stored as UNRECOGNISED, never a clean run
    count(distinct run_id) filter (where problem_code = 'UNRECOGNISED') as unrecognised_runs,
    count(problem_code) as findings,
    count(distinct problem_code) as distinct_problems,
    count(distinct tenant_id) as tenants,
    count(distinct environment) as environments,
    count(fix_suggestion) as fixes_suggested,
    count(*) filter (where resolution = 'fixed') as fixed,
    count(*) filter (where resolution = 'manual') as manual,
    count(*) filter (where resolution = 'failed') as failed
from devdiag.v_recent_activity
"""

MONTHLY_GROWTH = """
SELECT
  DATE_TRUNC('month', ts) AS month,
  COUNT(*) AS rows_added
FROM devdiag.diag_run
GROUP BY month
ORDER BY month DESC LIMIT 12
"""

# The runbook reads pg_database_size('devdiag'); current_database() is the same unless DEVDIAG_PG_DB
# names another database.
DATABASE_SIZE = "select current_database() as database, pg_database_size(current_database()) as db_size_bytes"
# Its Citus variant: the coordinator holds the distributed tables' shells only; the shards are in
# each worker's database of the same name.
DATABASE_SIZE_CITUS = """
select current_database() as database,
       pg_database_size(current_database())
       + (select coalesce(sum(result::bigint), 0)
          from run_command_on_workers('select pg_database_size(current_database())')
          where success)::bigint as db_size_bytes
"""

# The runbook's retention verification, with the age in fractional days for the extrapolation.
DATA_SPAN = """
SELECT
  MIN(ts) AS oldest_data,
  MAX(ts) AS newest_data,
  EXTRACT(DAY FROM (NOW() - MIN(ts))) AS retention_days,
  EXTRACT(EPOCH FROM (NOW() - MIN(ts))) / 86400 AS data_days
FROM devdiag.diag_run
"""

TABLE_SIZES = """
select
    schemaname || '.' || tablename as table_name,
    pg_total_relation_size(format('%I.%I', schemaname, tablename)) as total_bytes,
    pg_relation_size(format('%I.%I', schemaname, tablename)) as table_bytes,
    pg_indexes_size(format('%I.%I', schemaname, tablename)) as indexes_bytes,
    case when c.reltuples >= 0 then c.reltuples::bigint end as rows_estimate  -- null: never analyzed
from pg_tables
left join pg_class as c on c.oid = format('%I.%I', schemaname, tablename)::regclass
where schemaname = 'devdiag'
order by pg_total_relation_size(format('%I.%I', schemaname, tablename)) desc
"""

# The runbook's index usage query with pg_stat_user_indexes' real column names (relname,
# indexrelname), plus each index's size and whether it enforces uniqueness.
INDEX_USAGE = """
select
    s.schemaname || '.' || s.relname as table_name,
    s.relname as table,
    s.indexrelname as indexname,
    s.idx_scan,
    s.idx_tup_read,
    s.idx_tup_fetch,
    pg_relation_size(s.indexrelid) as index_bytes,
    i.indisunique as is_unique
from pg_stat_user_indexes as s
inner join pg_index as i on i.indexrelid = s.indexrelid
where s.schemaname = 'devdiag'
order by s.idx_scan asc, pg_relation_size(s.indexrelid) desc
"""

STATS_SINCE = "select stats_reset from pg_stat_database where datname = current_database()"

STATEMENTS_EXTENSION = """
select
    (select extnamespace::regnamespace::text from pg_extension where extname = 'pg_stat_statements') as schema,
    exists (select from pg_available_extensions where name = 'pg_stat_statements') as available,
    'pg_stat_statements' = any(string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ','))
        as preloaded
"""

SLOW_QUERIES = """
SELECT
  query,
  calls,
  total_exec_time,
  mean_exec_time,
  max_exec_time
FROM {schema}.pg_stat_statements
WHERE query LIKE '%devdiag%'
ORDER BY mean_exec_time DESC LIMIT 10
"""


# --- helpers --------------------------------------------------------------------------------------


def _query(conn: psycopg.Connection, query: Query, params: dict[str, Any] | None = None) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return [{k: _plain(v) for k, v in row.items()} for row in cur.fetchall()]


def _plain(value: Any) -> Any:
    """Numbers as int/float, intervals as seconds, ids as text; times stay times (see _json_default)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def human_size(size: float | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, float):
        text = f"{value:,.3f}".rstrip("0").rstrip(".")
    elif isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:,}"
    else:
        text = " ".join(str(value).split())
    return text if len(text) <= CELL_WIDTH else text[: CELL_WIDTH - 1] + "…"


def print_table(title: str, rows: Sequence[Row], columns: Sequence[str] | None = None, *, empty: str = "") -> None:
    """A titled plain-text table; `empty` is said instead when there are no rows."""
    click.echo(f"\n{title}")
    if not rows:
        click.echo(f"  {empty or '(no rows)'}")
        return
    columns = list(columns or rows[0].keys())
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), int | float) or row.get(c) is None for row in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  " + "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        )

    click.echo(line(columns).rstrip())
    click.echo("  " + "  ".join("-" * w for w in widths))
    for r in cells:
        click.echo(line(r).rstrip())


def _run(collect: Callable[[ConnectionSettings], dict[str, Any]]) -> dict[str, Any]:
    """Collect a report with one-line errors: database away, views not built, anything else."""
    from devdiag_db.config import settings

    try:
        return collect(settings())
    except DatabaseUnavailable as error:
        raise click.ClickException(str(error)) from None
    except psycopg.errors.UndefinedTable as error:
        raise click.ClickException(f"{_first_line(error)}: run `devdiag setup` and `devdiag build` first") from None
    except psycopg.OperationalError as error:
        raise click.ClickException(f"the database went away: {_first_line(error)}") from None
    except psycopg.Error as error:
        raise click.ClickException(_first_line(error)) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _json_default(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.datetime | dt.date) else str(value)


def _emit_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, indent=2, default=_json_default))


# --- review ---------------------------------------------------------------------------------------


def weekly_review(settings: ConnectionSettings, *, recent: int = 50) -> dict[str, Any]:
    with connect(settings) as conn:
        return {
            "learning_effectiveness": _query(conn, LEARNING_EFFECTIVENESS)[0],
            "top_problems_7d": _query(conn, TOP_PROBLEMS_7D),
            "environment_diversity_7d": _query(conn, ENVIRONMENT_DIVERSITY_7D),
            "activity_7d": _query(conn, ACTIVITY_SUMMARY_7D)[0],
            "recent_activity": _query(conn, RECENT_ACTIVITY, {"limit": recent}),
        }


def _print_review(report: dict[str, Any]) -> None:
    learning = report["learning_effectiveness"]
    click.echo("Weekly review")
    print_table("Learning effectiveness (all time, v_fix_success)", [learning])
    print_table(
        "Top problems, last 7 days (v_problem_counts)", report["top_problems_7d"], empty="no problems in 7 days"
    )
    print_table(
        "Environment diversity of problems first seen in the last 7 days (v_env_diversity)",
        report["environment_diversity_7d"],
        ["problem_code", "environment_combos", "first_seen", "last_seen"],
        empty="no new problems in 7 days",
    )
    print_table("Activity, last 7 days (v_recent_activity)", [report["activity_7d"]])
    print_table(
        f"Recent activity, newest {len(report['recent_activity'])} findings (v_recent_activity)",
        report["recent_activity"],
        ["ts", "tenant_id", "environment", "problem_code", "fix_suggestion", "confidence", "resolution"],
        empty="no runs in 7 days",
    )


@click.command("review")
@click.option("--recent", default=50, show_default=True, type=click.IntRange(min=0), help="Recent findings to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the review as one JSON object.")
def review(recent: int, as_json: bool) -> None:
    """The runbook's weekly review: learning effectiveness, top problems over 7 days, environment
    diversity of new problems, recent activity. Always exits 0 when it could read the views."""
    report = _run(lambda s: weekly_review(s, recent=recent))
    if as_json:
        _emit_json(report)
    else:
        _print_review(report)


# --- capacity -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    warning_bytes: int = CAPACITY_WARNING_BYTES
    critical_bytes: int = CAPACITY_CRITICAL_BYTES

    def status(self, size: float | None) -> str:
        if size is None:
            return "ok"
        if size > self.critical_bytes:
            return "critical"
        return "warning" if size > self.warning_bytes else "ok"


def extrapolate_12_months(size_bytes: int, data_days: float | None) -> int | None:
    """The runbook's formula, (current_size / retention_days) * 365; days under 1 count as 1."""
    if data_days is None:
        return None
    return round(size_bytes / max(data_days, 1.0) * 365)


def capacity_report(settings: ConnectionSettings, thresholds: Thresholds | None = None) -> dict[str, Any]:
    thresholds = thresholds or Thresholds()
    with connect(settings) as conn:
        citus = is_citus(conn)
        size = _query(conn, DATABASE_SIZE_CITUS if citus else DATABASE_SIZE)[0]
        span = _query(conn, DATA_SPAN)[0]
        growth = _query(conn, MONTHLY_GROWTH)
    projected = extrapolate_12_months(size["db_size_bytes"], span["data_days"])
    return {
        "database": size["database"],
        "db_size_bytes": size["db_size_bytes"],
        "db_size": human_size(size["db_size_bytes"]),
        "oldest_data": span["oldest_data"],
        "newest_data": span["newest_data"],
        "retention_days": span["retention_days"],
        "projected_12_months_bytes": projected,
        "projected_12_months": human_size(projected),
        "status": thresholds.status(size["db_size_bytes"]),
        "projected_status": thresholds.status(projected),
        "warning_bytes": thresholds.warning_bytes,
        "critical_bytes": thresholds.critical_bytes,
        "monthly_growth": growth,
    }


def _print_capacity(report: dict[str, Any]) -> None:
    click.echo("Capacity planning review")
    days = report["retention_days"]
    click.echo(f"\n  database {report['database']}: {report['db_size']} ({report['db_size_bytes']:,} bytes)")
    click.echo(f"  data from {_cell(report['oldest_data'])} to {_cell(report['newest_data'])} ({_cell(days)} days)")
    click.echo(
        f"  12-month extrapolation (size / days * 365): {report['projected_12_months']}"
        + (f" ({report['projected_status']})" if report["projected_status"] != "ok" else "")
    )
    limits = f"warning over {human_size(report['warning_bytes'])}, critical over {human_size(report['critical_bytes'])}"
    click.echo(f"  status: {report['status'].upper()} ({limits})")
    print_table("Monthly row growth (devdiag.diag_run)", report["monthly_growth"], empty="no rows")


@click.command("capacity")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def capacity(as_json: bool) -> None:
    """The runbook's capacity planning review: monthly row growth, database size and its 12-month
    extrapolation. Exit 0 under 5 GB, 1 over 5 GB (warning), 2 over 10 GB (critical)."""
    report = _run(capacity_report)
    if as_json:
        _emit_json(report)
    else:
        _print_capacity(report)
    sys.exit(EXIT_BY_STATUS[report["status"]])


# --- perf -----------------------------------------------------------------------------------------


def perf_report(settings: ConnectionSettings) -> dict[str, Any]:
    with connect(settings) as conn:
        tables = _query(conn, TABLE_SIZES)
        indexes = [_judge_index(row) for row in _query(conn, INDEX_USAGE)]
        since = _query(conn, STATS_SINCE)
        slow = slow_queries(conn)
    return {
        "tables": tables,
        "indexes": indexes,
        "unused_indexes": [i["indexname"] for i in indexes if i["unused"]],
        "stats_since": since[0]["stats_reset"] if since else None,
        "slow_queries": slow,
    }


def _judge_index(row: Row) -> Row:
    """Flag idx_scan = 0, with what that means for this index."""
    row = dict(row)
    table, unique = row.pop("table"), row.pop("is_unique")
    unused = row["idx_scan"] == 0
    note = ""
    if unused:
        if unique:
            note = "enforces uniqueness: keep"
        elif table not in RAW_TABLES:
            note = "rebuilt by dbt: counts only since the last build"
        else:
            note = "unused: consider dropping"
    return {**row, "unused": unused, "note": note}


def slow_queries(conn: psycopg.Connection) -> dict[str, Any]:
    """The runbook's slow-query list when pg_stat_statements is enabled; otherwise why it is not."""
    ext = _query(conn, STATEMENTS_EXTENSION)[0]
    if ext["schema"] is None:
        how = "add it to shared_preload_libraries, restart, then `create extension pg_stat_statements`"
        if ext["preloaded"]:
            how = "it is loaded: run `devdiag setup` (or `create extension pg_stat_statements`) in this database"
        elif not ext["available"]:
            how = "this PostgreSQL does not ship it: install its contrib package (the embedded one has it)"
        return {"enabled": False, "message": f"pg_stat_statements is not enabled: {how}", "rows": []}
    try:
        with conn.transaction():
            rows = _query(conn, sql.SQL(SLOW_QUERIES).format(schema=sql.Identifier(ext["schema"])))
    except psycopg.errors.ObjectNotInPrerequisiteState:
        return {
            "enabled": False,
            "message": "pg_stat_statements is created but not loaded: add it to shared_preload_libraries and restart",
            "rows": [],
        }
    except psycopg.errors.InsufficientPrivilege:
        return {
            "enabled": True,
            "message": "not allowed to read pg_stat_statements: grant pg_read_all_stats",
            "rows": [],
        }
    return {"enabled": True, "message": None, "rows": rows}


def _print_perf(report: dict[str, Any]) -> None:
    click.echo("Database performance review")
    tables = [
        {
            "table_name": t["table_name"],
            "total_size": human_size(t["total_bytes"]),
            "table_size": human_size(t["table_bytes"]),
            "indexes_size": human_size(t["indexes_bytes"]),
            "rows (est.)": t["rows_estimate"],
        }
        for t in report["tables"]
    ]
    print_table("Table sizes (schema devdiag)", tables, empty="no tables in schema devdiag: run `devdiag setup`")
    indexes = [
        {**i, "index_size": human_size(i["index_bytes"]), "unused": "UNUSED" if i["unused"] else ""}
        for i in report["indexes"]
    ]
    since = report["stats_since"] or "the server's start of statistics"
    print_table(
        f"Index usage since {since} (idx_scan = 0: unused)",
        indexes,
        ["table_name", "indexname", "idx_scan", "idx_tup_read", "idx_tup_fetch", "index_size", "unused", "note"],
    )
    slow = report["slow_queries"]
    title = "Slow queries (pg_stat_statements, mean time, ms)"
    if slow["message"]:
        click.echo(f"\n{title}\n  {slow['message']}")
    else:
        print_table(title, slow["rows"], empty="no statements on devdiag recorded yet")


@click.command("perf")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def perf(as_json: bool) -> None:
    """The runbook's database performance review: table and index sizes, index usage with unused
    indexes flagged, slow queries from pg_stat_statements when it is enabled. Always exits 0 when
    it could read the statistics."""
    report = _run(perf_report)
    if as_json:
        _emit_json(report)
    else:
        _print_perf(report)
