{#-
    Suggestions and recorded outcomes per tenant x problem x suggested fix: the counts that
    learning (int_fix_ranking) and fix success (int_fix_success) are built from. As in learning,
    every recorded outcome is an attempt; only `fixed` is a success (`manual` counts against the fix).
-#}
{{
    config(
        materialized='table',
        indexes=[
            {'columns': ['tenant_id', 'problem_code', 'fix_suggestion'], 'unique': true},
        ],
    )
}}

with suggestions as (

    select
        ts,
        tenant_id,
        problem_code,
        fix_suggestion,
        confidence,
        resolution,
        resolved_at
    from {{ ref('stg_devdiag__diag_run') }}
    where
        fix_suggestion is not null
        and problem_code is not null

),

outcome_counts as (

    select
        tenant_id,
        problem_code,
        fix_suggestion,
        count(*) as suggestions,
        count(confidence) as confidence_count,
        sum(confidence) as confidence_sum,
        count(*) filter (where resolution = 'fixed') as successes,
        count(*) filter (where resolution = 'failed') as failures,
        count(*) filter (where resolution = 'manual') as manual_resolutions,
        count(resolution) as attempts,
        max(resolved_at) filter (where resolution = 'fixed') as last_success,
        max(resolved_at) as last_outcome_at,
        min(ts) as first_suggested_at,
        max(ts) as last_suggested_at
    from suggestions
    group by 1, 2, 3

)

select * from outcome_counts
