{{ config(materialized='view', grants={'select': ['grafana']}) }}

with fix_success as (

    select
        problem_code,
        fix_suggestion,
        avg_confidence,
        successful_fixes,
        total_attempts,
        last_success
    from {{ ref('int_fix_success') }}

)

select * from fix_success
