"""The DevDiag Analytics dashboard, written as Python so that its SQL reads as SQL.

``devdiag grafana generate`` writes ``grafana/dashboards/devdiag-analytics.json`` from ``build()``;
a test keeps the committed file equal to it. Every panel reads the public views only, filters
by the tenant (and, where the view has it, environment) variables, and honours the dashboard time
range through Grafana's macros, except the Health panel, which reports the state now.

Variables use the custom All value ``'__all__'`` (inserted raw by Grafana) and every filter reads
``('__all__' in ($tenant) or tenant_id in ($tenant))``: with no tenants yet, Grafana's default All
(the list of options) would expand to ``in ()``, a syntax error on a fresh install.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.grafana import DASHBOARD_TITLE, DASHBOARD_UID, DATASOURCE_REF

ALL_VALUE = "'__all__'"
TENANT = "('__all__' in ($tenant) or {col} in ($tenant))"
ENVIRONMENT = "('__all__' in ($environment) or {col} in ($environment))"


def tenant_filter(column: str = "tenant_id") -> str:
    return TENANT.format(col=column)


def environment_filter(column: str = "environment") -> str:
    return ENVIRONMENT.format(col=column)


@dataclass(frozen=True)
class Panel:
    title: str
    type: str  # stat | timeseries | barchart | table
    sql: str
    grid: tuple[int, int, int, int]  # x, y, w, h on Grafana's 24-column grid
    description: str
    format: str = "table"  # or time_series
    unit: str | None = None
    min_interval: str | None = None
    now_only: bool = False  # reports the present state: no time macro on purpose
    defaults: dict[str, Any] = field(default_factory=dict)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


def _thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


def _override(name: str, **properties: Any) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


# Each figure reads only the hours it needs from v_activity_hourly: the last two hours (the whole
# week only when they are empty), today's hours, the week's confidence sums.
HEALTH_SQL = """
select
    coalesce(
        extract(epoch from now() - coalesce(
            (
                select max(last_ts) from devdiag.v_activity_hourly
                where hour >= date_trunc('hour', now(), 'utc') - interval '2 hours'
            ),
            (select max(last_ts) from devdiag.v_activity_hourly)
        )) / 3600,
        168
    )::float8 as "hours since last run",
    (
        select coalesce(sum(runs), 0)
        from devdiag.v_activity_hourly
        where hour >= date_trunc('day', now(), 'utc')
    )::bigint as "runs today",
    (
        select count(distinct problem_code)
        from devdiag.v_activity_hourly
        where hour >= date_trunc('day', now(), 'utc')
    ) as "problems today",
    (
        select sum(confidence_sum) / nullif(sum(confidence_count), 0)
        from devdiag.v_activity_hourly
    )::float8 as "fix confidence (7 d)",
    (
        select percentile_cont(0.5) within group (order by extract(epoch from ttr_days)) / 86400
        from devdiag.v_ttr_days
        where first_seen_day >= current_date - 7
    )::float8 as "median TTR (7 d, days)"
"""

# v_activity_hourly holds the last 7 x 24 hours. A range that starts before them is counted per UTC
# day: the days before the last six from v_problem_counts (findings only: clean runs are counted
# for the week alone; and only with every environment, as the daily counts have none), the rest
# from the hours. Summed per hour (per day) first: Grafana's time-group macro is numeric arithmetic,
# cheaper on 169 hours than on the week's ~50,000 rows; a day's start falls on a bucket's start for
# every interval from an hour to a day, so the days keep their own buckets.
RUNS_SQL = f"""
with span as (
    select
        $__timeFrom() < date_trunc('hour', now(), 'utc') - interval '7 days' as by_day,
        (now() at time zone 'utc')::date - 6 as first_hourly_day
),
hours as (
    select
        hour,
        sum(runs) as runs,
        sum(findings) as findings
    from devdiag.v_activity_hourly
    where
        $__timeFilter(hour)
        and {tenant_filter()}
        and {environment_filter()}
    group by hour
),
days_before as (
    select
        day,
        sum(cnt) as findings
    from devdiag.v_problem_counts
    where
        $__timeFilter(day)
        and day < (select first_hourly_day from span)
        and {tenant_filter()}
        and '__all__' in ($environment)
        and (select by_day from span)
    group by day
),
buckets as (
    select
        case when span.by_day then date_trunc('day', hours.hour, 'utc') else hours.hour end as at,
        hours.runs,
        hours.findings
    from hours cross join span
    where not span.by_day or hours.hour >= span.first_hourly_day::timestamp at time zone 'utc'
    union all
    select
        day::timestamp at time zone 'utc' as at,
        null as runs,
        findings
    from days_before
)
select
    $__timeGroupAlias(at, $__interval),
    sum(runs) as runs,
    sum(findings) as findings
