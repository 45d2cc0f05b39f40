{#-
    Learned fix ranking per tenant x problem x fix: what the MCP server reads to suggest fixes.

    Candidates: every catalog fix of a problem, plus every fix with recorded outcomes for that
    problem that the catalog no longer (or never) lists, at the default prior. Each tenant gets a
    row for every candidate fix of every problem it has seen; tenant '*' (all tenants) gets a row
    for every candidate fix of every problem, seen or not, with the tenant counts at 0 so that its
    confidence is the all-tenants posterior. Confidence is devdiag.fix_confidence, the one
    learning formula; rank 1 is the best fix: highest confidence, then most outcomes of the
    tenant, then most outcomes overall, then catalog order.
-#}
{{
    config(
        materialized='table',
        post_hook=["{{ distribute_by_tenant(['grafana', 'devdiag_writer']) }}"],
        indexes=[
            {'columns': ['tenant_id', 'problem_code', 'rank'], 'unique': true},
        ],
    )
}}

with catalog_fixes as (

    select
        problem_code,
        fix_id,
        fix_title,
        prior_confidence,
        catalog_rank
    from {{ ref('stg_devdiag__fix_catalog') }}

),

tenant_outcomes as (

    select
        tenant_id,
        problem_code,
        fix_suggestion as fix_id,
        successes,
        attempts
    from {{ ref('int_fix_outcomes') }}

),

all_tenant_outcomes as (

    select
        problem_code,
        fix_suggestion as fix_id,
        successful_fixes,
        total_attempts
    from {{ ref('int_fix_success') }}

),

tenant_problems as (

    select
        tenant_id,
        problem_code
    from {{ ref('int_problem_counts_daily') }}
    group by 1, 2

),

uncatalogued_fixes as (

    select
        all_tenant_outcomes.problem_code,
        all_tenant_outcomes.fix_id,
        all_tenant_outcomes.fix_id as fix_title,
        {{ var('devdiag_default_prior') }}::double precision as prior_confidence,
        null::integer as catalog_rank
    from all_tenant_outcomes
    where
        all_tenant_outcomes.total_attempts > 0
        and not exists (
            select
            from catalog_fixes
            where
                catalog_fixes.problem_code = all_tenant_outcomes.problem_code
                and catalog_fixes.fix_id = all_tenant_outcomes.fix_id
        )

),

problem_fixes as (

    select
        problem_code,
        fix_id,
        fix_title,
        prior_confidence,
        catalog_rank,
        true as in_catalog
    from catalog_fixes
    union all
    select
        problem_code,
        fix_id,
        fix_title,
        prior_confidence,
        catalog_rank,
        false as in_catalog
    from uncatalogued_fixes

),

candidates as (

    select
        tenant_problems.tenant_id,
        problem_fixes.problem_code,
        problem_fixes.fix_id,
        problem_fixes.fix_title,
        problem_fixes.prior_confidence,
        problem_fixes.catalog_rank,
        problem_fixes.in_catalog
    from tenant_problems
    inner join problem_fixes
        on tenant_problems.problem_code = problem_fixes.problem_code
    union all
    select
        '*' as tenant_id,
        problem_code,
        fix_id,
        fix_title,
        prior_confidence,
        catalog_rank,
        in_catalog
    from problem_fixes

),

counted as (

    select
        candidates.tenant_id,
        candidates.problem_code,
        candidates.fix_id,
        candidates.fix_title,
        candidates.in_catalog,
        candidates.catalog_rank,
        candidates.prior_confidence,
        coalesce(tenant_outcomes.successes, 0) as successes_tenant,
        coalesce(tenant_outcomes.attempts, 0) as attempts_tenant,
        coalesce(all_tenant_outcomes.successful_fixes, 0) as successes_all,
        coalesce(all_tenant_outcomes.total_attempts, 0) as attempts_all
    from candidates
    left join tenant_outcomes
        on
            candidates.tenant_id = tenant_outcomes.tenant_id
            and candidates.problem_code = tenant_outcomes.problem_code
            and candidates.fix_id = tenant_outcomes.fix_id
    left join all_tenant_outcomes
        on
            candidates.problem_code = all_tenant_outcomes.problem_code
            and candidates.fix_id = all_tenant_outcomes.fix_id

),

scored as (

    select
        tenant_id,
        problem_code,
        fix_id,
        fix_title,
        in_catalog,
        catalog_rank,
        prior_confidence,
        successes_tenant,
        attempts_tenant,
        successes_all,
        attempts_all,
        devdiag.fix_confidence(
            prior_confidence, successes_all, attempts_all, successes_tenant, attempts_tenant
        ) as confidence
    from counted

),

ranked as (

    select
        tenant_id,
        problem_code,
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
        -- the build's start; the MCP server adds outcomes recorded after it (learning.py)
        now() as built_at,
        row_number() over (
            partition by tenant_id, problem_code
            order by
                confidence desc,
                attempts_tenant desc,
                attempts_all desc,
                catalog_rank asc nulls last,
                fix_id asc
        ) as rank
    from scored

)

select * from ranked
