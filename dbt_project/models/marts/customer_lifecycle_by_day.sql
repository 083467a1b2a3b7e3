{{ config(materialized='view') }}

-- The history as the daily snapshot stored it: one row per customer and recorded day.
-- Filter on as_of_date: PostgreSQL then reads each range once for that day. "As of" a day
-- not recorded is the latest recorded day on or before it (or macro lifecycle_as_of).
with history as (
    select * from {{ ref('customer_lifecycle_history') }}
),

recorded_days as (
    select * from {{ ref('customer_lifecycle_recorded_days') }}
),

final as (
    select
        history.customer_id,
        recorded_days.as_of_date,
        history.lifecycle_stage,
        history.rfm_segment
    from recorded_days
    inner join history
        on {{ range_covers_day('recorded_days.as_of_date', 'history.valid_from', 'history.valid_to') }}
)

select * from final
