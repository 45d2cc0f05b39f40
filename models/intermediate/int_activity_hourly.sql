{#-
    Activity of the last 8 days per UTC hour x tenant x environment x problem (null: clean runs),
    up to the build's start (built_at; the current hour holds the runs before it): what
    v_activity_hourly serves, with the runs since added live. Incremental: a build recounts,
    from the raw table's ts index, the hours of the last 8 days that hold rows changed since the
    previous build (macros/incremental.sql), so a run that arrives late (a replayed spool) is
    counted too; hours older than 8 days are dropped after each build.
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

with recent_findings as (
    {{
        rows_of_changed_periods(
            'hour',
            "ts >= date_trunc('hour', now(), 'utc') - interval '8 days' and ts < now()",
            ['run_id', 'ts', 'tenant_id', 'environment', 'problem_code', 'fix_suggestion', 'confidence'],
        )
    }}
),

hourly_activity as (
    {{ activity_by_hour('recent_findings') }}
)

select
    *,
    now() as built_at
from hourly_activity
