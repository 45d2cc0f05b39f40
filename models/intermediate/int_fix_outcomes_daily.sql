{#-
    Suggestions and recorded outcomes per UTC day of the finding x tenant x problem x suggested
    fix: the partial counts int_fix_outcomes adds up. Incremental: a build recounts only the days
    of the findings changed since the previous build (a new finding, or an outcome recorded on an
    old one), from the raw table's index of findings with a fix (macros/incremental.sql).
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='day',
        indexes=[{'columns': ['day']}],
    )
}}

with
{% if is_incremental() %}
    changed_days as (
        {{ changed_utc_days('fix_suggestion is not null and problem_code is not null') }}
    ),

    suggestions as (

        select
            stg_devdiag__diag_run.ts,
            stg_devdiag__diag_run.tenant_id,
            stg_devdiag__diag_run.problem_code,
            stg_devdiag__diag_run.fix_suggestion,
            stg_devdiag__diag_run.confidence,
            stg_devdiag__diag_run.resolution,
            stg_devdiag__diag_run.resolved_at
        from changed_days
        inner join {{ ref('stg_devdiag__diag_run') }}
            on
                stg_devdiag__diag_run.ts >= changed_days.day_start
                and stg_devdiag__diag_run.ts < changed_days.day_start + interval '24 hours'
        where
            stg_devdiag__diag_run.fix_suggestion is not null
            and stg_devdiag__diag_run.problem_code is not null

    ),
{% else %}
    suggestions as (

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
{% endif %}

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
