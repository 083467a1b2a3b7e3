{{ config(materialized='view') }}

-- Orders as the Python stages read them (a journey's purchases, the products a customer
-- already bought). A view: the interface to stg_shop__orders, no copy of 10M rows, and
-- the planner still uses raw.orders' indexes through it.
with orders as (
    select * from {{ ref('stg_shop__orders') }}
),

final as (
    select
        order_id,
        customer_id,
        ordered_at,
        order_date,
        order_status,
        is_completed,
        order_total,
        currency_code,
        coupon_code,
        discount_total
    from orders
)

select * from final
