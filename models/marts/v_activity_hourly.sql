{#-
    Public view for the dashboard and the alerts: the last 7 x 24 UTC hours and the current one,
    per hour x tenant x environment x problem. Complete hours come from int_activity_hourly (built
    every few minutes); the hours since its newest one are aggregated live from the raw table's ts
    index, so the newest run is always counted. Its cost is the week's hours, not the history's.
-#}
{{ config(materialized='view', grants={'select': ['grafana']}) }}

with built_hours as (

    select
        hour,
        tenant_id,
        environment,
        problem_code,
        runs,
        findings,
        suggestions,
        confidence_sum,
        confidence_count,
        last_ts
    from {{ ref('int_activity_hourly') }}

),

live_from as (

    -- the first hour the build has not aggregated (it builds complete hours only); read from the
    -- table, not built_hours, so that max(hour) is one step down its index
    select coalesce(max(hour) + interval '1 hour', '-infinity'::timestamptz) as hour
    from {{ ref('int_activity_hourly') }}

),

live_findings as (

    select
        run_id,
        ts,
        tenant_id,
        environment,
        problem_code,
        fix_suggestion,
        confidence
    from {{ ref('stg_devdiag__diag_run') }}
    where
        ts >= (select live_from.hour from live_from)
        and ts >= date_trunc('hour', now(), 'utc') - interval '7 days'

),

live_hours as (
    {{ activity_by_hour('live_findings') }}
),

activity_hours as (

    select * from built_hours
    where hour >= date_trunc('hour', now(), 'utc') - interval '7 days'
    union all
    select * from live_hours

)

select * from activity_hours
