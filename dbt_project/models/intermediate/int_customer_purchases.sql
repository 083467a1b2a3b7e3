{#-
    What each customer buys: favourite category (by spend, ties by name), its sector, and
    the category and products of their last completed order. Incremental like
    int_customer_order_stats (the same changed customers, the same empty-row removal), as
    it reads every order line: ten times the orders.

    Every order line is read once, for the spend per category; the last orders' lines are
    looked up by order id through raw.order_lines' primary key. On a full build `orders`
    and `order_lines` are `not materialized`: read by several CTEs, PostgreSQL would
    otherwise copy each to a temporary store first and plan the joins without statistics or
    parallel workers. On an increment `orders` holds only the recomputed customers' orders
    and is kept once; their lines are fetched by order id.
-#}
{{
    config(
        materialized='incremental',
        unique_key='customer_id',
        incremental_strategy='delete+insert',
        on_schema_change='fail',
        post_hook=[
            "delete from {{ this }} where last_order_date is null",
            "create index if not exists {{ this.name }}_last_order_idx on {{ this }} (last_order_date)",
        ],
    )
}}

-- noqa: disable=LT02
with {{ orders_in_scope(ref('stg_shop__orders')) }}

orders as {% if not is_incremental() %}not materialized {% endif %}(
    select
        customer_id,
        order_id,
        ordered_at,
        order_date,
        loaded_at
    from orders_in_scope
    where is_completed and not is_guest_order and order_date <= {{ as_of_date() }}
),

order_lines as not materialized (
    select * from {{ ref('stg_shop__order_lines') }}
),

products as (
    select * from {{ ref('stg_shop__products') }}
),

category_sectors as (
    select * from {{ ref('category_sectors') }}
),

-- Merchandise only: a fee, shipping or an adjustment says nothing about taste.
lines_in_scope as (
    select order_lines.*
    from order_lines
    inner join products on order_lines.product_id = products.product_id
    where
        products.is_merchandise
        {%- if is_incremental() %}
        -- The recomputed customers' lines only, through the primary key (order_id first).
        and order_lines.order_id = any(array(select orders.order_id from orders))
        {%- endif %}
),

category_spend as (
    select
        orders.customer_id,
        lines_in_scope.category,
        sum(lines_in_scope.line_total) as spend
    from lines_in_scope
    inner join orders on lines_in_scope.order_id = orders.order_id
    group by orders.customer_id, lines_in_scope.category
),

-- Customers with merchandise lines, categorised or not (a shop may have no categories).
customers_with_lines as (
    select distinct customer_id from category_spend
),

favourite as (
    select distinct on (customer_id)
        customer_id,
        category as favourite_category
    from category_spend
    where category is not null
    order by customer_id asc, spend desc, category asc
),

last_orders as (
    select distinct on (customer_id)
        customer_id,
        order_id
    from orders
    order by customer_id asc, ordered_at desc, order_id desc
),

-- A lateral lookup per last order (offset 0 keeps PostgreSQL from flattening it into a
-- join, which it would run by hashing every order line). Merchandise only, and at most
-- the three products the customer spent most on: a wholesale basket of fifty products is
-- no sentence.
last_order_lines as (
    select
        last_orders.customer_id,
        (array_agg(
            last_order_line.category
            order by last_order_line.line_total desc, last_order_line.category asc
        ) filter (where last_order_line.category is not null))[1] as last_purchased_category,
        array_to_string(
            (array_agg(
                products.product_name
                order by last_order_line.line_total desc, products.product_name asc
            ) filter (where products.product_name is not null))[1:3],
            ', '
        ) as last_purchased_products
    from last_orders
    cross join lateral (
        select
            order_lines.product_id,
            min(order_lines.category) as category,
            sum(order_lines.line_total) as line_total
        from order_lines
        where order_lines.order_id = last_orders.order_id
        group by order_lines.product_id
        offset 0  -- noqa: AM09
    ) as last_order_line
    inner join products on last_order_line.product_id = products.product_id
    where products.is_merchandise
    group by last_orders.customer_id
),

order_markers as (
    select
        customer_id,
        max(order_date) as last_order_date,
        max(loaded_at) as latest_source_loaded_at
    from orders
    group by customer_id
),

customers_in_scope as (
    {% if is_incremental() -%}
        select customer_id from changed_customers
    {%- else -%}
        select customer_id from customers_with_lines
    {%- endif %}
),

final as (
    select
        customers_in_scope.customer_id,
        favourite.favourite_category,
        case
            when customers_with_lines.customer_id is not null
                then coalesce(category_sectors.sector, '{{ var("shop_sector") }}')
        end as sector,
        last_order_lines.last_purchased_category,
        last_order_lines.last_purchased_products,
        -- Kept for the next increment only for customers who bought something with lines.
        case
            when customers_with_lines.customer_id is not null then order_markers.last_order_date
        end as last_order_date,
        order_markers.latest_source_loaded_at
    from customers_in_scope
    left join customers_with_lines
        on customers_in_scope.customer_id = customers_with_lines.customer_id
    left join favourite on customers_in_scope.customer_id = favourite.customer_id
    left join category_sectors on favourite.favourite_category = category_sectors.category
    left join last_order_lines on customers_in_scope.customer_id = last_order_lines.customer_id
    left join order_markers on customers_in_scope.customer_id = order_markers.customer_id
)

select * from final
