{#- Fix success per problem x suggested fix over all tenants: the rows of v_fix_success. -#}
{{
    config(
        materialized='table',
        indexes=[
            {'columns': ['last_success']},
            {'columns': ['problem_code', 'fix_suggestion'], 'unique': true},
        ],
    )
}}

with fix_outcomes as (

    select
        problem_code,
        fix_suggestion,
        suggestions,
        confidence_count,
        confidence_sum,
        successes,
        failures,
        manual_resolutions,
        attempts,
        last_success
    from {{ ref('int_fix_outcomes') }}

),

fix_success as (

    select
        problem_code,
        fix_suggestion,
        sum(confidence_sum) / nullif(sum(confidence_count), 0)::double precision as avg_confidence,
        sum(successes)::bigint as successful_fixes,
        sum(attempts)::bigint as total_attempts,
        max(last_success) as last_success,
        sum(failures)::bigint as failed_fixes,
        sum(manual_resolutions)::bigint as manual_resolutions,
        sum(suggestions)::bigint as suggestions
    from fix_outcomes
    group by 1, 2

)

select * from fix_success
