with source as (
    select * from {{ source('shop', 'customers') }}
),

final as (
    select
        customer_id,
        email,
        phone,
        nullif(trim(first_name), '') as first_name,
        country as country_code,
        created_at,
        _load_date as loaded_for_date
    from source
)

select * from final
