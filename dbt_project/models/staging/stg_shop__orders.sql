with source as (
    select * from {{ source('shop', 'orders') }}
),

final as (
    select
        order_id,
        customer_id,
        -- A guest checkout: no customer account. Counted in revenue, left out of every
        -- customer model.
        customer_id is null as is_guest_order,
        ordered_at,
        cast(ordered_at at time zone 'UTC' as date) as order_date,
        status as order_status,
        status = 'completed' as is_completed,
        total as order_total,
        currency as currency_code,
        nullif(trim(coupon_code), '') as coupon_code,
        coalesce(discount_total, 0) as discount_total,
        _load_date as loaded_for_date,
        _loaded_at as loaded_at
    from source
)

select * from final
