{#- Date arithmetic and statistics kept behind macros, so another adapter can run the
    project by overriding these (dispatch), not by editing models. -#}

{#- The run date: the `as_of_date` var when one is given (by hand, in unit tests), else the
    WINBACK_AS_OF_DATE environment variable (the DAG's logical date), else today.
    The DAG passes an environment variable, not a var, because dbt parses the whole
    project again whenever --vars differ from the last run's (4 s on every daily build);
    an environment variable read only while executing leaves its partial parse intact. -#}
{% macro as_of_date() -%}
    {%- set day = var('as_of_date') -%}
    {%- if day is none and execute -%}
        {%- set day = env_var('WINBACK_AS_OF_DATE', '') | trim or none -%}
        {%- if day is not none and not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}', day) -%}
            {{ exceptions.raise_compiler_error("WINBACK_AS_OF_DATE=" ~ day ~ ": expected a date, YYYY-MM-DD") }}
        {%- endif -%}
    {%- endif -%}
    {%- if day is none -%}current_date{%- else -%}cast('{{ day }}' as date){%- endif -%}
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
