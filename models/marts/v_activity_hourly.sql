{#-
    Public view for the dashboard and the alerts: the last 7 x 24 UTC hours and the current one,
    per hour x tenant x environment x problem. int_activity_hourly holds the runs before its last
    build began (built_at of its newest hour, every few minutes); the runs since are aggregated
    live from the raw table's ts index and merged into their hour, so the newest run is always
    counted. Its cost is the week's hours and a few minutes of runs, not the history's. On Citus
    the live half is left out (live_runs, macros/citus.sql): the view is then one build behind.
-#}
{{ config(materialized='view', grants={'select': ['grafana']}) }}

with newest_built_hour as (

    -- the hour index gives it in one step; its rows hold the runs before built_at
    select
        hour,
        built_at
    from {{ ref('int_activity_hourly') }}
    order by 1 desc
    limit 1

),

-- read twice below: `not materialized` keeps each read an index scan of its own hours
built_hours as not materialized (

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
    where hour >= date_trunc('hour', now(), 'utc') - interval '7 days'

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
    from {{ live_runs(ref('stg_devdiag__diag_run')) }}
    where
        ts >= coalesce((select newest_built_hour.built_at from newest_built_hour), '-infinity')
        and ts >= date_trunc('hour', now(), 'utc') - interval '7 days'

),

live_hours as (
    {{ activity_by_hour('live_findings') }}
),

-- the newest built hour, partly built and partly live: its two halves added up
merged_hours as (

    select
        hour,
        tenant_id,
        environment,
        problem_code,
        sum(runs)::bigint as runs,
        sum(findings)::bigint as findings,
        sum(suggestions)::bigint as suggestions,
        sum(confidence_sum) as confidence_sum,
        sum(confidence_count)::bigint as confidence_count,
        max(last_ts) as last_ts
    from (
        select * from built_hours
        where hour >= (select newest_built_hour.hour from newest_built_hour)
        union all
        select * from live_hours
    ) as newest_hours
    group by 1, 2, 3, 4

),

activity_hours as (

    select * from built_hours
    where hour < (select newest_built_hour.hour from newest_built_hour)
    union all
    select * from merged_hours

)

select * from activity_hours
