{#-
    Findings per UTC day x tenant x problem. Incremental: a build recounts, from the raw table's
    ts index, only the days of the rows changed since the previous build (macros/incremental.sql).
-#}
{{
    config(
        materialized='incremental',
        post_hook=["{{ distribute_by_tenant(['grafana', 'devdiag_writer']) }}"],
        incremental_strategy='delete+insert',
        unique_key='day',
        indexes=[{'columns': ['day']}],
    )
}}

with findings as (
    {{ rows_of_changed_periods('day', 'problem_code is not null', ['ts', 'tenant_id', 'problem_code']) }}
),

daily_counts as (

    select
        (ts at time zone 'utc')::date as day,
        tenant_id,
        problem_code,
        count(*) as cnt,
        now() as built_at
    from findings
    group by 1, 2, 3

)

select * from daily_counts
