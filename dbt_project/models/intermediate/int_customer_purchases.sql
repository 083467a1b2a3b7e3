-- What each customer buys: favourite category (by spend, ties by name), its sector, and
-- the category and products of their last completed order.
with orders as (
    select * from {{ ref('stg_shop__orders') }}
    where is_completed and order_date <= {{ as_of_date() }}
),

order_lines as (
    select * from {{ ref('stg_shop__order_lines') }}
),

products as (
    select * from {{ ref('stg_shop__products') }}
),

category_sectors as (
    select * from {{ ref('category_sectors') }}
),

lines as (
    select
        orders.customer_id,
        orders.order_id,
        orders.ordered_at,
        order_lines.category,
        order_lines.line_total,
        products.product_name
    from order_lines
    inner join orders on order_lines.order_id = orders.order_id
    left join products on order_lines.product_id = products.product_id
),

category_spend as (
    select
        customer_id,
        category,
        sum(line_total) as spend
    from lines
    group by customer_id, category
),

favourite as (
    select distinct on (customer_id)
        customer_id,
        category as favourite_category
    from category_spend
    order by customer_id asc, spend desc, category asc
),

last_orders as (
    select distinct on (customer_id)
        customer_id,
        order_id
    from orders
    order by customer_id asc, ordered_at desc, order_id desc
),

last_order_lines as (
    select
        lines.customer_id,
        (array_agg(lines.category order by lines.line_total desc, lines.category asc))[1]
            as last_purchased_category,
        {{ string_agg_ordered('distinct lines.product_name', 'lines.product_name') }}
            as last_purchased_products
    from lines
    inner join last_orders on lines.order_id = last_orders.order_id
    group by lines.customer_id
),

final as (
    select
        favourite.customer_id,
        favourite.favourite_category,
        coalesce(category_sectors.sector, '{{ var("shop_sector") }}') as sector,
        last_order_lines.last_purchased_category,
        last_order_lines.last_purchased_products
    from favourite
    left join category_sectors on favourite.favourite_category = category_sectors.category
    left join last_order_lines on favourite.customer_id = last_order_lines.customer_id
)

select * from final
