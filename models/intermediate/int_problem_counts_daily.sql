{#-
    Findings per UTC day x tenant x problem. Incremental: a build recounts, from the raw table's
    ts index, only the days of the rows changed since the previous build (macros/incremental.sql).
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='day',
        indexes=[{'columns': ['day']}],
    )
}}

with
{% if is_incremental() %}
    changed_days as (
        {{ changed_utc_days('problem_code is not null') }}
    ),

    findings as (

        select
            stg_devdiag__diag_run.ts,
            stg_devdiag__diag_run.tenant_id,
            stg_devdiag__diag_run.problem_code
        from changed_days
        inner join {{ ref('stg_devdiag__diag_run') }}
            on
                stg_devdiag__diag_run.ts >= changed_days.day_start
                and stg_devdiag__diag_run.ts < changed_days.day_start + interval '24 hours'
        where stg_devdiag__diag_run.problem_code is not null

    ),
{% else %}
    findings as (

        select
            ts,
            tenant_id,
            problem_code
        from {{ ref('stg_devdiag__diag_run') }}
        where problem_code is not null

    ),
{% endif %}

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
