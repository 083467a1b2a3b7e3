-- Churn and value scores written by the Python scoring stage (winback/scoring/scores.py).
with source as (
    select * from {{ source('winback', 'customer_scores') }}
),

final as (
    select
        customer_id,
        p_alive,
        expected_purchases_30d,
        expected_purchases_90d,
        expected_purchases_365d,
        expected_next_purchase_date,
        expected_order_value,
        clv,
        churn_risk_band,
        is_stale as is_score_stale,
        as_of_date as scored_for_date
    from source
)

select * from final
