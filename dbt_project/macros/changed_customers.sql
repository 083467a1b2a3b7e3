{#-
    The customers an incremental per-customer model must recompute: those whose completed
    orders up to the run date may differ from what {{ this }} was built from. That is,
    orders placed after the latest purchase day it has seen (up to the run date), orders
    loaded or reloaded (a status change) since its latest load, and, for a backfill to an
    earlier date, customers whose last purchase is now after the run date. The model keeps
    `last_order_date` and `latest_source_loaded_at` for this.

    The two bounds are read first and written into the query as constants: PostgreSQL then
    estimates from raw.orders' statistics that a day changes a few thousand customers, and
    reads their orders and lines through the customer and order-id indexes. Behind scalar
    subqueries it guessed a third of all orders and scanned every order line.
-#}
{% macro customers_with_changed_orders(orders) -%}
{%- set bounds = previous_order_bounds() -%}
select orders.customer_id
from {{ orders }} as orders
where
    (
        orders.ordered_at >= cast({{ bounds.last_order_date }} + 1 as timestamp) at time zone 'UTC'
        and orders.ordered_at < cast({{ as_of_date() }} + 1 as timestamp) at time zone 'UTC'
    )
    or orders.loaded_at > {{ bounds.latest_source_loaded_at }}
union
select previous.customer_id
from {{ this }} as previous
where previous.last_order_date > {{ as_of_date() }}
{%- endmacro %}

{#- The latest purchase day and source load {{ this }} has seen, as SQL literals; from an
    empty table (a first build without any completed order) '-infinity', so every order
    counts as new. Outside execution (parsing, docs) the same bounds as subqueries. -#}
{% macro previous_order_bounds() -%}
{%- set sql_bounds = {
    'last_order_date': "coalesce((select max(last_order_date) from " ~ this ~ "), '-infinity')",
    'latest_source_loaded_at':
        "coalesce((select max(latest_source_loaded_at) from " ~ this ~ "), '-infinity')",
} -%}
{%- if not execute -%}
    {{ return(sql_bounds) }}
{%- endif -%}
{%- set row = run_query(
    "select coalesce(max(last_order_date)::text, '-infinity'),"
    ~ " coalesce(max(latest_source_loaded_at)::text, '-infinity') from " ~ this
).rows[0] -%}
{{ return({
    'last_order_date': "cast('" ~ row[0] ~ "' as date)",
    'latest_source_loaded_at': "cast('" ~ row[1] ~ "' as timestamptz)",
}) }}
{%- endmacro %}

{#-
    The import CTEs both incremental per-customer models start with: `changed_customers`
    (incremental runs only) and `orders_in_scope`, every order of those customers, or every
    order on a full build. The model's own CTEs follow, after the trailing comma.
-#}
{% macro orders_in_scope(orders) -%}
{%- if is_incremental() %}
changed_customers as (
    {{ customers_with_changed_orders(orders) }}
),

-- `= any(array(...))`, not a join: PostgreSQL then reads the orders through the customer
-- index, where a join would hash every order to find a few thousand customers'.
orders_in_scope as (
    select all_orders.*
    from {{ orders }} as all_orders
    where all_orders.customer_id = any(array(select changed_customers.customer_id from changed_customers))
),
{%- else %}
orders_in_scope as (
    select * from {{ orders }}
),
{%- endif %}
{%- endmacro %}

{#- max(`column`) of {{ this }} as a timestamptz literal ('-infinity' when empty), so the
    planner estimates the rows loaded since from the source's statistics. -#}
{% macro latest_load_of_this(column) -%}
{%- if execute -%}
    {%- set latest = run_query(
        "select coalesce(max(" ~ column ~ ")::text, '-infinity') from " ~ this
    ).rows[0][0] -%}
    cast('{{ latest }}' as timestamptz)
{%- else -%}
    (select coalesce(max({{ column }}), '-infinity') from {{ this }})
{%- endif -%}
{%- endmacro %}

