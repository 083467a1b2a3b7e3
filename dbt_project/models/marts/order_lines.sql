{{ config(materialized='view') }}

-- Order lines as the Python stages read them (product popularity, what a customer already
-- bought). A view over stg_shop__order_lines: an interface, not a copy.
with order_lines as (
    select * from {{ ref('stg_shop__order_lines') }}
),

final as (
    select
        order_line_id,
        order_id,
        line_number,
        product_id,
        category,
        quantity,
        unit_price,
        line_total
    from order_lines
)

select * from final
