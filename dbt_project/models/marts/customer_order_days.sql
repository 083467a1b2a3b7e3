{{ config(materialized='view') }}

-- One row per customer and purchase day up to the run date, as the scoring stage's
-- back-test reads it. A view over int_order_days: an interface, not a copy.
with order_days as (
    select * from {{ ref('int_order_days') }}
),

final as (
    select
        customer_id,
        order_date,
        orders_on_day,
        day_value
    from order_days
)

select * from final
