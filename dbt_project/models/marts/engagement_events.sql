{{ config(materialized='view') }}

-- The shop's engagement events, deduplicated, as the Python stages read them (what
-- happened to a journey's messages, each customer's usual open hour). A view over the
-- incremental stg_shop__engagement_events, whose indexes it keeps using.
with events as (
    select * from {{ ref('stg_shop__engagement_events') }}
),

final as (
    select
        event_id,
        customer_id,
        channel,
        event_type,
        occurred_at,
        campaign_id,
        message_id
    from events
)

select * from final
