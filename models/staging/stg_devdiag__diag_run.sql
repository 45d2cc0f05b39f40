with source as (

    select * from {{ source('devdiag', 'diag_run') }}

),

renamed as (

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
        error_msg
    from source

)

select * from renamed
