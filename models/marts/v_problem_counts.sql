{#- devdiag_writer reads this view too: the MCP server suggests fixes and lists top problems from it. -#}
{{ config(materialized='view', grants={'select': ['grafana', 'devdiag_writer']}) }}

with daily_counts as (

    select
        day,
        tenant_id,
        problem_code,
        cnt
    from {{ ref('int_problem_counts_daily') }}

)

select * from daily_counts
