{#-
    Suggestions and recorded outcomes per tenant x problem x suggested fix: the counts that
    learning (int_fix_ranking) and fix success (int_fix_success) are built from. As in learning,
    every recorded outcome is an attempt; only `fixed` is a success (`manual` counts against the fix).
    Adds up the daily partial counts of int_fix_outcomes_daily (incremental), not the raw table.
-#}
{{
    config(
        materialized='table',
        post_hook=["{{ distribute_by_tenant() }}"],
        indexes=[
            {'columns': ['tenant_id', 'problem_code', 'fix_suggestion'], 'unique': true},
        ],
    )
}}

with daily_outcome_counts as (

    select
        tenant_id,
        problem_code,
        fix_suggestion,
        suggestions,
        confidence_count,
        confidence_sum,
        successes,
        failures,
        manual_resolutions,
        attempts,
        last_success,
        last_outcome_at,
        first_suggested_at,
        last_suggested_at
    from {{ ref('int_fix_outcomes_daily') }}

),

outcome_counts as (

    select
        tenant_id,
        problem_code,
        fix_suggestion,
        sum(suggestions)::bigint as suggestions,
        sum(confidence_count)::bigint as confidence_count,
        sum(confidence_sum) as confidence_sum,
        sum(successes)::bigint as successes,
        sum(failures)::bigint as failures,
        sum(manual_resolutions)::bigint as manual_resolutions,
        sum(attempts)::bigint as attempts,
        max(last_success) as last_success,
        max(last_outcome_at) as last_outcome_at,
        min(first_suggested_at) as first_suggested_at,
        max(last_suggested_at) as last_suggested_at
    from daily_outcome_counts
    group by 1, 2, 3

)

select * from outcome_counts
