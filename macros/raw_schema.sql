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
    -- created once, not replaced: on Citus a trigger statement on the distributed table is sent to
    -- the workers as it was written, and a multi-statement string (this one's) is refused there
    do $trigger$
    begin
        if not exists (
            select from pg_trigger
            where tgrelid = '{{ schema }}.diag_run'::regclass and tgname = 'diag_run_changed_at'
        ) then
            create trigger diag_run_changed_at
                before update on {{ schema }}.diag_run
                for each row execute function {{ schema }}.touch_changed_at();
        end if;
    end
    $trigger$;

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
    {{ create_error_memory(schema) }}
    {{ create_tenancy(schema) }}
    {{ citus_layout(schema) }}
{% endmacro %}


{#-
    The team's memory (mcp_devdiag/memory.py): one row per tenant and error signature (the error's
    key lines with numbers, paths, ids, hosts and quoted names masked), the runs seen with it, and
    the latest outcome a user recorded for it with their note. Not the runbook's; the writer keeps
    it with every run it writes. diagnose finds the candidates through `lsh` (MinHash keys of the
    signature's words, salted with the tenant: a GIN lookup, whatever the memory's size) and ranks
    them by pg_trgm similarity.
-#}
{% macro create_error_memory(schema) %}
    create table if not exists {{ schema }}.error_memory (
        tenant_id text not null,
        signature text not null,
        lsh integer [] not null,
        problem_code text,
        runs bigint not null,
        first_seen timestamptz not null,
        last_seen timestamptz not null,
        last_run_id uuid not null,
        outcome_run_id uuid,
        resolution text,
        note text,
        resolved_at timestamptz,
        primary key (tenant_id, signature),
        constraint error_memory_signature_cap check (length(signature) <= 300),
        constraint error_memory_note_cap check (length(note) <= 500),
        constraint error_memory_resolution_values check (resolution in ('fixed', 'manual', 'failed')),
        constraint error_memory_outcome_has_time check ((resolution is null) = (resolved_at is null))
    );
    comment on table {{ schema }}.error_memory is
        'DevDiag team memory: per tenant and normalised error signature, the runs seen and the latest outcome and note.';
    -- fastupdate off: a pending list would be scanned whole by every lookup until a vacuum merges it
    create index if not exists ix_error_memory_lsh on {{ schema }}.error_memory using gin (lsh) with (fastupdate = off);
    comment on index {{ schema }}.ix_error_memory_lsh is
        'diagnose: the signatures of one tenant that share a MinHash key with an error (the candidates to rank)';
    grant select, insert on {{ schema }}.error_memory to devdiag_writer;
    grant update (problem_code, runs, first_seen, last_seen, last_run_id, outcome_run_id, resolution, note, resolved_at)
        on {{ schema }}.error_memory to devdiag_writer;
    revoke all on {{ schema }}.error_memory from public, grafana;
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
    -- What the writer does and no more: insert runs, read its tenant's, record outcomes. No
    -- table-wide UPDATE (which would also allow `lock table ... in access exclusive mode`).
    revoke update, delete, truncate, references, trigger on {{ schema }}.diag_run from devdiag_writer;
    grant select, insert on {{ schema }}.diag_run to devdiag_writer;
    grant update (resolution, resolved_at) on {{ schema }}.diag_run to devdiag_writer;
    revoke all on {{ schema }}.diag_run from grafana;
{% endmacro %}


{#-
    Tenants are isolated in the database: row-level security on every table that holds a tenant's
    rows, for the role the server writes with. Each transaction of the server sets its tenant with
    set_config('devdiag.tenant', ..., true); without it the writer sees and writes nothing. The
    owner (who runs dbt, retention, backups and `devdiag load`) owns the tables and so is not
    subject to these policies; RLS is enabled, not forced, for that reason (forcing it would also
    refuse the owner's COPY). No other role owns them or has BYPASSRLS.

    Every `dbt build` runs this: the ALTER TABLE and CREATE POLICY below take an ACCESS EXCLUSIVE
    lock (every reader, Grafana too, would queue behind it), so they run only when the policy is
    missing or older than tenancy_version.
-#}
{% macro create_tenancy(schema) %}
    {%- set tenancy_version = "devdiag tenancy 2" -%}
    create table if not exists {{ schema }}.api_token (
        key_id text primary key,
        tenant_id text not null,
        name text not null,
        secret_sha256 bytea not null,
        created_at timestamptz not null default now(),
        expires_at timestamptz,
        last_used_at timestamptz,
        revoked_at timestamptz,
        constraint api_token_key_id_format check (key_id ~ '^[a-z0-9]{8}$'),
        constraint api_token_hash_length check (length(secret_sha256) = 32)
    );
    comment on table {{ schema }}.api_token is
        'Team-service tokens: only the SHA-256 of each secret is kept; the server checks them through devdiag.token_lookup.';
    -- A name is unique among a tenant's live tokens: a revoked one's name may be used again.
    create unique index if not exists api_token_live_name on {{ schema }}.api_token (tenant_id, name)
        where revoked_at is null;

    {#- The tenants that have a Grafana read role (`devdiag role grafana-tenant`): their views are
        made again after every dbt build, which drops them with the public views they read. -#}
    create table if not exists {{ schema }}.tenant_reader (
        tenant_id text primary key,
        role_name text not null unique,
        schema_name text not null unique,
        created_at timestamptz not null default now()
    );
    comment on table {{ schema }}.tenant_reader is
        'One read-only role per tenant for a team''s own Grafana, and the schema of its tenant-filtered views.';

    do $tenancy$
    declare
        t regclass;
    begin
        foreach t in array array['{{ schema }}.diag_run', '{{ schema }}.api_token', '{{ schema }}.tenant_reader',
                                 '{{ schema }}.error_memory']::regclass[] loop
            if not (select relrowsecurity from pg_class where oid = t) then
                execute format('alter table %s enable row level security', t);
            end if;
        end loop;
        foreach t in array array['{{ schema }}.diag_run', '{{ schema }}.api_token', '{{ schema }}.error_memory']::regclass[] loop
            if coalesce((select obj_description(p.oid, 'pg_policy') from pg_policy as p
                         where p.polrelid = t and p.polname = 'tenant_isolation'), '') <> '{{ tenancy_version }}' then
                execute format('drop policy if exists tenant_isolation on %s', t);
                execute format($policy$
                    create policy tenant_isolation on %s as permissive for all to devdiag_writer
                        using (tenant_id = current_setting('devdiag.tenant', true))
                        with check (tenant_id = current_setting('devdiag.tenant', true))
                    $policy$, t);
                execute format('comment on policy tenant_isolation on %s is %L', t, '{{ tenancy_version }}');
            end if;
        end loop;
    end
    $tenancy$;
    revoke all on {{ schema }}.api_token from public, devdiag_writer, grafana;
    revoke all on {{ schema }}.tenant_reader from public, devdiag_writer, grafana;

    -- Before a request has a tenant, the server may only ask this: the tenant, hash and dates of
    -- one key id, and note its use (at most once a minute: a busy token costs no write per call).
    create or replace function {{ schema }}.token_lookup(p_key_id text)
    returns table (tenant_id text, name text, secret_sha256 bytea, expires_at timestamptz, revoked_at timestamptz)
    language sql stable security definer set search_path = pg_catalog, pg_temp as $lookup$
        select t.tenant_id, t.name, t.secret_sha256, t.expires_at, t.revoked_at
        from {{ schema }}.api_token as t
        where t.key_id = p_key_id
    $lookup$;
    create or replace function {{ schema }}.token_used(p_key_id text) returns void
    language sql volatile security definer set search_path = pg_catalog, pg_temp as $used$
        update {{ schema }}.api_token as t set last_used_at = now()
        where t.key_id = p_key_id and (t.last_used_at is null or t.last_used_at < now() - interval '1 minute')
    $used$;
    revoke all on function {{ schema }}.token_lookup(text) from public;
    revoke all on function {{ schema }}.token_used(text) from public;
    grant execute on function {{ schema }}.token_lookup(text) to devdiag_writer;
    grant execute on function {{ schema }}.token_used(text) to devdiag_writer;

    {{ create_tenant_views_function(schema) }}
{% endmacro %}


{#-
    (Re)creates every registered tenant's views: schema devdiag_tenant_<slug>, owned by the owner
    (so its views read the public views with the owner's rights), USAGE and SELECT for that
    tenant's role only. Same names and columns as the public views, filtered to one tenant:
    v_problem_counts, v_ttr_days, v_activity_hourly, v_recent_activity, v_fix_ranking (the
    tenant's own rows; not the all-tenants '*' fallback rows). The two all-tenant views are
    rebuilt from per-tenant sources: v_fix_success from int_fix_outcomes (per tenant x problem x
    fix), v_env_diversity from the raw table (a scan of the tenant's findings, ~ its history).
    A view whose source is missing (a failed build) is skipped, never an error: the next build
    makes it. Returns the number of views made.
-#}
{% macro create_tenant_views_function(schema) %}
    create or replace function {{ schema }}.refresh_tenant_views() returns integer
    language plpgsql set search_path = pg_catalog, pg_temp as $refresh$
    declare
        r record;
        v text;
        made integer := 0;
        filtered constant text[] := array['v_problem_counts', 'v_ttr_days', 'v_activity_hourly',
                                          'v_recent_activity', 'v_fix_ranking'];
    begin
        for r in select tenant_id, role_name, schema_name from {{ schema }}.tenant_reader order by tenant_id loop
            execute format('create schema if not exists %I', r.schema_name);
            execute format('revoke all on schema %I from public', r.schema_name);
            foreach v in array filtered loop
                execute format('drop view if exists %I.%I', r.schema_name, v);
                if to_regclass(format('{{ schema }}.%I', v)) is not null then
                    execute format('create view %I.%I as select * from {{ schema }}.%I where tenant_id = %L',
                                   r.schema_name, v, v, r.tenant_id);
                    made := made + 1;
                end if;
            end loop;
            execute format('drop view if exists %I.v_fix_success', r.schema_name);
            if to_regclass('{{ schema }}.int_fix_outcomes') is not null then
                execute format($view$
                    create view %I.v_fix_success as
                    select
                        problem_code,
                        fix_suggestion,
                        sum(confidence_sum) / nullif(sum(confidence_count), 0)::double precision as avg_confidence,
                        sum(successes)::bigint as successful_fixes,
                        sum(attempts)::bigint as total_attempts,
                        max(last_success) as last_success
                    from {{ schema }}.int_fix_outcomes
                    where tenant_id = %L
                    group by 1, 2
                $view$, r.schema_name, r.tenant_id);
                made := made + 1;
            end if;
            execute format('drop view if exists %I.v_env_diversity', r.schema_name);
            execute format($view$
                create view %I.v_env_diversity as
                select
                    problem_code,
                    count(distinct environment) as environment_combos,
                    min(ts) as first_seen,
                    max(ts) as last_seen
                from {{ schema }}.diag_run
                where tenant_id = %L and problem_code is not null
                group by 1
            $view$, r.schema_name, r.tenant_id);
            made := made + 1;
            if exists (select from pg_roles where rolname = r.role_name) then
                execute format('grant usage on schema %I to %I', r.schema_name, r.role_name);
                execute format('grant select on all tables in schema %I to %I', r.schema_name, r.role_name);
            end if;
        end loop;
        return made;
    end
    $refresh$;
    revoke all on function {{ schema }}.refresh_tenant_views() from public;
{% endmacro %}


{#- on-run-end: the tenants' views, which the build dropped with the public views they read. -#}
{% macro refresh_tenant_views() %}
    do $refresh$
    begin
        if to_regprocedure('devdiag.refresh_tenant_views()') is not null then
            perform devdiag.refresh_tenant_views();
        end if;
    end
    $refresh$;
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
