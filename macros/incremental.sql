{#-
    Incremental models find their work through diag_run.changed_at (set on insert and on update):
    the rows written since the previous build of the model began, less a lookback that covers
    write transactions still open when that build read the table (a row's changed_at is its
    transaction's start). Every incremental model recomputes what those rows touch from the raw
    table, so reading a change twice is harmless. Deletes (retention, a demo refresh) and writes
    held open longer than the lookback are recomputed by a full refresh
    (`devdiag build --full-refresh`, nightly from cron).
-#}
{% macro changed_since_last_build() %}
{#- A table made before the model was incremental has no built_at: then every row is work. -#}
{%- set columns = adapter.get_columns_in_relation(this) | map(attribute='name') | list if execute else [] -%}
{%- if 'built_at' in columns %}
    changed_at >= (
        select coalesce(max(built_at), '-infinity'::timestamptz) from {{ this }}
    ) - interval '{{ var("devdiag_incremental_lookback") }}'
    {%- else %}
    true
{%- endif %}
{% endmacro %}


{#-
    The raw rows (`columns` of stg_devdiag__diag_run, filtered by `where`) that a build of a model
    kept per UTC `period` ('day' or 'hour') must read: every one on a full build; on an
    incremental one, those of the periods holding a row changed since the last build. Each changed
    period is read by its own range scan of the ts index: a lateral subquery that `offset 0` keeps
    from being flattened, since a plain join lets the planner scan the whole raw table instead.
    On Citus, which cannot push such a lateral subquery down to the shards, the changed periods are
    one intermediate result and each shard reads the rows from the earliest of them on, keeping
    those of a changed period.
-#}
{% macro rows_of_changed_periods(period, where, columns) %}
{%- set length = {'day': "interval '24 hours'", 'hour': "interval '1 hour'"}[period] -%}
{%- if is_incremental() and is_citus() %}
    with changed_periods as materialized (
        select distinct date_trunc('{{ period }}', ts, 'utc') as period_start
        from {{ ref('stg_devdiag__diag_run') }}
        where
            {{ where }}
            and {{ changed_since_last_build() }}
    )

    select {{ columns | join(', ') }}
    from {{ ref('stg_devdiag__diag_run') }}
    where
        ts >= (select min(changed_periods.period_start) from changed_periods)
        and date_trunc('{{ period }}', ts, 'utc') in (select changed_periods.period_start from changed_periods)
        and {{ where }}
{%- elif is_incremental() %}
    select
{%- for column in columns %}
        period_rows.{{ column }}{{ "," if not loop.last }}
        {%- endfor %}
    from (
        select distinct date_trunc('{{ period }}', ts, 'utc') as period_start
        from {{ ref('stg_devdiag__diag_run') }}
        where
            {{ where }}
            and {{ changed_since_last_build() }}
    ) as changed_periods
    cross join lateral (
        select {{ columns | join(', ') }}
        from {{ ref('stg_devdiag__diag_run') }}
        where
            ts >= changed_periods.period_start
            and ts < changed_periods.period_start + {{ length }}
            and {{ where }}
        offset 0
    ) as period_rows
    {%- else %}
    select {{ columns | join(', ') }}
    from {{ ref('stg_devdiag__diag_run') }}
    where {{ where }}
{%- endif %}
{% endmacro %}


{#- True on a Citus coordinator (the citus extension exists in this database); false while parsing. -#}
{% macro is_citus() %}
{%- if not execute -%}
{{ return(false) }}
{%- endif -%}
{%- set found = run_query("select exists (select from pg_extension where extname = 'citus')") -%}
{{ return(found.columns[0].values()[0]) }}
{% endmacro %}
