{#- The scoring stage (Python, lifetimes) owns winback.customer_scores. customer_features
    left-joins it, so the table must exist before the first scoring run: create it empty
    with the scoring stage's columns when missing. -#}
{% macro create_scores_table_if_missing() %}
create schema if not exists winback;
create table if not exists winback.customer_scores (
    customer_id text primary key,
    p_alive double precision,
    expected_purchases_30d double precision,
    expected_purchases_90d double precision,
    expected_purchases_365d double precision,
    expected_next_purchase_date date,
    expected_order_value numeric,
    clv numeric,
    churn_risk_band text,
    model_fit_id bigint,
    is_stale boolean not null default false,
    stale_reason text,
    as_of_date date,
    scored_at timestamptz
)
{% endmacro %}
