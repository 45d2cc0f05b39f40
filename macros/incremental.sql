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


{#- The UTC days (and their first instant) of the rows changed since the last build that match `where`. -#}
{% macro changed_utc_days(where) %}
    select distinct
        (ts at time zone 'utc')::date as day,
        ((ts at time zone 'utc')::date)::timestamp at time zone 'utc' as day_start
    from {{ ref('stg_devdiag__diag_run') }}
    where
        {{ where }}
        and {{ changed_since_last_build() }}
{% endmacro %}
