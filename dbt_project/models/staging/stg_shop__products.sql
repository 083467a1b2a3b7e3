with source as (
    select * from {{ source('shop', 'products') }}
),

final as (
    select
        product_id,
        product_name,
        category,
        list_price,
        product_type,
        -- Fees, shipping, gift cards and adjustments are not merchandise: never named as
        -- "last chosen" or recommended. The shop's product_type decides; left empty, the
        -- product name against the var non_merchandise_name_pattern (case-insensitive).
        coalesce(
            product_type = 'merchandise',
            not coalesce(
                trim(product_name) ~* '{{ var("non_merchandise_name_pattern") }}', false
            )
        ) as is_merchandise
    from source
)

select * from final
