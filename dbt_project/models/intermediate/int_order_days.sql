{{ config(materialized='view') }}

-- One row per customer and purchase day: purchases are counted by distinct day, so two
-- orders on the same day are one purchase (as BG/NBD and RFM expect). A view: only
-- int_customer_rfm_scores reads it.
with orders as (
    select * from {{ ref('stg_shop__orders') }}
),

completed_until_run_date as (
    select *
    from orders
    where is_completed and not is_guest_order and order_date <= {{ as_of_date() }}
),

final as (
    select
        customer_id,
        order_date,
        count(*) as orders_on_day,
        sum(order_total) as day_value
    from completed_until_run_date
    group by customer_id, order_date
)

select * from final
