{#-
    A table, unlike the other staging models: the deduplication sorts events, and three
    nodes read the result. Incremental: a daily run re-deduplicates only the customers
    with events loaded (or reloaded) since its latest load, every event of theirs, so it
    keeps the copy a full refresh keeps (the duplicates of an event share its customer).
    A customer whose only events moved to another customer on a reload comes out as an
    empty row, for delete+insert to clear their old rows, and the post-hook drops it.
    Indexed by customer (the increment's delete, each journey's send-hour probe) and by
    campaign (a journey reads its own campaign's events, a sliver of them all).
-#}
{{
    config(
        materialized='incremental',
        unique_key='customer_id',
        incremental_strategy='delete+insert',
        on_schema_change='fail',
        post_hook=[
            "delete from {{ this }} where event_id is null",
            "create index if not exists {{ this.name }}_customer_idx on {{ this }} (customer_id)",
            "create index if not exists {{ this.name }}_campaign_idx on {{ this }} (campaign_id)",
            "analyze {{ this }}",
        ],
    )
}}

-- noqa: disable=LT02
with source as (
    select * from {{ source('shop', 'engagement_events') }}
),

{% if is_incremental() %}
arrived as (
    select
        event_id,
        customer_id
    from source
    where _loaded_at > {{ latest_load_of_this('loaded_at') }}
),

changed_customers as (
    select customer_id from arrived
    union
    select previous.customer_id
    from {{ this }} as previous
    inner join arrived on previous.event_id = arrived.event_id
),

events_in_scope as (
    select source.*
    from source
    inner join changed_customers on source.customer_id = changed_customers.customer_id
),
{% else %}
events_in_scope as (
    select * from source
),
{% endif %}

-- Providers retry webhooks: the same event can arrive twice under two ids.
deduplicated as (
    select
        *,
        row_number() over (
            partition by customer_id, channel, event_type, occurred_at, coalesce(message_id, '')
            order by event_id
        ) as copy_number
    from events_in_scope
),

kept as (
    select
        event_id,
        customer_id,
        channel,
        event_type,
        occurred_at,
        nullif(campaign_id, '') as campaign_id,
        nullif(message_id, '') as message_id,
        _loaded_at as loaded_at
    from deduplicated
    where copy_number = 1
),

{% if is_incremental() %}
final as (
    select
        kept.event_id,
        changed_customers.customer_id,
        kept.channel,
        kept.event_type,
        kept.occurred_at,
        kept.campaign_id,
        kept.message_id,
        kept.loaded_at
    from changed_customers
    left join kept on changed_customers.customer_id = kept.customer_id
)
{% else %}
final as (
    select * from kept
)
{% endif %}

select * from final
