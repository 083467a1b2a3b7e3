-- Each customer's consent per channel as of the run date: the latest change wins.
with consents as (
    select * from {{ ref('stg_shop__consents') }}
    where cast(recorded_at as date) <= {{ as_of_date() }}
),

latest as (
    select distinct on (customer_id, consent_channel)
        customer_id,
        consent_channel,
        is_granted,
        recorded_at
    from consents
    order by customer_id asc, consent_channel asc, recorded_at desc, consent_id desc
),

final as (
    select
        customer_id,
        coalesce(bool_or(is_granted) filter (where consent_channel = 'email_newsletter'), false)
            as is_email_subscribed,
        max(recorded_at) filter (where consent_channel = 'email_newsletter')
            as email_consent_changed_at,
        coalesce(bool_or(is_granted) filter (where consent_channel = 'sms'), false)
            as is_sms_subscribed,
        max(recorded_at) filter (where consent_channel = 'sms') as sms_consent_changed_at
    from latest
    group by customer_id
)

select * from final
