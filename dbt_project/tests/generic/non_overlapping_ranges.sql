{% test non_overlapping_ranges(model, partition_by, valid_from, valid_to) %}
{#- Ranges [valid_from, valid_to) (valid_to null: open) that are empty or reversed, or
    overlap the next range of the same key (an open range followed by another, too). -#}
with ranges as (
    select
        {{ partition_by }} as range_key,
        {{ valid_from }} as range_from,
        {{ valid_to }} as range_to,
        lead({{ valid_from }}) over (
            partition by {{ partition_by }} order by {{ valid_from }}
        ) as next_from
    from {{ model }}
)

select *
from ranges
where
    range_to <= range_from
    or (next_from is not null and (range_to is null or range_to > next_from))
{% endtest %}
