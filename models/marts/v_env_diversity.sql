{{ config(materialized='view', grants={'select': ['grafana']}) }}

with env_diversity as (

    select
        problem_code,
        environment_combos,
        first_seen,
        last_seen
    from {{ ref('int_env_diversity') }}

)

select * from env_diversity
