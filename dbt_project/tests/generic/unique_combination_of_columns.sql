{% test unique_combination_of_columns(model, combination_of_columns) %}
{#- Rows sharing the same values in all the given columns (our own: no package hub). -#}
select {{ combination_of_columns | join(', ') }}, count(*) as copies
from {{ model }}
group by {{ combination_of_columns | join(', ') }}
having count(*) > 1
{% endtest %}
