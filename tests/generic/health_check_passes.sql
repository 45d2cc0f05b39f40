{#-
    A health check (one row of the health_checks model) must be measured and pass. The failing
    row carries the measured value and the threshold, so the dbt result says what was wrong.
-#}
{% test health_check_passes(model, check_name) %}

with check_row as (

    select
        check_name,
        value,
        threshold,
        passed
    from {{ model }}
    where check_name = '{{ check_name }}'

),

unmeasured as (

    select
        '{{ check_name }}' as check_name,
        null::double precision as value,
        'no such check' as threshold,
        false as passed
    where not exists (select from check_row)

),

failing as (

    select * from check_row
    where not passed
    union all
    select * from unmeasured

)

select * from failing

{% endtest %}
