"""DDL of the `raw` schema, generated from the input contract.

Every raw table carries the contract's columns, typed, plus lineage columns:
`_load_date` (the logical date whose files brought the row), `_source_file`,
`_source_line` and `_loaded_at`. Rows that break the contract go to `raw.quarantine`
instead, and every file load is recorded in `raw.load_batches` with its reconciled counts.
A text value loaded changed (a line break in a name became a space) keeps its value as
written in `raw.normalised_values`.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from winback.ingest.contract import RAW_SCHEMA, TABLES, RawTable

QUARANTINE_DDL = """
create table if not exists raw.quarantine (
    load_date date not null,
    table_name text not null,
    source_file text not null,
    line_number integer not null,
    column_name text,
    rule text not null,
    reason text not null,
    raw_record jsonb not null,
    quarantined_at timestamptz not null default now(),
    primary key (load_date, table_name, line_number)
);
comment on table raw.quarantine is
    'Rows that broke the input contract, with the file, line, column and reason.';

create table if not exists raw.load_batches (
    load_date date not null,
    table_name text not null,
    source_file text not null,
    rows_read integer not null,
    rows_loaded integer not null,
    rows_quarantined integer not null,
    loaded_at timestamptz not null default now(),
    primary key (load_date, table_name),
    constraint counts_reconcile check (rows_read = rows_loaded + rows_quarantined)
);
comment on table raw.load_batches is
    'One row per file loaded for a logical date; rows_read = rows_loaded + rows_quarantined.';

create table if not exists raw.normalised_values (
    load_date date not null,
    table_name text not null,
    source_file text not null,
    line_number integer not null,
    column_name text not null,
    value_as_written text not null,
    value_loaded text not null,
    normalised_at timestamptz not null default now(),
    primary key (load_date, table_name, line_number, column_name)
);
comment on table raw.normalised_values is
    'Text values loaded changed (control and line-break characters became spaces), each '
    'with the value as written: the quarantine''s record of what the loader changed.';
"""


def table_ddl(raw_table: RawTable) -> sql.Composed:
    columns = [
        sql.SQL("{} {}{}").format(
            sql.Identifier(c.name),
            sql.SQL(c.sql_type),
            sql.SQL(" not null" if c.required else ""),
        )
        for c in raw_table.columns
    ]
    columns += [
        sql.SQL("_load_date date not null"),
        sql.SQL("_source_file text not null"),
        sql.SQL("_source_line integer not null"),
        sql.SQL("_loaded_at timestamptz not null default now()"),
    ]
    return sql.SQL("create table if not exists {}.{} ({}, primary key ({}))").format(
        sql.Identifier(RAW_SCHEMA),
        sql.Identifier(raw_table.name),
        sql.SQL(", ").join(columns),
        sql.SQL(", ").join(sql.Identifier(k) for k in raw_table.primary_key),
    )


def ensure_raw_schema(conn: psycopg.Connection) -> None:
    conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(RAW_SCHEMA)))
    for raw_table in TABLES:
        conn.execute(table_ddl(raw_table))
        conn.execute(
            sql.SQL("comment on table {}.{} is {}").format(
                sql.Identifier(RAW_SCHEMA),
                sql.Identifier(raw_table.name),
                sql.Literal(raw_table.description),
            )
        )
    conn.execute(QUARANTINE_DDL)
    _add_missing_columns(conn)
    # Foreign keys are checked by the loader (quarantine, not failure), and these indexes
    # make the checks and dbt's joins cheap.
    conn.execute("create index if not exists orders_customer_idx on raw.orders (customer_id)")
    conn.execute("create index if not exists orders_load_date_idx on raw.orders (_load_date)")
    # The incremental order summary looks for orders by day and by load time.
    conn.execute("create index if not exists orders_ordered_at_idx on raw.orders (ordered_at)")
    conn.execute("create index if not exists orders_loaded_at_idx on raw.orders (_loaded_at)")


def _add_missing_columns(conn: psycopg.Connection) -> None:
    """Bring a warehouse created by an older contract up to date: new columns are added,
    nullable, so rows loaded before keep their values. Nothing is ever dropped."""
    for raw_table in TABLES:
        for column in raw_table.columns:
            conn.execute(
                sql.SQL("alter table {}.{} add column if not exists {} {}").format(
                    sql.Identifier(RAW_SCHEMA),
                    sql.Identifier(raw_table.name),
                    sql.Identifier(column.name),
                    sql.SQL(column.sql_type),
                )
            )
    conn.execute(
        "alter table raw.quarantine add column if not exists rule text not null default 'unknown'"
    )
    # Columns the contract made optional (guest orders, no category, no country) lose
    # their NOT NULL in a warehouse created before.
    for raw_table in TABLES:
        for column in raw_table.columns:
            if not column.required and column.name not in raw_table.primary_key:
                conn.execute(
                    sql.SQL("alter table {}.{} alter column {} drop not null").format(
                        sql.Identifier(RAW_SCHEMA),
                        sql.Identifier(raw_table.name),
                        sql.Identifier(column.name),
                    )
                )
