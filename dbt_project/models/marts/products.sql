{{ config(materialized='view') }}

-- The product catalogue as the Python stages read it (recommendations). A view over
-- stg_shop__products: an interface, not a copy.
with products as (
    select * from {{ ref('stg_shop__products') }}
),

final as (
    select
        product_id,
        product_name,
        category,
        list_price,
        is_merchandise
    from products
)

select * from final
