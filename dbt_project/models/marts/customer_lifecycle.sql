{#-
    Lifecycle stage per customer as of the run date.

    The inactivity threshold is max(sector floor, k x the customer's own median gap between
    purchase days); customers with one purchase day use their sector's default. With t the
    threshold and d the days since the last purchase:
      lost          d > lost_ratio x t
      inactive      d > t              (exactly t days is not yet inactive)
      at_risk       d > at_risk_ratio x t
      reactivated   otherwise, when the gap before the last purchase exceeded the threshold
                    as it stood before that purchase (from the earlier gaps, or the
                    sector default for a second purchase day): the customer had become
                    inactive and came back
      new           otherwise, with a single purchase day
      active        otherwise
-#}
with summary as (
    select * from {{ ref('customer_order_summary') }}
),

purchases as (
    select * from {{ ref('int_customer_purchases') }}
),

sector_profiles as (
    select * from {{ ref('sector_profiles') }}
),

with_sector as (
    select
        summary.*,
        coalesce(purchases.sector, '{{ var("shop_sector") }}') as sector
    from summary
    left join purchases on summary.customer_id = purchases.customer_id
),

thresholds as (
    select
        with_sector.*,
        case
            when with_sector.order_days >= 2 then with_sector.median_days_between_orders
        end as typical_gap_days,
        case
            when with_sector.order_days >= 2
                then greatest(
                    sector_profiles.inactivity_floor_days,
                    {{ var('inactivity_gap_multiplier') }} * with_sector.median_days_between_orders
                )
            else sector_profiles.default_inactivity_days
        end as inactivity_threshold_days,
        case
            when with_sector.order_days >= 3
                then greatest(
                    sector_profiles.inactivity_floor_days,
                    {{ var('inactivity_gap_multiplier') }}
                    * with_sector.median_days_between_orders_before_last
                )
            when with_sector.order_days = 2 then sector_profiles.default_inactivity_days
        end as threshold_before_last_order_days,
        sector_profiles.typical_gap_days as sector_typical_gap_days
    from with_sector
    inner join sector_profiles on with_sector.sector = sector_profiles.sector
),

final as (
    select
        customer_id,
        sector,
        first_order_date,
        last_order_date,
        order_days,
        typical_gap_days,
        cast(inactivity_threshold_days as numeric) as inactivity_threshold_days,
        cast(threshold_before_last_order_days as numeric) as threshold_before_last_order_days,
        days_since_last_order,
        case
            when days_since_last_order > {{ var('lost_ratio') }} * inactivity_threshold_days
                then 'lost'
            when days_since_last_order > inactivity_threshold_days then 'inactive'
            when days_since_last_order > {{ var('at_risk_ratio') }} * inactivity_threshold_days
                then 'at_risk'
            when last_gap_days > threshold_before_last_order_days then 'reactivated'
            when order_days = 1 then 'new'
            else 'active'
        end as lifecycle_stage,
        {{ add_days('last_order_date', 'coalesce(typical_gap_days, sector_typical_gap_days)') }}
            as expected_next_order_date,
        as_of_date
    from thresholds
)

select * from final
