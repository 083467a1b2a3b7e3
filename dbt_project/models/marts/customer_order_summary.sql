{{ config(materialized='view') }}

-- The order statistics per customer with the columns that depend on the run date. A view
-- over the incremental stats table, so no run ever rewrites every customer just because a
-- day has passed.
with stats as (
    select * from {{ ref('int_customer_order_stats') }}
),

final as (
    select
        customer_id,
        first_order_at,
        last_order_at,
        first_order_date,
        last_order_date,
        orders_count,
        order_days,
        repeat_purchase_days,
        total_order_value,
        average_order_value,
        mean_repeat_order_value,
        mean_days_between_orders,
        median_days_between_orders,
        median_days_between_orders_before_last,
        last_gap_days,
        {{ days_between('first_order_date', 'last_order_date') }} as recency_days,
        {{ days_between('first_order_date', as_of_date()) }} as customer_age_days,
        {{ days_between('last_order_date', as_of_date()) }} as days_since_last_order,
        {{ as_of_date() }} as as_of_date
    from stats
)

select * from final
