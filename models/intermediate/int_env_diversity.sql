{#- Environment diversity per problem: the rows of v_env_diversity. -#}
{{
    config(
        materialized='table',
        indexes=[
            {'columns': ['first_seen']},
            {'columns': ['problem_code'], 'unique': true},
        ],
    )
}}

with findings as (

    select
        ts,
        environment,
        problem_code
    from {{ ref('stg_devdiag__diag_run') }}
    where problem_code is not null

),

problem_environments as (

    select
        problem_code,
        environment,
        min(ts) as first_seen,
        max(ts) as last_seen,
        count(*) as findings
    from findings
    group by 1, 2

),

env_diversity as (

    select
        problem_code,
        count(*) as environment_combos,
        min(first_seen) as first_seen,
        max(last_seen) as last_seen,
        sum(findings)::bigint as findings
    from problem_environments
    group by 1

)

select * from env_diversity
