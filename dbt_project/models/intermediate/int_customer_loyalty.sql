-- Points balance and points that expire within 30 days of the run date. Expiring points
-- are earned entries expiring in that period, capped by the balance (spent points are
-- taken from the oldest first, so the cap keeps the figure honest without FIFO matching).
with ledger as (
    select * from {{ ref('stg_shop__loyalty_points') }}
    where cast(occurred_at as date) <= {{ as_of_date() }}
),

final as (
    select
        customer_id,
        sum(points) as points_balance,
        least(
            greatest(sum(points), 0),
            coalesce(sum(points) filter (
                where entry_type = 'earned'
                and expires_on > {{ as_of_date() }}
                and expires_on <= {{ as_of_date() }} + 30
            ), 0)
        ) as points_expiring_30d,
        min(expires_on) filter (
            where entry_type = 'earned' and expires_on > {{ as_of_date() }}
        ) as next_points_expiry_date
    from ledger
    group by customer_id
)

select * from final
