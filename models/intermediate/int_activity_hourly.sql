{#-
    Activity of the last 8 days per UTC hour x tenant x environment x problem (null: clean runs),
    complete hours only: what v_activity_hourly serves between builds. Incremental: a build
    recounts, from the raw table's ts index, the complete hours of the last 8 days that hold rows
    changed since the previous build (macros/incremental.sql), so a run that arrives late (a
    replayed spool) is counted too; hours older than 8 days are dropped after each build.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='hour',
        indexes=[{'columns': ['hour']}],
        post_hook=["delete from {{ this }} where hour < date_trunc('hour', now(), 'utc') - interval '8 days'"],
    )
}}

with
{% if is_incremental() %}
    changed_hours as (

        select distinct date_trunc('hour', ts, 'utc') as hour
        from {{ ref('stg_devdiag__diag_run') }}
        where
            ts >= date_trunc('hour', now(), 'utc') - interval '8 days'
            and ts < date_trunc('hour', now(), 'utc')
            and {{ changed_since_last_build() }}

    ),

    recent_findings as (

        select
            stg_devdiag__diag_run.run_id,
            stg_devdiag__diag_run.ts,
            stg_devdiag__diag_run.tenant_id,
            stg_devdiag__diag_run.environment,
            stg_devdiag__diag_run.problem_code,
            stg_devdiag__diag_run.fix_suggestion,
            stg_devdiag__diag_run.confidence
        from changed_hours
        inner join {{ ref('stg_devdiag__diag_run') }}
            on
                stg_devdiag__diag_run.ts >= changed_hours.hour
                and stg_devdiag__diag_run.ts < changed_hours.hour + interval '1 hour'

    ),
{% else %}
    recent_findings as (

        select
            run_id,
            ts,
            tenant_id,
            environment,
            problem_code,
            fix_suggestion,
            confidence
        from {{ ref('stg_devdiag__diag_run') }}
        where
            ts >= date_trunc('hour', now(), 'utc') - interval '8 days'
            and ts < date_trunc('hour', now(), 'utc')

    ),
{% endif %}

hourly_activity as (
    {{ activity_by_hour('recent_findings') }}
)

select
    *,
    now() as built_at
from hourly_activity
