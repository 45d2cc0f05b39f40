{#- Reads staging directly: the last 7 days come from the raw table's ts index, newest first. -#}
{{ config(materialized='view', grants={'select': ['grafana']}) }}

with recent_findings as (

    select
        ts,
        finding_id,
        run_id,
        tenant_id,
        environment,
        problem_code,
        fix_suggestion,
        confidence,
        resolution,
        resolved_at,
        error_msg
    from {{ ref('stg_devdiag__diag_run') }}
    where ts >= now() - interval '7 days'

)

select * from recent_findings
order by ts desc
