with source as (
    select * from {{ source('shop', 'loyalty_points') }}
),

final as (
    select
        entry_id,
        customer_id,
        occurred_at,
        entry_type,
        points,
        expires_at as expires_on
    from source
)

select * from final
