{#- Fails with one row per combination of the given columns that occurs more than once. -#}
{% test unique_combination_of_columns(model, combination_of_columns) %}

with keys as (

    select {{ combination_of_columns | join(', ') }}
    from {{ model }}

),

duplicated_keys as (

    select
        {{ combination_of_columns | join(',\n        ') }},
        count(*) as occurrences
    from keys
    group by {{ combination_of_columns | join(', ') }}
    having count(*) > 1

)

select * from duplicated_keys

{% endtest %}
