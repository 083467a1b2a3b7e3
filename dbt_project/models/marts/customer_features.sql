{#
    dbt-postgres creates these indexes on each new build of the table, under names of its
    own; a named `create index if not exists` post-hook would find the name still taken
    by the replaced table's index and skip, leaving every other build without one.
    The customer index serves the audiences' per-journey look-ups (exits, messages).
#}
{{
    config(
        indexes=[
            {"columns": ["customer_id"], "unique": True},
            {"columns": ["rfm_segment"]},
        ],
    )
}}

-- One row per customer with everything an audience rule can use. Scores come from the
-- Python scoring stage (winback.customer_scores) by left join: the model works without them.
with customers as (
    select * from {{ ref('stg_shop__customers') }}
),

summary as (
    select * from {{ ref('customer_order_summary') }}
),

rfm as (
    select * from {{ ref('customer_rfm') }}
),

lifecycle as (
    select * from {{ ref('customer_lifecycle') }}
),

purchases as (
    select * from {{ ref('int_customer_purchases') }}
),

engagement as (
    select * from {{ ref('int_customer_engagement') }}
),

consent_state as (
    select * from {{ ref('int_customer_consent_state') }}
),

carts as (
    select * from {{ ref('int_customer_carts') }}
),

loyalty as (
    select * from {{ ref('int_customer_loyalty') }}
),

scores as (
    select * from {{ ref('stg_winback__customer_scores') }}
),

final as (
    select
        customers.customer_id,
        customers.first_name,
        customers.email,
        customers.phone,
        customers.country_code,
        customers.created_at,
        -- orders
        coalesce(summary.orders_count, 0)::bigint as orders_count,
        coalesce(summary.order_days, 0) as order_days,
        summary.first_order_date,
        summary.last_order_date,
        summary.days_since_last_order,
        coalesce(summary.total_order_value, 0) as total_order_value,
        summary.average_order_value,
        summary.median_days_between_orders,
        -- RFM
        rfm.recency_score,
        rfm.frequency_score,
        rfm.monetary_score,
        rfm.rfm_segment,
        -- lifecycle
        lifecycle.lifecycle_stage,
        lifecycle.sector,
        lifecycle.inactivity_threshold_days,
        lifecycle.expected_next_order_date,
        -- purchases
        purchases.favourite_category,
        purchases.last_purchased_category,
        purchases.last_purchased_products,
        -- engagement
        engagement.last_email_open_at,
        engagement.last_email_click_at,
        engagement.last_sms_click_at,
        engagement.days_since_last_open,
        coalesce(engagement.email_messages_7d, 0) as email_messages_7d,
        coalesce(engagement.email_messages_30d, 0) as email_messages_30d,
        coalesce(engagement.sms_messages_7d, 0) as sms_messages_7d,
        coalesce(engagement.sms_messages_30d, 0) as sms_messages_30d,
        -- carts
        coalesce(carts.abandoned_carts, 0) as abandoned_carts,
        carts.oldest_abandoned_cart_days,
        carts.newest_abandoned_cart_days,
        coalesce(carts.abandoned_cart_value, 0) as abandoned_cart_value,
        -- loyalty
        coalesce(loyalty.points_balance, 0) as points_balance,
        coalesce(loyalty.points_expiring_30d, 0) as points_expiring_30d,
        loyalty.next_points_expiry_date,
        -- consent, contact and suppression
        coalesce(consent_state.is_email_subscribed, false) as is_email_subscribed,
        coalesce(consent_state.is_sms_subscribed, false) as is_sms_subscribed,
        customers.email is not null as has_valid_email,
        customers.phone is not null as has_valid_phone,
        coalesce(engagement.has_email_bounced, false) as has_email_bounced,
        coalesce(engagement.has_complained, false) as has_complained,
        coalesce(
            engagement.has_email_bounced
            or engagement.has_complained
            or engagement.has_unsubscribed_since_consent,
            false
        ) as is_email_suppressed,
        coalesce(engagement.has_sms_stopped_since_consent, false) as is_sms_suppressed,
        -- scores
        scores.p_alive,
        scores.expected_purchases_30d,
        scores.expected_purchases_90d,
        scores.expected_purchases_365d,
        scores.expected_next_purchase_date,
        scores.expected_order_value,
        scores.clv,
        scores.churn_risk_band,
        {{ as_of_date() }} as as_of_date
    from customers
    left join summary on customers.customer_id = summary.customer_id
    left join rfm on customers.customer_id = rfm.customer_id
    left join lifecycle on customers.customer_id = lifecycle.customer_id
    left join purchases on customers.customer_id = purchases.customer_id
    left join engagement on customers.customer_id = engagement.customer_id
    left join consent_state on customers.customer_id = consent_state.customer_id
    left join carts on customers.customer_id = carts.customer_id
    left join loyalty on customers.customer_id = loyalty.customer_id
    left join scores on customers.customer_id = scores.customer_id
)

select * from final
