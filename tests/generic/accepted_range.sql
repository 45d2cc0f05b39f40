{#- Fails with every row whose column lies outside [min_value, max_value]; nulls pass. -#}
{% test accepted_range(model, column_name, min_value=none, max_value=none) %}
{#- A missing bound compares with null, which selects nothing. -#}
{%- set lower = min_value if min_value is not none else 'null' -%}
{%- set upper = max_value if max_value is not none else 'null' %}

with checked_values as (

    select {{ column_name }} as checked_value
    from {{ model }}
    where {{ column_name }} is not null

),

out_of_range as (

    select checked_value
    from checked_values
    where
        checked_value < {{ lower }}
        or checked_value > {{ upper }}

)

select * from out_of_range

{% endtest %}