from buckets
group by 1
order by 1
"""

FINDINGS_BY_PROBLEM_SQL = f"""
with in_range as (
    select day, problem_code, sum(cnt) as cnt
    from devdiag.v_problem_counts
    where $__timeFilter(day) and {tenant_filter()}
    group by day, problem_code
),
top_problems as (
    select problem_code
    from in_range
    group by problem_code
    order by sum(cnt) desc, problem_code
    limit 8
)
select
    $__timeGroupAlias(in_range.day, $__interval),
    coalesce(top_problems.problem_code, 'other') as metric,
    sum(in_range.cnt)::bigint as findings
from in_range
left join top_problems on in_range.problem_code = top_problems.problem_code
group by 1, 2
order by 1, 2
"""

TOP_PROBLEMS_SQL = f"""
select
    problem_code as problem,
    round(100.0 * sum(cnt) / sum(sum(cnt)) over (), 1)::float8 as "share of findings"
from devdiag.v_problem_counts
where $__timeFilter(day) and {tenant_filter()}
group by problem_code
order by sum(cnt) desc, problem_code
limit 10
"""

ENV_DIVERSITY_SQL = """
select
    problem_code as problem,
    environment_combos as environments
from devdiag.v_env_diversity
where last_seen >= $__timeFrom() and first_seen <= $__timeTo()
order by environment_combos desc, problem_code
limit 15
"""

FIX_SUCCESS_SQL = """
select
    problem_code as problem,
    fix_suggestion as fix,
    successful_fixes as fixed,
    total_attempts as attempts,
    round(successful_fixes::numeric / nullif(total_attempts, 0), 3)::float8 as "success rate",
    round(avg_confidence::numeric, 3)::float8 as "avg confidence",
    last_success as "last success"
from devdiag.v_fix_success
where total_attempts > 0 and (last_success is null or $__timeFilter(last_success))
order by total_attempts desc, problem_code, fix_suggestion
limit 50
"""

CONFIDENCE_VS_SUCCESS_SQL = """
select
    problem_code as problem,
    round(sum(successful_fixes)::numeric / sum(total_attempts), 3)::float8 as "success rate",
    round(avg(avg_confidence)::numeric, 3)::float8 as "avg confidence"
from devdiag.v_fix_success
where total_attempts > 0 and (last_success is null or $__timeFilter(last_success))
group by problem_code
order by sum(total_attempts) desc, problem_code
limit 10
"""

TTR_DISTRIBUTION_SQL = f"""
with buckets (bucket_order, bucket, lower_bound, upper_bound) as (
    values
        (1, '< 1 h', interval '0', interval '1 hour'),
        (2, '1-4 h', interval '1 hour', interval '4 hours'),
        (3, '4-12 h', interval '4 hours', interval '12 hours'),
        (4, '12-24 h', interval '12 hours', interval '1 day'),
        (5, '1-2 d', interval '1 day', interval '2 days'),
        (6, '2-7 d', interval '2 days', interval '7 days'),
        (7, '>= 7 d', interval '7 days', null)
),
episodes as (
    select ttr_days
    from devdiag.v_ttr_days
    where $__timeFilter(first_seen_day) and {tenant_filter()}
)
select
    buckets.bucket as "time to resolution",
    count(episodes.ttr_days) as episodes
