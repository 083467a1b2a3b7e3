{#-
    The customers an incremental per-customer model must recompute: those whose completed
    orders up to the run date may differ from what {{ this }} was built from. That is,
    orders placed after the latest purchase day it has seen (up to the run date), orders
    loaded or reloaded (a status change) since its latest load, and, for a backfill to an
    earlier date, customers whose last purchase is now after the run date. The model keeps
    `last_order_date` and `latest_source_loaded_at` for this. The bounds are scalar
    subqueries so that PostgreSQL reads raw.orders through its ordered_at and _loaded_at
    indexes instead of scanning ten million orders.
-#}
{% macro customers_with_changed_orders(orders) -%}
select orders.customer_id
from {{ orders }} as orders
where
    (
        orders.ordered_at >= cast(
            (select max(previous.last_order_date) from {{ this }} as previous) + 1 as timestamp
        ) at time zone 'UTC'
        and orders.ordered_at < cast({{ as_of_date() }} + 1 as timestamp) at time zone 'UTC'
    )
    or orders.loaded_at > (
        select max(previous.latest_source_loaded_at) from {{ this }} as previous
    )
union
select previous.customer_id
from {{ this }} as previous
where previous.last_order_date > {{ as_of_date() }}
{%- endmacro %}
