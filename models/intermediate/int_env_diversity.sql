{#- Environment diversity per problem: the rows of v_env_diversity, from int_problem_environments. -#}
{{
    config(
        materialized='table',
        indexes=[
            {'columns': ['first_seen']},
            {'columns': ['problem_code'], 'unique': true},
        ],
    )
}}

with problem_environments as (

    select
        problem_code,
        environment,
        first_seen,
        last_seen
    from {{ ref('int_problem_environments') }}

),

env_diversity as (

    select
        problem_code,
        count(*) as environment_combos,
        min(first_seen) as first_seen,
        max(last_seen) as last_seen
    from problem_environments
    group by 1

)

select * from env_diversity
