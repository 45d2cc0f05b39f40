{#-
    The hourly activity aggregate, one definition for int_activity_hourly (complete hours, built)
    and v_activity_hourly (the hours since, live). `findings` names a CTE with run_id, ts,
    tenant_id, environment, problem_code, fix_suggestion and confidence.

    A run is counted once, on its representative row (its first problem code, or its clean row;
    a run's findings share its ts, so they share an hour): sums of `runs` over any set of rows are
    distinct runs, with no count(distinct).
-#}
{% macro activity_by_hour(findings) %}
    select
        date_trunc('hour', ts, 'utc') as hour,
        tenant_id,
        environment,
        problem_code,
        count(*) filter (where is_run_representative) as runs,
        count(problem_code) as findings,
        count(fix_suggestion) as suggestions,
        sum(confidence) filter (where fix_suggestion is not null) as confidence_sum,
        count(confidence) filter (where fix_suggestion is not null) as confidence_count,
        max(ts) as last_ts
    from (
        select
            ts,
            tenant_id,
            environment,
            problem_code,
            fix_suggestion,
            confidence,
            row_number() over (
                partition by run_id
                order by problem_code nulls first
            ) = 1 as is_run_representative
        from {{ findings }}
    ) as marked_findings
    group by 1, 2, 3, 4
{% endmacro %}
