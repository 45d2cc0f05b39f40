{{
    config(
        materialized='table',
        indexes=[{'columns': ['day']}],
    )
}}

with findings as (

    select
        ts,
        tenant_id,
        problem_code
    from {{ ref('stg_devdiag__diag_run') }}
    where problem_code is not null

),

daily_counts as (

    select
        (ts at time zone 'utc')::date as day,
        tenant_id,
        problem_code,
        count(*) as cnt
    from findings
    group by 1, 2, 3

)

select * from daily_counts
