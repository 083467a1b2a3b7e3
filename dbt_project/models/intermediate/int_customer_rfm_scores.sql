{#-
    Recency, frequency and monetary scores (1-5) over the scoring window.

    Deterministic by construction: scores are functions of the values only, so identical
    customers always get identical scores and reruns agree (NTILE would split ties at
    random). Recency and monetary use the percentile rank with ties sharing the lowest
    rank; frequency, where most customers tie on one or two purchase days, uses the
    thresholds in the `rfm_frequency_thresholds` variable.
-#}
{% set thresholds = var('rfm_frequency_thresholds') %}

with order_days as (
    select * from {{ ref('int_order_days') }}
),

in_window as (
    select *
    from order_days
    where order_date > {{ as_of_date() }} - {{ var('rfm_window_days') }}
),

per_customer as (
    select
        customer_id,
        {{ days_between('max(order_date)', as_of_date()) }} as recency_days,
        count(*) as frequency,
        sum(day_value) as monetary
    from in_window
    group by customer_id
),

scored as (
    select
        customer_id,
        recency_days,
        frequency,
        monetary,
        least(5, 1 + floor(5 * percent_rank() over (order by recency_days desc)))::int
            as recency_score,
        case
            when frequency >= {{ thresholds[3] }} then 5
            when frequency >= {{ thresholds[2] }} then 4
            when frequency >= {{ thresholds[1] }} then 3
            when frequency >= {{ thresholds[0] }} then 2
            else 1
        end as frequency_score,
        least(5, 1 + floor(5 * percent_rank() over (order by monetary asc)))::int
            as monetary_score
    from per_customer
),

final as (
    select
        *,
        ceil((frequency_score + monetary_score) / 2.0)::int as frequency_monetary_score
    from scored
)

select * from final
