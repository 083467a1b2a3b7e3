-- Abandoned carts that were never converted, as of the run date.
with carts as (
    select * from {{ ref('stg_shop__carts') }}
    where cast(created_at as date) <= {{ as_of_date() }}
),

abandoned as (
    select *
    from carts
    where cart_status = 'abandoned' and cast(status_changed_at as date) <= {{ as_of_date() }}
),

final as (
    select
        customer_id,
        count(*) as abandoned_carts,
        {{ days_between('min(status_changed_at)', as_of_date()) }} as oldest_abandoned_cart_days,
        {{ days_between('max(status_changed_at)', as_of_date()) }} as newest_abandoned_cart_days,
        sum(cart_value) as abandoned_cart_value
    from abandoned
    group by customer_id
)

select * from final
