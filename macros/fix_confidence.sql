{#-
    The learning formula, defined once as a SQL function that models, the demo generator and the
    MCP server all call.

    A fix's success rate is a Beta posterior mean, shrunk twice:
      global  = (prior * k + successes_all) / (k + attempts_all)        k = devdiag_prior_strength
      tenant  = (global * m + successes_t) / (m + attempts_t)           m = devdiag_tenant_strength
    `fixed` counts as a success; `failed` and `manual` count as attempts that did not succeed.
    With no history the result is the catalog prior; a tenant with little history leans on all
    tenants; a tenant with much history follows its own outcomes.
-#}
{% macro fix_confidence_function(schema) %}
    create or replace function {{ schema }}.fix_confidence(
        prior double precision,
        successes_all bigint,
        attempts_all bigint,
        successes_tenant bigint,
        attempts_tenant bigint
    ) returns double precision
    language sql immutable parallel safe
    return (
        (
            (coalesce(prior, {{ var("devdiag_default_prior") }}) * {{ var("devdiag_prior_strength") }} + coalesce(successes_all, 0))
            / ({{ var("devdiag_prior_strength") }} + coalesce(attempts_all, 0))::double precision
        ) * {{ var("devdiag_tenant_strength") }} + coalesce(successes_tenant, 0)
    ) / ({{ var("devdiag_tenant_strength") }} + coalesce(attempts_tenant, 0))::double precision;

    comment on function {{ schema }}.fix_confidence(double precision, bigint, bigint, bigint, bigint) is
        'DevDiag learned confidence of a fix: Beta posterior from the catalog prior, shrunk from all tenants to one tenant.';
{% endmacro %}
