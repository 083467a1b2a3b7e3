{#- The Python stages own schema `winback`; its tables are defined once, in
    winback/warehouse/tables.py, and created by `ensure_schema` before dbt runs (the
    DAG's load task, `winback dbt`). customer_features left-joins winback.customer_scores,
    so a run without it would fail half-way: say why at the start instead. -#}
{% macro require_winback_tables() %}
do $$
begin
    if to_regclass('winback.customer_scores') is null then
        raise exception 'winback.customer_scores does not exist: the winback schema is '
            'created by winback.warehouse.tables.ensure_schema (the DAG''s load task and '
            '`winback dbt` run it; `winback ensure-schema` runs it alone)';
    end if;
end
$$
{% endmacro %}
