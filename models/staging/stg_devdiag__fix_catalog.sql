with source as (

    select * from {{ source('devdiag', 'fix_catalog') }}

),

renamed as (

    select
        problem_code,
        fix_id,
        fix_title,
        prior as prior_confidence,
        catalog_rank
    from source

)

select * from renamed
