{#-
    First and last sighting of each problem in each environment combination. Incremental: the
    rows changed since the previous build widen the pairs they touch (least / greatest, so
    reading a change twice is harmless); a full refresh recomputes from the raw table.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['problem_code', 'environment'],
        indexes=[{'columns': ['problem_code', 'environment'], 'unique': true}],
    )
}}

with findings as (

    select
        ts,
        environment,
        problem_code
    from {{ ref('stg_devdiag__diag_run') }}
    where
        problem_code is not null
        and {{ changed_since_last_build() if is_incremental() else 'true' }}

),

sighted_pairs as (

    select
        problem_code,
        environment,
        min(ts) as first_seen,
        max(ts) as last_seen
    from findings
    group by 1, 2

),

{% if is_incremental() %}
    problem_environments as (

        select
            sighted_pairs.problem_code,
            sighted_pairs.environment,
            least(sighted_pairs.first_seen, known_pairs.first_seen) as first_seen,
            greatest(sighted_pairs.last_seen, known_pairs.last_seen) as last_seen,
            now() as built_at
        from sighted_pairs
        left join {{ this }} as known_pairs
            on
                sighted_pairs.problem_code = known_pairs.problem_code
                and sighted_pairs.environment = known_pairs.environment

    )
{% else %}
    problem_environments as (

        select
            problem_code,
            environment,
            first_seen,
            last_seen,
            now() as built_at
        from sighted_pairs

    )
{% endif %}

select * from problem_environments
