{#- devdiag_writer reads this view too: the MCP server suggests fixes and lists top problems from it. -#}
{{ config(materialized='view', grants={'select': ['grafana', 'devdiag_writer']}) }}

with fix_ranking as (

    select
        tenant_id,
        problem_code,
        rank,
        fix_id,
        fix_title,
        in_catalog,
        catalog_rank,
        prior_confidence,
        successes_tenant,
        attempts_tenant,
        successes_all,
        attempts_all,
        confidence,
        built_at
    from {{ ref('int_fix_ranking') }}

)

select * from fix_ranking
