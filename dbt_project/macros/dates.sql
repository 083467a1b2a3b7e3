{#- Date arithmetic and statistics kept behind macros, so another adapter can run the
    project by overriding these (dispatch), not by editing models. -#}

{% macro as_of_date() -%}
    {%- if var('as_of_date') is none -%}current_date{%- else -%}cast('{{ var("as_of_date") }}' as date){%- endif -%}
{%- endmacro %}

{% macro days_between(start_date, end_date) -%}
    {{ return(adapter.dispatch('days_between', 'winback')(start_date, end_date)) }}
{%- endmacro %}

{% macro default__days_between(start_date, end_date) -%}
    (cast({{ end_date }} as date) - cast({{ start_date }} as date))
{%- endmacro %}

{% macro add_days(date_expression, days) -%}
    {{ return(adapter.dispatch('add_days', 'winback')(date_expression, days)) }}
{%- endmacro %}

{% macro default__add_days(date_expression, days) -%}
    (cast({{ date_expression }} as date) + cast(round({{ days }}) as integer))
{%- endmacro %}

{% macro median(expression) -%}
    {{ return(adapter.dispatch('median', 'winback')(expression)) }}
{%- endmacro %}

{% macro default__median(expression) -%}
    percentile_cont(0.5) within group (order by {{ expression }})
{%- endmacro %}

{% macro string_agg_ordered(expression, order_by, separator=', ') -%}
    string_agg({{ expression }}, '{{ separator }}' order by {{ order_by }})
{%- endmacro %}
