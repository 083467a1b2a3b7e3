-- Engagement per customer as of the run date: opens, clicks, messages received, and the
-- provider-side suppressions (bounce, complaint, unsubscribe, SMS STOP).
with events as (
    select * from {{ ref('stg_shop__engagement_events') }}
    where cast(occurred_at as date) <= {{ as_of_date() }}
),

consent_state as (
    select * from {{ ref('int_customer_consent_state') }}
),

per_customer as (
    select
        customer_id,
        max(occurred_at) filter (where channel = 'email' and event_type = 'open')
            as last_email_open_at,
        max(occurred_at) filter (where channel = 'email' and event_type = 'click')
            as last_email_click_at,
        max(occurred_at) filter (where channel = 'sms' and event_type = 'click')
            as last_sms_click_at,
        count(*) filter (
            where channel = 'email' and event_type = 'sent'
            and cast(occurred_at as date) > {{ as_of_date() }} - 7
        ) as email_messages_7d,
        count(*) filter (
            where channel = 'email' and event_type = 'sent'
            and cast(occurred_at as date) > {{ as_of_date() }} - 30
        ) as email_messages_30d,
        count(*) filter (
            where channel = 'sms' and event_type = 'sent'
            and cast(occurred_at as date) > {{ as_of_date() }} - 7
        ) as sms_messages_7d,
        count(*) filter (
            where channel = 'sms' and event_type = 'sent'
            and cast(occurred_at as date) > {{ as_of_date() }} - 30
        ) as sms_messages_30d,
        max(occurred_at) filter (where channel = 'email' and event_type = 'bounce')
            as last_email_bounce_at,
        max(occurred_at) filter (where channel = 'email' and event_type = 'complaint')
            as last_email_complaint_at,
        max(occurred_at) filter (where channel = 'email' and event_type = 'unsubscribe')
            as last_email_unsubscribe_at,
        max(occurred_at) filter (where channel = 'sms' and event_type = 'sms_stop')
            as last_sms_stop_at
    from events
    group by customer_id
),

final as (
    select
        per_customer.customer_id,
        per_customer.last_email_open_at,
        per_customer.last_email_click_at,
        per_customer.last_sms_click_at,
        {{ days_between('per_customer.last_email_open_at', as_of_date()) }} as days_since_last_open,
        per_customer.email_messages_7d,
        per_customer.email_messages_30d,
        per_customer.sms_messages_7d,
        per_customer.sms_messages_30d,
        per_customer.last_email_bounce_at is not null as has_email_bounced,
        per_customer.last_email_complaint_at is not null as has_complained,
        -- An unsubscribe or STOP suppresses until the customer opts in again afterwards.
        coalesce(
            per_customer.last_email_unsubscribe_at
            > coalesce(consent_state.email_consent_changed_at, '-infinity'),
            false
        ) as has_unsubscribed_since_consent,
        coalesce(
            per_customer.last_sms_stop_at
            > coalesce(consent_state.sms_consent_changed_at, '-infinity'),
            false
        ) as has_sms_stopped_since_consent
    from per_customer
    left join consent_state on per_customer.customer_id = consent_state.customer_id
)

select * from final
