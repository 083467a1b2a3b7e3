{#-
    dbt's own get_where_subquery, plus one placeholder: a data test's `where:` config may
    say __as_of_date__ for the run date (YAML configs cannot call project macros). The
    tests of tables that grow by a day per run check only the rows the run wrote.
-#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') -%}
    {%- if where -%}
        {%- set where = where | replace('__as_of_date__', as_of_date()) -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}
