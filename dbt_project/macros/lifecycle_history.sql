{#-
    The lifecycle history as validity ranges (models/marts/customer_lifecycle_history.sql).

    A customer's row holds from valid_from until the day before valid_to (null: still
    holds). Both bounds are always days the history recorded; a day it did not record
    (a gap not yet backfilled) carries the stage of the recorded day before it, as the
    daily snapshot's "latest day on or before D" read did.
-#}

{#- Whether a range holds on `day` (a SQL date expression). -#}
{% macro range_covers_day(day, valid_from='valid_from', valid_to='valid_to') -%}
    ({{ valid_from }} <= {{ day }} and ({{ valid_to }} is null or {{ valid_to }} > {{ day }}))
{%- endmacro %}

{#- Each customer's stage and segment as of `day`: the ranges holding that day. Readers use
    this (or the view customer_lifecycle_by_day), never their own range arithmetic. -#}
{% macro lifecycle_as_of(day) -%}
    select customer_id, lifecycle_stage, rfm_segment, valid_from, valid_to
    from {{ ref('customer_lifecycle_history') }}
    where {{ range_covers_day(day) }}
{%- endmacro %}

{#-
    The incremental strategy of the history: every range of each customer in the new rows
    is replaced by that customer's new ranges. A customer the run leaves with no range at
    all (gone from a rerun day they alone were in) comes as one empty range
    (valid_to = valid_from): their ranges are deleted and nothing is inserted.
-#}
{% macro get_incremental_replace_customer_ranges_sql(arg_dict) -%}
    {%- set target = arg_dict['target_relation'] -%}
    {%- set source = arg_dict['temp_relation'] -%}
    {%- set columns = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
    delete from {{ target }}
    where customer_id in (select customer_id from {{ source }});

    insert into {{ target }} ({{ columns }})
    select {{ columns }} from {{ source }}
    where valid_to is null or valid_to > valid_from
{%- endmacro %}

{#- Validity ranges from a daily table (one row per customer and recorded day): runs of
    recorded days on which a customer was present with the same stage and segment. A run
    ends on the next recorded day (null after the last one). -#}
{% macro lifecycle_ranges_from_daily(daily) -%}
with daily as (
    select customer_id, as_of_date, lifecycle_stage, rfm_segment from {{ daily }}
),

recorded_days as (
    select
        as_of_date,
        lead(as_of_date) over (order by as_of_date) as next_recorded_day
    from (select distinct as_of_date from daily) as days
),

with_previous as (
    select
        daily.*,
        recorded_days.next_recorded_day,
        lag(recorded_days.next_recorded_day) over by_customer as day_after_previous_row,
        lag(daily.lifecycle_stage) over by_customer as previous_stage,
        lag(daily.rfm_segment) over by_customer as previous_segment
    from daily
    inner join recorded_days on daily.as_of_date = recorded_days.as_of_date
    window by_customer as (partition by daily.customer_id order by daily.as_of_date)
),

numbered as (
    select
        *,
        sum(
            case
                when day_after_previous_row = as_of_date
                    and previous_stage = lifecycle_stage
                    and previous_segment is not distinct from rfm_segment
                    then 0
                else 1
            end
        ) over (partition by customer_id order by as_of_date) as range_number
    from with_previous
)

select
    cast(customer_id as text) as customer_id,
    cast(min(as_of_date) as date) as valid_from,
    cast((array_agg(next_recorded_day order by as_of_date desc))[1] as date) as valid_to,
    cast(min(lifecycle_stage) as text) as lifecycle_stage,
    cast(min(rfm_segment) as text) as rfm_segment
from numbered
group by customer_id, range_number
{%- endmacro %}

{#- Whether {{ this }} (or `identifier` in its schema) is the history from before validity
    ranges: one row per customer and run date. -#}
{% macro is_daily_lifecycle_history(identifier=none) -%}
    {%- set relation = adapter.get_relation(this.database, this.schema, identifier or this.identifier) -%}
    {%- if relation is none -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set columns = adapter.get_columns_in_relation(relation) | map(attribute='name') | list -%}
    {{ return('as_of_date' in columns) }}
{%- endmacro %}

{#-
    Migration of a warehouse built before validity ranges: on its first incremental run
    the daily table is converted in place, in the model's transaction, and kept as
    <name>_daily (drop it once satisfied). customer_lifecycle_recorded_days took the days
    it had recorded when it was first built. days_since_last_order is not carried over.
-#}
{% macro migrate_daily_lifecycle_history() -%}
    {%- if execute and not should_full_refresh() and is_daily_lifecycle_history() -%}
        {%- do log("customer_lifecycle_history: converting the daily history into validity ranges; the old table is kept as " ~ this.identifier ~ "_daily", info=true) -%}
        alter index if exists {{ this.schema }}.{{ this.identifier }}_pk
            rename to {{ this.identifier }}_daily_pk;
        alter table {{ this }} rename to {{ this.identifier }}_daily;
        create table {{ this }} as
        {{ lifecycle_ranges_from_daily(this.schema ~ '.' ~ this.identifier ~ '_daily') }};
    {%- endif -%}
{%- endmacro %}

{#- A first build or a full refresh starts the history on the run date alone: refuse it
    while customer_lifecycle_recorded_days still lists other days. -#}
{% macro require_run_date_alone_recorded(recorded_days) -%}
    {%- if execute -%}
        {%- set relation = adapter.get_relation(recorded_days.database, recorded_days.schema, recorded_days.identifier) -%}
        {%- if relation is not none -%}
            {%- set others = run_query("select count(*) from " ~ recorded_days ~ " where as_of_date <> " ~ as_of_date()).rows[0][0] -%}
            {%- if others > 0 -%}
                {{ exceptions.raise_compiler_error(
                    "customer_lifecycle_history would start again from the run date alone while "
                    ~ recorded_days ~ " lists " ~ others ~ " other recorded days: full-refresh both "
                    ~ "together (--full-refresh --select customer_lifecycle_recorded_days "
                    ~ "customer_lifecycle_history)"
                ) }}
            {%- endif -%}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}
