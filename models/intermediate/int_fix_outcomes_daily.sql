{#-
    Suggestions and recorded outcomes per UTC day of the finding x tenant x problem x suggested
    fix: the partial counts int_fix_outcomes adds up. Incremental: a build recounts only the days
    of the findings changed since the previous build (a new finding, or an outcome recorded on an
    old one), from the raw table's index of findings with a fix (macros/incremental.sql).
-#}
{{
    config(
        materialized='incremental',
        post_hook=["{{ distribute_by_tenant() }}"],
        incremental_strategy='delete+insert',
        unique_key='day',
        indexes=[{'columns': ['day']}],
    )
}}

with suggestions as (
    {{
        rows_of_changed_periods(
            'day',
            'fix_suggestion is not null and problem_code is not null',
            ['ts', 'tenant_id', 'problem_code', 'fix_suggestion', 'confidence', 'resolution', 'resolved_at'],
        )
    }}
),

daily_outcome_counts as (

    select
        (ts at time zone 'utc')::date as day,
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
        max(ts) as last_suggested_at,
        now() as built_at
    from suggestions
    group by 1, 2, 3, 4

)

select * from daily_outcome_counts
