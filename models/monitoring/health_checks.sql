{#-
    The runbook's Morning Health Check: one row per check with the value measured now, its
    threshold and severity. It reads the raw table and pg_catalog, never the public views, so a
    missing view fails only views_present. The dbt tests on this model (tag `health`) decide
    pass / warn / error; data_freshness is decided by `dbt source freshness` and only measured here.
    Days are UTC days.

    The depends_on lines order a full `dbt build`: the views exist before views_present is measured.
-#}
{{ config(materialized='view', tags=['health']) }}

-- depends_on: {{ ref('v_problem_counts') }}
-- depends_on: {{ ref('v_fix_success') }}
-- depends_on: {{ ref('v_ttr_days') }}
-- depends_on: {{ ref('v_env_diversity') }}
-- depends_on: {{ ref('v_recent_activity') }}
-- depends_on: {{ ref('v_fix_ranking') }}
-- depends_on: {{ ref('v_activity_hourly') }}

{%- set public_views = [
    'v_problem_counts',
    'v_fix_success',
    'v_ttr_days',
    'v_env_diversity',
    'v_recent_activity',
    'v_fix_ranking',
    'v_activity_hourly',
] -%}
{%- set raw_indexes = raw_index_definitions().keys() | list -%}
{%- set check_ctes = [
    'new_rows_today',
    'data_freshness',
    'fix_confidence_30d',
    'views_present',
    'indexes_present',
    'retention_days',
    'problem_diversity_today',
] -%}
{%- set diag_run = source('devdiag', 'diag_run') %}

with runs as not materialized (

    select
        id,
        ts,
        tenant_id,
        problem_code,
        fix_suggestion,
        confidence
    from {{ diag_run }}

),

expected_views as (

    select view_name
    from (
        values
        {%- for name in public_views %}
            ('{{ name }}'){{ "," if not loop.last }}
        {%- endfor %}
    ) as expected (view_name)

),

expected_indexes as (

    select index_name
    from (
        values
        {%- for name in raw_indexes %}
            ('{{ name }}'){{ "," if not loop.last }}
        {%- endfor %}
    ) as expected (index_name)

),

present_views as (

    select pg_class.relname as view_name
    from pg_catalog.pg_class
    inner join pg_catalog.pg_namespace
        on pg_class.relnamespace = pg_namespace.oid
    where
        pg_namespace.nspname = '{{ this.schema }}'
        and pg_class.relkind = 'v'

),

present_indexes as (

    select indexname as index_name
    from pg_catalog.pg_indexes
    where
        schemaname = '{{ diag_run.schema }}'
        and tablename = '{{ diag_run.identifier }}'

),

todays_runs as (

    select count(*) as runs_today
    from runs
    where ts >= date_trunc('day', now(), 'utc')

),

new_rows_today as (

    select
        1 as check_order,
        'new_rows_today' as check_name,
        todays_runs.runs_today::double precision as value,
        'rows' as unit,
        '> 0' as threshold,
        'error' as severity,
        todays_runs.runs_today > 0 as passed,
        null::text as detail
    from todays_runs

),

data_freshness as (

    select
        2 as check_order,
        'data_freshness' as check_name,
        extract(epoch from now() - max(ts))::double precision / 3600 as value,
        'hours' as unit,
        '< 2 (warn), < 6 (error)' as threshold,
        'error' as severity,
        coalesce(now() - max(ts) < interval '2 hours', false) as passed,
        'decided by dbt source freshness' as detail
    from runs

),

fix_confidence_30d as (

    select
        3 as check_order,
        'fix_confidence_30d' as check_name,
        avg(confidence) as value,
        'confidence' as unit,
        '>= 0.70' as threshold,
        'warn' as severity,
        coalesce(avg(confidence) >= 0.70, true) as passed,
        count(confidence) || ' runs with a fix suggested in 30 days' as detail
    from runs
    where
        fix_suggestion is not null
        and ts >= now() - interval '30 days'

),

views_present as (

    select
        4 as check_order,
        'views_present' as check_name,
        count(present_views.view_name)::double precision as value,
        'views' as unit,
        '= {{ public_views | length }}' as threshold,
        'error' as severity,
        count(present_views.view_name) = {{ public_views | length }} as passed,
        'missing: '
        || string_agg(expected_views.view_name, ', ' order by expected_views.view_name)
        filter (where present_views.view_name is null) as detail
    from expected_views
    left join present_views
        on expected_views.view_name = present_views.view_name

),

indexes_present as (

    select
        5 as check_order,
        'indexes_present' as check_name,
        count(present_indexes.index_name)::double precision as value,
        'indexes' as unit,
        '= {{ raw_indexes | length }}' as threshold,
        'error' as severity,
        count(present_indexes.index_name) = {{ raw_indexes | length }} as passed,
        'missing: '
        || string_agg(expected_indexes.index_name, ', ' order by expected_indexes.index_name)
        filter (where present_indexes.index_name is null) as detail
    from expected_indexes
    left join present_indexes
        on expected_indexes.index_name = present_indexes.index_name

),

{#
    Retention keeps each tenant x problem's first and last occurrence (by ts, then id, as
    `devdiag retention` decides) forever, so those rows do not count: the age of the oldest other
    row. Walks the ts index from the oldest row and stops at the first row that retention could
    delete (two index probes each).
-#}
oldest_unkept_run as (

    select runs.ts
    from runs
    where
        runs.problem_code is null
        or (
            exists (
                select
                from runs as earlier
                where
                    earlier.tenant_id = runs.tenant_id
                    and earlier.problem_code = runs.problem_code
                    and earlier.ts <= runs.ts
                    and (earlier.ts < runs.ts or earlier.id < runs.id)
            )
            and exists (
                select
                from runs as later
                where
                    later.tenant_id = runs.tenant_id
                    and later.problem_code = runs.problem_code
                    and later.ts >= runs.ts
                    and (later.ts > runs.ts or later.id > runs.id)
            )
        )
    order by runs.ts
    limit 1

),

retention_days as (

    select
        6 as check_order,
        'retention_days' as check_name,
        extract(epoch from now() - max(ts))::double precision / 86400 as value,
        'days' as unit,
        '<= 190' as threshold,
        'warn' as severity,
        coalesce(now() - max(ts) <= interval '190 days', true) as passed,
        'oldest row that is not a first or last occurrence of its tenant x problem' as detail
    from oldest_unkept_run

),

problem_diversity_today as (

    select
        7 as check_order,
        'problem_diversity_today' as check_name,
        count(distinct problem_code)::double precision as value,
        'problems' as unit,
        '<= 10' as threshold,
        'warn' as severity,
        count(distinct problem_code) <= 10 as passed,
        null::text as detail
    from runs
    where ts >= date_trunc('day', now(), 'utc')

),

checks as (

    {%- for check in check_ctes %}
        select
            check_order,
            check_name,
            value,
            unit,
            threshold,
            severity,
            passed,
            detail
        from {{ check }}
        {{ 'union all' if not loop.last }}
    {%- endfor %}

)

select * from checks