from buckets
left join episodes
    on
        episodes.ttr_days >= buckets.lower_bound
        and (buckets.upper_bound is null or episodes.ttr_days < buckets.upper_bound)
group by buckets.bucket_order, buckets.bucket
order by buckets.bucket_order
"""

MEDIAN_TTR_SQL = f"""
select
    $__timeGroupAlias(first_seen_day, $__interval),
    (percentile_cont(0.5) within group (order by extract(epoch from ttr_days)) / 86400)::float8
        as "median TTR (days)",
    (percentile_cont(0.9) within group (order by extract(epoch from ttr_days)) / 86400)::float8
        as "p90 TTR (days)"
from devdiag.v_ttr_days
where $__timeFilter(first_seen_day) and {tenant_filter()}
group by 1
order by 1
"""

FIX_RANKING_SQL = f"""
select
    ranking.tenant_id as tenant,
    ranking.problem_code as problem,
    ranking.fix_id as "best fix",
    ranking.fix_title as title,
    round(ranking.confidence::numeric, 3)::float8 as confidence,
    ranking.successes_tenant as "tenant successes",
    ranking.attempts_tenant as "tenant attempts",
    ranking.successes_all as "all successes",
    ranking.attempts_all as "all attempts"
from devdiag.v_fix_ranking as ranking
where
    ranking.rank = 1
    and ranking.tenant_id <> '*'
    and {tenant_filter("ranking.tenant_id")}
    and exists (
        select
        from devdiag.v_problem_counts as counts
        where
            counts.tenant_id = ranking.tenant_id
            and counts.problem_code = ranking.problem_code
            and $__timeFilter(counts.day)
    )
order by ranking.tenant_id, ranking.attempts_tenant desc, ranking.problem_code
limit 100
"""

RECENT_ACTIVITY_SQL = f"""
select
    ts as "time",
    tenant_id as tenant,
    environment,
    coalesce(problem_code, '(clean run)') as problem,
    fix_suggestion as fix,
    round(confidence::numeric, 3)::float8 as confidence,
    coalesce(resolution, case when fix_suggestion is not null then 'pending' end) as resolution,
    error_msg as error
from devdiag.v_recent_activity
where
    $__timeFilter(ts)
    and {tenant_filter()}
    and {environment_filter()}
