{#-
    The raw contract (DESIGN.md): schema devdiag, table diag_run, its nine indexes, the two
    least-privilege roles and the learning formula. This macro is the only place that DDL lives;
    `devdiag setup` and every `dbt build` (on-run-start) run it, and every statement is idempotent.
-#}

{% macro raw_index_definitions() %}
    {#- name -> (definition, the query it serves). The health check reads this list. -#}
    {{ return({
        "ix_diag_run_ts": ("(ts)",
            "freshness and new rows today (max(ts), ts >= current_date), the runs-stalled alert, v_recent_activity, monthly growth"),
        "ix_diag_run_run_id": ("(run_id)",
            "record_outcome: every finding of one run"),
        "ix_diag_run_problem_ts": ("(problem_code, ts)",
            "recent occurrences of one problem (alert 1, step 3); first and last sighting per problem"),
        "ix_diag_run_tenant_problem_ts": ("(tenant_id, problem_code, ts)",
            "episodes per tenant x problem (v_ttr_days); retention's first and last occurrence per tenant x problem"),
        "ix_diag_run_errors_ts": ("(ts) where error_msg is not null",
            "recent errors (alert 2, step 3)"),
        "ix_diag_run_outcomes": ("(problem_code, fix_suggestion, tenant_id) include (resolution, resolved_at, confidence) where resolution is not null",
            "learning and fix success: recorded outcomes per problem x fix (v_fix_ranking, v_fix_success)"),
        "ix_diag_run_fix_ts": ("(ts) where fix_suggestion is not null",
            "recent fix outcomes (alert 4, step 3); the 30-day fix-confidence health check"),
        "ix_diag_run_env_ts": ("(environment, ts)",
            "problem variety per environment (alert 5, step 2); v_env_diversity"),
        "ix_diag_run_resolved_at": ("(resolved_at) where resolution is not null",
            "outcomes recorded since a point in time: episode ends and incremental rebuilds"),
        "ix_diag_run_changed_at": ("using brin (changed_at)",
            "not the runbook's: rows written or updated since the last build (incremental models); BRIN, as rows are appended in changed_at order"),
    }) }}
{% endmacro %}


{% macro create_raw_schema() %}
    {%- set schema = "devdiag" -%}
    create schema if not exists {{ schema }};

    create table if not exists {{ schema }}.diag_run (
        id uuid primary key,
        run_id uuid not null,
        ts timestamptz not null,
        tenant_id text not null,
        environment text not null,
        problem_code text,
        fix_suggestion text,
        confidence double precision,
        resolution text,
        resolved_at timestamptz,
        error_msg text,
        changed_at timestamptz not null default now(),
        constraint diag_run_problem_code_format check (problem_code ~ '^[A-Z][A-Z0-9_]*$'),
        constraint diag_run_confidence_range check (confidence between 0 and 1),
        constraint diag_run_resolution_values check (resolution in ('fixed', 'manual', 'failed')),
        constraint diag_run_resolution_has_time check ((resolution is null) = (resolved_at is null)),
        constraint diag_run_error_msg_cap check (length(error_msg) <= 4000)
    );
    comment on table {{ schema }}.diag_run is
        'DevDiag raw runs: one row per finding of a diagnostic run (problem_code null for a clean run). Written by devdiag_writer.';

    {#- When a row was last written: what incremental models read to find the work since the last
        build. Not the runbook's; added to tables made before it (a stable default: no rewrite). -#}
    alter table {{ schema }}.diag_run add column if not exists changed_at timestamptz not null default now();
    comment on column {{ schema }}.diag_run.changed_at is
        'When the row was inserted or last updated (default now(); the trigger diag_run_changed_at sets it on update).';
    create or replace function {{ schema }}.touch_changed_at() returns trigger
    language plpgsql as $touch$
    begin
        new.changed_at := now();
        return new;
    end
    $touch$;
    create or replace trigger diag_run_changed_at
        before update on {{ schema }}.diag_run
        for each row execute function {{ schema }}.touch_changed_at();

    {% for name, spec in raw_index_definitions().items() %}
    create index if not exists {{ name }} on {{ schema }}.diag_run {{ spec[0] }};
    comment on index {{ schema }}.{{ name }} is '{{ spec[1] | replace("'", "''") }}';
    {% endfor %}

    {#- The fix catalog's priors, synced from mcp_devdiag/catalog.yaml by `devdiag setup`. -#}
    create table if not exists {{ schema }}.fix_catalog (
        problem_code text not null,
        fix_id text not null,
        fix_title text not null,
        prior double precision not null check (prior between 0 and 1),
        catalog_rank integer not null,
        primary key (problem_code, fix_id)
    );
    comment on table {{ schema }}.fix_catalog is
        'DevDiag fix catalog: every known fix and its prior confidence, synced from the package catalog.';

    {{ fix_confidence_function(schema) }}
    {{ create_roles(schema) }}
{% endmacro %}


{#- Roles are created without a password; `devdiag setup` sets them (as scram verifiers). -#}
{% macro create_roles(schema) %}
    do $roles$
    begin
        if not exists (select from pg_roles where rolname = 'devdiag_writer') then
            create role devdiag_writer login;
        end if;
        if not exists (select from pg_roles where rolname = 'grafana') then
            create role grafana login;
        end if;
    end
    $roles$;

    grant usage on schema {{ schema }} to devdiag_writer;
    grant select, insert, update on {{ schema }}.diag_run to devdiag_writer;
    revoke all on {{ schema }}.diag_run from grafana;
{% endmacro %}


{#- dbt's `grants` config grants SELECT on each public view; the schema USAGE it omits is here. -#}
{% macro grant_public_views() %}
    grant usage on schema devdiag to grafana;
{% endmacro %}


{#- `dbt run-operation devdiag_setup`: the raw schema without building models. -#}
{% macro devdiag_setup() %}
    {% do run_query(create_raw_schema()) %}
    {% do run_query(grant_public_views()) %}
{% endmacro %}
