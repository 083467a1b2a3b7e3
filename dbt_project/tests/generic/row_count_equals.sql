{% test row_count_equals(model, expected) %}
{#- One failing row when the model does not hold exactly `expected` rows. -#}
select count(*) as actual_rows
from {{ model }}
having count(*) <> {{ expected }}
{% endtest %}
