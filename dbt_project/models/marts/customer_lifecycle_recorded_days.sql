{#-
    The run dates customer_lifecycle_history has recorded, one row each. The history needs
    them to rebuild a day in the middle (a rerun, a backfill): the run date's snapshot
    holds until the next recorded day, and no further. Built just before the history, so a
    day is listed before its ranges are written; a failed history build leaves the day
    listed with the stages carried from the day before, which is what "stage as of D" read
    before that day was recorded, until the day is rerun.

    The first build on a warehouse whose history is still daily (before validity ranges)
    lists the days that table recorded (macros/lifecycle_history.sql).
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='as_of_date',
        on_schema_change='fail',
    )
}}

{%- set migrating = execute and not is_incremental() and not should_full_refresh()
    and is_daily_lifecycle_history('customer_lifecycle_history') %}

with lifecycle as (
    select * from {{ ref('customer_lifecycle') }}
),

run_date as (
    select
        {{ as_of_date() }} as as_of_date,
        count(*) as customers
    from lifecycle
),

{% if migrating %}
recorded_before as (
    select
        as_of_date,
        count(*) as customers
    from {{ this.schema }}.customer_lifecycle_history
    where as_of_date <> {{ as_of_date() }}
    group by as_of_date
),
{% endif %}

final as (
    select
        cast(as_of_date as date) as as_of_date,
        cast(customers as bigint) as customers
    from run_date
    {% if migrating %}
    union all
    select
        cast(as_of_date as date) as as_of_date,
        cast(customers as bigint) as customers
    from recorded_before
    {% endif %}
)

select * from final
