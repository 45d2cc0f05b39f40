{#-
    On a Citus coordinator (the citus extension exists in this database; `devdiag setup --citus`
    creates it): diag_run is distributed by tenant_id, fix_catalog becomes a reference table (a copy
    on every node), and the settings the distributed layout needs are made the database's. Does
    nothing elsewhere, and nothing twice. Runs inside create_raw_schema, after the tables exist.

    - Citus keeps a unique key only when it holds the distribution column: diag_run's primary key
      becomes (id, tenant_id). Writers use `on conflict do nothing` without a target, right on
      both layouts.
    - Row-level security runs on the workers: the tenant reaches them through `set local`, which
      Citus passes on with citus.propagate_set_commands = local (devdiag_db.db.tenant_transaction).
    - The changed_at trigger runs on the shards: citus.enable_unsafe_triggers lets a distributed
      table keep it (it only touches the row being updated, so it is safe here).
    - error_memory (the team memory) is distributed by tenant_id too, co-located with diag_run.
    - The other tables (tokens, tenant readers) and the dbt models stay on the coordinator, except
      the per-tenant dbt tables, which distribute_by_tenant() co-locates with diag_run.
-#}
{% macro citus_layout(schema) %}
    do $citus$
    begin
        if not exists (select from pg_extension where extname = 'citus') then
            return;
        end if;
        execute format('alter database %I set citus.propagate_set_commands = %L', current_database(), 'local');
        execute format('alter database %I set citus.enable_unsafe_triggers = on', current_database());
        perform set_config('citus.enable_unsafe_triggers', 'on', true);
        if not exists (select from pg_dist_partition where logicalrelid = '{{ schema }}.fix_catalog'::regclass) then
            perform create_reference_table('{{ schema }}.fix_catalog');
            perform truncate_local_data_after_distributing_table('{{ schema }}.fix_catalog');
        end if;
        if not exists (select from pg_dist_partition where logicalrelid = '{{ schema }}.diag_run'::regclass) then
            if pg_get_constraintdef(
                (select oid from pg_constraint where conname = 'diag_run_pkey'
                 and conrelid = '{{ schema }}.diag_run'::regclass)
            ) = 'PRIMARY KEY (id)' then
                alter table {{ schema }}.diag_run drop constraint diag_run_pkey, add primary key (id, tenant_id);
            end if;
            perform create_distributed_table('{{ schema }}.diag_run', 'tenant_id');
            perform truncate_local_data_after_distributing_table('{{ schema }}.diag_run');
        end if;
        if not exists (select from pg_dist_partition where logicalrelid = '{{ schema }}.error_memory'::regclass) then
            perform create_distributed_table('{{ schema }}.error_memory', 'tenant_id', colocate_with => '{{ schema }}.diag_run');
            perform truncate_local_data_after_distributing_table('{{ schema }}.error_memory');
        end if;
        -- v_recent_activity and the live hour of v_activity_hourly read diag_run: on Citus their
        -- reader reads its shards itself (see distribute_by_tenant), where row-level security is on
        grant select on {{ schema }}.diag_run to grafana;
        if not exists (
            select from pg_policy
            where polrelid = '{{ schema }}.diag_run'::regclass and polname = 'grafana_reads_all'
        ) then
            create policy grafana_reads_all on {{ schema }}.diag_run for select to grafana using (true);
        end if;
    end
    $citus$;
{% endmacro %}


{#-
    post-hook of the dbt tables that hold per-tenant rows: on Citus, distribute the table just built
    by tenant_id, co-located with diag_run, so a tenant's rows of both sit on one shard. A no-op on
    one node and on a table already distributed (an incremental run keeps its layout).

    Citus reads a view's shards with the rights of the user who queries the view, not the view's
    owner's: `readers`, the roles granted a public view over this table, get SELECT on the table
    itself (the same rows the view shows them).
-#}
{% macro distribute_by_tenant(readers=['grafana']) %}
{%- set table = this.schema ~ '.' ~ this.identifier %}
    do $distribute$
    begin
        if exists (select from pg_extension where extname = 'citus') then
            -- nested, not `and`: pg_dist_partition exists only where citus does
            if not exists (select from pg_dist_partition where logicalrelid = '{{ table }}'::regclass) then
                perform create_distributed_table('{{ table }}', 'tenant_id', colocate_with => 'devdiag.diag_run');
            end if;
            grant select on {{ table }} to {{ readers | join(', ') }};
        end if;
    end
    $distribute$
{% endmacro %}


{#-
    The raw runs v_activity_hourly adds live to its built hours: ``runs`` on one node; on Citus no
    rows. There int_activity_hourly stays on the coordinator, and a view that also read the
    distributed raw table would copy the week's hours through intermediate results on every read
    (1.3 s p95 at 1M runs, against 22 ms): the dashboard's hourly view is one build (5 minutes) behind.
-#}
{% macro live_runs(runs) %}
    {%- if is_citus() -%}
    (
        select
            null::uuid as run_id,
            null::timestamptz as ts,
            null::text as tenant_id,
            null::text as environment,
            null::text as problem_code,
            null::text as fix_suggestion,
            null::double precision as confidence
        where false
    ) as no_live_runs
{%- else -%}
        {{ runs }}
    {%- endif -%}
{% endmacro %}
