{#-
    Each customer's stage and RFM segment as validity ranges: one row per customer per
    period in which neither changed, [valid_from, valid_to) (valid_to null: still holds).
    It grows with transitions, not with days x customers. "Stage as of D" is the range
    holding D (macro lifecycle_as_of; the view customer_lifecycle_by_day gives the old
    daily rows back).

    Bounds are recorded days (customer_lifecycle_recorded_days). A run for day D, in order,
    rerun, or backfilled between recorded days, paints [D, N) with the day's snapshot, N
    being the next recorded day after D: the stored stages hold constant on that interval
    (no bound falls inside it), so only customers whose stage or segment on D differs from
    what is stored (or who appear or are gone) are touched. Their ranges are cut around
    [D, N), filled, and merged with equal neighbours; the strategy then replaces all of
    those customers' ranges (macros/lifecycle_history.sql). Running any set of days in any
    order leaves the ranges the daily snapshots of those days give, whatever the order.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='replace_customer_ranges',
        unique_key='customer_id',
        on_schema_change='fail',
        pre_hook=["{{ migrate_daily_lifecycle_history() }}"],
        post_hook=[
            "create unique index if not exists {{ this.name }}_pk on {{ this }} (customer_id, valid_from)",
        ],
    )
}}
{%- if not is_incremental() %}
    {{- require_run_date_alone_recorded(ref('customer_lifecycle_recorded_days')) }}
{%- endif %}

with lifecycle as (
    select * from {{ ref('customer_lifecycle') }}
),

rfm as (
    select * from {{ ref('customer_rfm') }}
),

-- What the daily history stored for the run date.
run_date_snapshot as (
    select
        lifecycle.customer_id,
        lifecycle.lifecycle_stage,
        rfm.rfm_segment
    from lifecycle
    left join rfm on lifecycle.customer_id = rfm.customer_id
),

-- A first build (or a full refresh) starts every customer's range on the run date.
first_build as (
    select
        customer_id,
        {{ as_of_date() }} as valid_from,
        cast(null as date) as valid_to,
        lifecycle_stage,
        rfm_segment
    from run_date_snapshot
),

{% if is_incremental() %}

recorded_days as (
    select * from {{ ref('customer_lifecycle_recorded_days') }}
),

-- The run date's snapshot holds until the next recorded day (null: none yet).
next_recorded_day as (
    select min(as_of_date) as as_of_date
    from recorded_days
    where as_of_date > {{ as_of_date() }}
),

stored as (
    select * from {{ this }}
),

stored_on_run_date as (
    select * from stored
    where {{ range_covers_day(as_of_date()) }}
),

changed_customers as (
    select coalesce(run_date_snapshot.customer_id, stored_on_run_date.customer_id) as customer_id
    from run_date_snapshot
    full outer join stored_on_run_date
        on run_date_snapshot.customer_id = stored_on_run_date.customer_id
    where
        run_date_snapshot.customer_id is null
        or stored_on_run_date.customer_id is null
        or run_date_snapshot.lifecycle_stage is distinct from stored_on_run_date.lifecycle_stage
        or run_date_snapshot.rfm_segment is distinct from stored_on_run_date.rfm_segment
),

changed_ranges as (
    select stored.*
    from stored
    inner join changed_customers on stored.customer_id = changed_customers.customer_id
),

-- Ranges away from the run date stay (none starts between it and the next recorded
-- day); the one holding it keeps its parts before the run date and from the next
-- recorded day on; the run date's snapshot fills the interval.
pieces as (
    select customer_id, valid_from, valid_to, lifecycle_stage, rfm_segment
    from changed_ranges
    where not {{ range_covers_day(as_of_date()) }}

    union all

    select customer_id, valid_from, {{ as_of_date() }} as valid_to, lifecycle_stage, rfm_segment
    from changed_ranges
    where {{ range_covers_day(as_of_date()) }} and valid_from < {{ as_of_date() }}

    union all

    select
        changed_ranges.customer_id,
        next_recorded_day.as_of_date as valid_from,
        changed_ranges.valid_to,
        changed_ranges.lifecycle_stage,
        changed_ranges.rfm_segment
    from changed_ranges
    cross join next_recorded_day
    where
        {{ range_covers_day(as_of_date(), 'changed_ranges.valid_from', 'changed_ranges.valid_to') }}
        and next_recorded_day.as_of_date is not null
        and (changed_ranges.valid_to is null or changed_ranges.valid_to > next_recorded_day.as_of_date)

    union all

    select
        run_date_snapshot.customer_id,
        {{ as_of_date() }} as valid_from,
        next_recorded_day.as_of_date as valid_to,
        run_date_snapshot.lifecycle_stage,
        run_date_snapshot.rfm_segment
    from run_date_snapshot
    inner join changed_customers on run_date_snapshot.customer_id = changed_customers.customer_id
    cross join next_recorded_day
),

with_previous as (
    select
        *,
        lag(valid_to) over by_customer as previous_valid_to,
        lag(lifecycle_stage) over by_customer as previous_stage,
        lag(rfm_segment) over by_customer as previous_segment
    from pieces
    window by_customer as (partition by customer_id order by valid_from)
),

-- Adjacent pieces with the same stage and segment make one range.
numbered as (
    select
        *,
        sum(
            case
                when previous_valid_to = valid_from
                    and previous_stage = lifecycle_stage
                    and previous_segment is not distinct from rfm_segment
                    then 0
                else 1
            end
        ) over (partition by customer_id order by valid_from) as range_number
    from with_previous
),

merged as (
    select
        customer_id,
        min(valid_from) as valid_from,
        (array_agg(valid_to order by valid_from desc))[1] as valid_to,
        min(lifecycle_stage) as lifecycle_stage,
        min(rfm_segment) as rfm_segment
    from numbered
    group by customer_id, range_number
),

-- A changed customer left without any range: one empty range deletes theirs.
emptied as (
    select
        customer_id,
        {{ as_of_date() }} as valid_from,
        {{ as_of_date() }} as valid_to,
        cast(null as text) as lifecycle_stage,
        cast(null as text) as rfm_segment
    from changed_customers
    where not exists (select 1 from merged where merged.customer_id = changed_customers.customer_id)
),

painted as (
    select * from merged
    union all
    select * from emptied
),

{% endif %}

final as (
    select
        cast(customer_id as text) as customer_id,
        cast(valid_from as date) as valid_from,
        cast(valid_to as date) as valid_to,
        cast(lifecycle_stage as text) as lifecycle_stage,
        cast(rfm_segment as text) as rfm_segment
    from {% if is_incremental() %}painted{% else %}first_build{% endif %}
)

select * from final
