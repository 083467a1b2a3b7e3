{{ config(materialized='view') }}

-- Stage changes between consecutive recorded days of the history. A view, so a backfill
-- of a missing day is reflected at once in the transitions on both sides of it.
with history as (
    select * from {{ ref('customer_lifecycle_history') }}
),

with_previous as (
    select
        customer_id,
        as_of_date,
        lifecycle_stage,
        lag(lifecycle_stage) over (partition by customer_id order by as_of_date) as previous_stage
    from history
),

final as (
    select
        customer_id,
        previous_stage as from_stage,
        lifecycle_stage as to_stage,
        as_of_date as transitioned_on
    from with_previous
    where previous_stage is not null and previous_stage <> lifecycle_stage
)

select * from final