order by ts desc
limit 100
"""

TENANT_VARIABLE_SQL = """
select tenant_id from devdiag.v_problem_counts where $__timeFilter(day)
union
select tenant_id from devdiag.v_activity_hourly
order by 1
"""

ENVIRONMENT_VARIABLE_SQL = f"""
select distinct environment
from devdiag.v_activity_hourly
where {tenant_filter()}
order by 1
"""

_STAT_OPTIONS = {
    "colorMode": "background",
    "graphMode": "none",
    "justifyMode": "auto",
    "orientation": "auto",
    "textMode": "value_and_name",
    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
}

PANELS: tuple[Panel, ...] = (
    Panel(
        title="Health",
        type="stat",
        sql=HEALTH_SQL,
        grid=(0, 0, 24, 4),
        now_only=True,
        description=(
            "The runbook's red flags, now, over all tenants: stale data (> 2 h warn, > 6 h critical), no runs "
            "today, more than 10 problems today, fix confidence below 0.70, median time to resolution above "
            "2 days. Reads v_activity_hourly (the last 7 days, by hour) and v_ttr_days."
        ),
        defaults={"decimals": 1, "thresholds": _thresholds((None, "green"))},
        overrides=[
            _override(
                "hours since last run", unit="h", thresholds=_thresholds((None, "green"), (2, "yellow"), (6, "red"))
            ),
            _override("runs today", decimals=0, thresholds=_thresholds((None, "red"), (1, "green"))),
            _override("problems today", decimals=0, thresholds=_thresholds((None, "green"), (11, "orange"))),
            _override("fix confidence (7 d)", decimals=2, thresholds=_thresholds((None, "orange"), (0.7, "green"))),
            _override("median TTR (7 d, days)", thresholds=_thresholds((None, "green"), (2, "orange"))),
        ],
        options=_STAT_OPTIONS,
    ),
    Panel(
        title="Runs and findings",
        type="timeseries",
        sql=RUNS_SQL,
        format="time_series",
        grid=(0, 4, 12, 8),
        min_interval="1h",
        unit="short",
        description=(
            "Diagnostic runs (clean ones included) and findings per interval of at least an hour, from "
            "v_activity_hourly, which holds the last 7 days. A range that starts earlier is shown per UTC "
            "day: findings of the days before the last six from v_problem_counts (with every environment "
            "only), runs for the last days alone. Filtered by tenant and environment."
        ),
    ),
    Panel(
        title="Findings per day by problem",
        type="timeseries",
        sql=FINDINGS_BY_PROBLEM_SQL,
        format="time_series",
        grid=(12, 4, 12, 8),
        min_interval="1d",
        unit="short",
        description=(
            "Findings per UTC day of the 8 most frequent problems in the range, the rest as 'other' (v_problem_counts)."
        ),
        defaults={"custom": {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal", "group": "A"}}},
    ),
    Panel(
        title="Top problems: share of findings",
        type="barchart",
        sql=TOP_PROBLEMS_SQL,
        grid=(0, 12, 12, 9),
        unit="percent",
        defaults={"decimals": 1},
        description="The 10 most frequent problems in the range and their share of all findings (v_problem_counts).",
        options={"orientation": "horizontal", "xField": "problem", "showValue": "auto"},
    ),
    Panel(
        title="Environment diversity",
        type="barchart",
        sql=ENV_DIVERSITY_SQL,
        grid=(12, 12, 12, 9),
        unit="short",
        description=(
            "Distinct environment combinations that saw each problem seen in the range, over all tenants "
            "(v_env_diversity): a problem in many environments is systemic."
        ),
        options={"orientation": "horizontal", "xField": "problem", "showValue": "auto"},
    ),
    Panel(
        title="Fix success and confidence",
        type="table",
        sql=FIX_SUCCESS_SQL,
        grid=(0, 21, 12, 9),
        description=(
            "Per problem and fix, all tenants (v_fix_success): outcomes fixed of all recorded outcomes (a manual "
            "resolution counts against the fix) and the average learned confidence when suggested. Fixes whose "
            "last success is in the range, and fixes that never worked."
        ),
        overrides=[
            _override("success rate", unit="percentunit", decimals=1),
            _override("avg confidence", decimals=2),
        ],
    ),
    Panel(
        title="Confidence vs success rate by problem",
        type="barchart",
        sql=CONFIDENCE_VS_SUCCESS_SQL,
        grid=(12, 21, 12, 9),
        unit="percentunit",
        description=(
            "For the 10 problems with the most recorded outcomes: the share of outcomes fixed against the "
            "average confidence suggested (v_fix_success). Confidence well above success means it is over-promising."
        ),
        defaults={"min": 0, "max": 1},
        options={"orientation": "horizontal", "xField": "problem", "showValue": "auto"},
    ),
    Panel(
        title="Time to resolution distribution",
        type="barchart",
        sql=TTR_DISTRIBUTION_SQL,
        grid=(0, 30, 12, 8),
        unit="short",
        description=(
            "Resolved problem episodes that started in the range, by time from first sighting to resolution "
            "(v_ttr_days)."
        ),
        options={"orientation": "vertical", "xField": "time to resolution", "showValue": "auto"},
    ),
    Panel(
        title="Median time to resolution",
        type="timeseries",
        sql=MEDIAN_TTR_SQL,
        format="time_series",
        grid=(12, 30, 12, 8),
        min_interval="1d",
        unit="d",
        description=(
            "Median and 90th percentile time to resolution of the episodes that started in each interval "
            "(v_ttr_days). The TTR alert fires when the 7-day median exceeds 2 days."
        ),
        defaults={
            "custom": {"thresholdsStyle": {"mode": "line"}},
            "thresholds": _thresholds((None, "green"), (2, "red")),
        },
    ),
    Panel(
        title="Learned fix ranking",
        type="table",
        sql=FIX_RANKING_SQL,
        grid=(0, 38, 24, 8),
        description=(
            "The fix the MCP server suggests first (rank 1 in v_fix_ranking) for each tenant and problem seen in the "
            "range, with its learned confidence and the outcomes it was learned from."
        ),
        overrides=[_override("confidence", decimals=2)],
    ),
    Panel(
        title="Recent activity",
        type="table",
        sql=RECENT_ACTIVITY_SQL,
        grid=(0, 46, 24, 10),
        description="The newest 100 findings in the range (v_recent_activity: the last 7 days), clean runs included.",
    ),
)


def _panel_json(panel_id: int, panel: Panel) -> dict[str, Any]:
    x, y, w, h = panel.grid
    defaults: dict[str, Any] = {"color": {"mode": "palette-classic"}, **panel.defaults}
    if panel.unit:
        defaults["unit"] = panel.unit
    if panel.type == "timeseries":
        custom = {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 10, "showPoints": "auto", "spanNulls": False}
        defaults["custom"] = {**custom, **defaults.get("custom", {})}
        defaults.setdefault("min", 0)
    if panel.type == "barchart":
        defaults.setdefault("min", 0)
    if panel.type == "stat":
        defaults["color"] = {"mode": "thresholds"}
    options = dict(panel.options)
    if panel.type in ("timeseries", "barchart"):
        options.setdefault("legend", {"displayMode": "list", "placement": "bottom", "showLegend": True})
        options.setdefault("tooltip", {"mode": "multi", "sort": "desc"})
    if panel.type == "table":
        options.setdefault("showHeader", True)
        options.setdefault("cellHeight", "sm")
    result: dict[str, Any] = {
        "id": panel_id,
        "type": panel.type,
        "title": panel.title,
        "description": panel.description,
        "datasource": dict(DATASOURCE_REF),
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "targets": [
            {
                "refId": "A",
                "datasource": dict(DATASOURCE_REF),
                "editorMode": "code",
                "format": panel.format,
                "rawQuery": True,
                "rawSql": panel.sql.strip(),
            }
        ],
        "fieldConfig": {"defaults": defaults, "overrides": panel.overrides},
        "options": options,
    }
    if panel.min_interval:
        result["interval"] = panel.min_interval
    return result


def _query_variable(name: str, label: str, sql: str, description: str) -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "description": description,
        "datasource": dict(DATASOURCE_REF),
        "query": sql.strip(),
        "definition": sql.strip(),
        "refresh": 2,  # on time range change: new tenants and environments appear
        "multi": True,
        "includeAll": True,
        "allValue": ALL_VALUE,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "hide": 0,
    }


def build() -> dict[str, Any]:
    """The dashboard JSON that Grafana imports (and the preview renders)."""
    return {
        "uid": DASHBOARD_UID,
        "title": DASHBOARD_TITLE,
        "description": (
            "DevDiag: problems developers hit, fixes that work, time to resolution. "
            "Reads the public views as role grafana."
        ),
        "tags": ["devdiag"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "5m",
        "time": {"from": "now-30d", "to": "now"},
        "timepicker": {},
        "links": [],
        "annotations": {"list": []},
        "templating": {
            "list": [
                _query_variable(
                    "tenant",
                    "Tenant",
                    TENANT_VARIABLE_SQL,
                    "Teams or organisations; filters every panel whose view has a tenant.",
                ),
                _query_variable(
                    "environment",
                    "Environment",
                    ENVIRONMENT_VARIABLE_SQL,
                    "Environment combinations of the last 7 days; filters the panels built on v_activity_hourly and "
                    "v_recent_activity.",
                ),
            ]
        },
        "panels": [_panel_json(i, panel) for i, panel in enumerate(PANELS, start=1)],
    }
