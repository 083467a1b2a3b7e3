{{ config(materialized='view') }}

-- Stage changes between a customer's consecutive ranges of the history (a change of
-- segment alone is none). A view, so a backfill of a missing day is reflected at once in
-- the transitions on both sides of it. The same changes as between consecutive recorded
-- days of the daily snapshot: a customer absent for some days has no range then.
with history as (
    select * from {{ ref('customer_lifecycle_history') }}
),

with_previous as (
    select
        customer_id,
        valid_from,
        lifecycle_stage,
        lag(lifecycle_stage) over (partition by customer_id order by valid_from) as previous_stage
    from history
),

final as (
    select
        customer_id,
        previous_stage as from_stage,
        lifecycle_stage as to_stage,
        valid_from as transitioned_on
    from with_previous
    where previous_stage is not null and previous_stage <> lifecycle_stage
)

select * from final
