{#-
    Each customer's stage and RFM segment per run date: "who was inactive on day D" is a
    filter on as_of_date. A run replaces exactly its own day (delete, then append), so
    running day D twice, or days out of order, or a backfill of D, leaves the same history.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='append_new_columns',
        pre_hook=[
            "{% if is_incremental() %}delete from {{ this }} where as_of_date = {{ as_of_date() }}{% endif %}",
        ],
        post_hook=[
            "create unique index if not exists {{ this.name }}_pk on {{ this }} (as_of_date, customer_id)",
        ],
    )
}}

with lifecycle as (
    select * from {{ ref('customer_lifecycle') }}
),

rfm as (
    select * from {{ ref('customer_rfm') }}
),

final as (
    select
        lifecycle.customer_id,
        lifecycle.as_of_date,
        lifecycle.lifecycle_stage,
        rfm.rfm_segment,
        lifecycle.days_since_last_order
    from lifecycle
    left join rfm on lifecycle.customer_id = rfm.customer_id
)

select * from final
