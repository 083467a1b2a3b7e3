with scores as (
    select * from {{ ref('int_customer_rfm_scores') }}
),

segments as (
    select * from {{ ref('rfm_segments') }}
),

final as (
    select
        scores.customer_id,
        scores.recency_days,
        scores.frequency,
        scores.monetary,
        scores.recency_score,
        scores.frequency_score,
        scores.monetary_score,
        scores.frequency_monetary_score,
        segments.rfm_segment,
        {{ as_of_date() }} as as_of_date
    from scores
    inner join segments
        on
            scores.recency_score = segments.recency_score
            and scores.frequency_monetary_score = segments.frequency_monetary_score
)

select * from final
