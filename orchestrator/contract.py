"""Names the rest of the system relies on, in one place for Python.

The SQL sources stay the truth: the views are the `v_*` models in models/marts/, the indexes are
`raw_index_definitions()` in macros/raw_schema.sql; tests/python/test_contract.py keeps these in step.
"""

PUBLIC_VIEWS = (
    "v_problem_counts",
    "v_fix_success",
    "v_ttr_days",
    "v_env_diversity",
    "v_recent_activity",
    "v_fix_ranking",
    # not one of the runbook's six: the hourly aggregate the dashboard and the alerts read
    "v_activity_hourly",
)
RAW_INDEXES = (
    "ix_diag_run_ts",
    "ix_diag_run_run_id",
    "ix_diag_run_problem_ts",
    "ix_diag_run_tenant_problem_ts",
    "ix_diag_run_errors_ts",
    "ix_diag_run_outcomes",
    "ix_diag_run_fix_ts",
    "ix_diag_run_env_ts",
    "ix_diag_run_resolved_at",
    # not one of the runbook's nine: rows changed since the last build, for incremental models (BRIN)
    "ix_diag_run_changed_at",
)
