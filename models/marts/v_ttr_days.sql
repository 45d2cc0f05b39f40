{{ config(materialized='view', grants={'select': ['grafana']}) }}

with resolved_episodes as (

    select
        problem_code,
        tenant_id,
        first_seen_day,
        ttr_days,
        episode_number
    from {{ ref('int_problem_episodes') }}
    where resolved_at is not null

)

select * from resolved_episodes
