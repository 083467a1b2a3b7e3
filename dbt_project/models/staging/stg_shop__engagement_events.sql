-- A table, unlike the other staging models: the deduplication sorts every event, and
-- three nodes read the result.
{{ config(materialized='table') }}

with source as (
    select * from {{ source('shop', 'engagement_events') }}
),

-- Providers retry webhooks: the same event can arrive twice under two ids.
deduplicated as (
    select
        *,
        row_number() over (
            partition by customer_id, channel, event_type, occurred_at, coalesce(message_id, '')
            order by event_id
        ) as copy_number
    from source
),

final as (
    select
        event_id,
        customer_id,
        channel,
        event_type,
        occurred_at,
        nullif(campaign_id, '') as campaign_id,
        nullif(message_id, '') as message_id
    from deduplicated
    where copy_number = 1
)

select * from final
