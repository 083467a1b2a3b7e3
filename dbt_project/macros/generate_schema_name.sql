{#- Folders name their schema exactly (staging, intermediate, marts, seeds): the Python
    stages and the data engineers read `marts.customer_features`, not a prefixed name. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}{{ target.schema }}{%- else -%}{{ custom_schema_name | trim }}{%- endif -%}
{%- endmacro %}
