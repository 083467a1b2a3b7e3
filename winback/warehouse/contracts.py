"""The columns of the dbt models winback's Python reads, as their contracts declare them.

Every mart that Python reads by column name has `contract: {enforced: true}` in its dbt
YAML, with a `data_type` for each column: dbt refuses to build a model whose SQL no longer
matches, naming the column. Python reads the same declarations (never a copy), so a
rename is caught by `dbt build`, by `winback campaigns validate`, and at run time by
`missing_columns` against the warehouse itself (a model not rebuilt since its YAML
changed).
"""

from __future__ import annotations

import functools
from pathlib import Path

import psycopg
import yaml

from winback import config

MODELS_DIR = config.DBT_PROJECT_DIR / "models"


class ContractError(ValueError):
    """A model that is not contracted, or a column its contract does not declare."""


@functools.cache
def _model_entries() -> dict[str, tuple[Path, dict]]:
    entries = {}
    for path in sorted(MODELS_DIR.rglob("*.yml")):
        document = yaml.safe_load(path.read_text()) or {}
        for entry in document.get("models", []) or []:
            entries[entry["name"]] = (path, entry)
    return entries


def is_enforced(model: str) -> bool:
    """Whether `model`'s YAML enforces its contract."""
    _, entry = _entry(model)
    contract = (entry.get("config") or {}).get("contract") or {}
    return bool(contract.get("enforced"))


def contracted_columns(model: str) -> dict[str, str]:
    """`model`'s columns and their SQL types, in declared order, from its enforced contract."""
    path, entry = _entry(model)
    if not is_enforced(model):
        raise ContractError(f"{path}: model {model} has no enforced contract")
    columns = {}
    for column in entry.get("columns", []):
        data_type = column.get("data_type")
        if not data_type:
            raise ContractError(f"{path}: column {model}.{column['name']} has no data_type")
        columns[column["name"]] = str(data_type)
    return columns


def _entry(model: str) -> tuple[Path, dict]:
    try:
        return _model_entries()[model]
    except KeyError:
        raise ContractError(f"no dbt model named {model} under {MODELS_DIR}") from None


def undeclared(model: str, columns: set[str] | frozenset[str]) -> list[str]:
    """The columns among `columns` that `model`'s contract does not declare, sorted."""
    return sorted(set(columns) - set(contracted_columns(model)))


def relation_columns(conn: psycopg.Connection, relation: str) -> set[str]:
    """The columns a table or view (`schema.name`) has in the warehouse now."""
    schema, name = relation.split(".", 1)
    rows = conn.execute(
        "select column_name from information_schema.columns "
        "where table_schema = %s and table_name = %s",
        (schema, name),
    ).fetchall()
    return {row[0] if isinstance(row, tuple) else row["column_name"] for row in rows}


def missing_columns(conn: psycopg.Connection, relation: str, columns: set[str]) -> list[str]:
    """The columns among `columns` that `relation` lacks in the warehouse, sorted."""
    return sorted(set(columns) - relation_columns(conn, relation))
