{#-
    One select, no CTEs: PostgreSQL cannot pull a view that has a WITH clause up into the query
    that reads it, so `v_recent_activity ... order by ts desc limit 100` would sort a week of rows
    instead of reading the ts index backwards (0.1 ms against 400 ms at 10M rows).
-#}
select
    id as finding_id,
    run_id,
    ts,
    tenant_id,
    environment,
    problem_code,
    fix_suggestion,
    confidence,
    resolution,
    resolved_at,
    error_msg,
    changed_at
from {{ source('devdiag', 'diag_run') }}
