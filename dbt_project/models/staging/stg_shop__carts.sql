with source as (
    select * from {{ source('shop', 'carts') }}
),

final as (
    select
        cart_id,
        customer_id,
        created_at,
        status as cart_status,
        status_changed_at,
        cart_value
    from source
)

select * from final
