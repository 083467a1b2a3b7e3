with source as (
    select * from {{ source('shop', 'consents') }}
),

final as (
    select
        consent_id,
        customer_id,
        channel as consent_channel,
        status as consent_status,
        status = 'granted' as is_granted,
        recorded_at,
        source as consent_source
    from source
)

select * from final
