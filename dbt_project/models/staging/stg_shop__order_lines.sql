with source as (
    select * from {{ source('shop', 'order_lines') }}
),

final as (
    select
        order_id || '-' || line_number as order_line_id,
        order_id,
        line_number,
        product_id,
        category,
        quantity,
        unit_price,
        quantity * unit_price as line_total
    from source
)

select * from final
