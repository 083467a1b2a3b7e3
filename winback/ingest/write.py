"""Step 4: stream valid rows into the raw tables with COPY.

Into an empty table (a first load) they go straight in, with its indexes dropped and
rebuilt after, in the transaction that truncated it (wal_level minimal then skips the
WAL). Into a table with data they go through a temporary table and an upsert that only
replaces a row loaded for the same or an earlier date, so re-loading an old day (a
backfill) never overwrites newer data.
"""

from __future__ import annotations

from datetime import date

import psycopg
import pyarrow as pa
import pyarrow.csv as pcsv
from psycopg import sql

from winback.ingest.contract import RAW_SCHEMA, TABLES, RawTable

LINEAGE_COLUMNS = ("_load_date", "_source_file", "_source_line")


def payload(table: pa.Table) -> pa.Buffer:
    """CSV for COPY; a null is an empty unquoted field (empty strings are null by now).

    Unquoted when no value holds a comma, quote or line break (smaller, and less for the
    server to parse); Arrow refuses such a value rather than write it, so then quoted.
    """
    for quoting in ("none", "needed"):
        sink = pa.BufferOutputStream()
        try:
            pcsv.write_csv(
                table, sink, pcsv.WriteOptions(include_header=False, quoting_style=quoting)
            )
        except pa.ArrowInvalid:
            continue
        return sink.getvalue()
    raise AssertionError("quoting_style='needed' writes any value")


def staging_ddl(raw_table: RawTable) -> sql.Composed:
    columns = [
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type))
        for c in raw_table.columns
    ]
    columns.append(sql.SQL("_source_line integer not null"))
    return sql.SQL("create temporary table incoming ({}) on commit drop").format(
        sql.SQL(", ").join(columns)
    )


class BulkTarget:
    """An empty raw table made ready for COPY straight in, within the load's transaction:
    truncated (so wal_level minimal skips the WAL and COPY may FREEZE the rows), its
    indexes dropped and rebuilt after in one sort each instead of row by row, and the
    lineage columns defaulted to the file for the duration."""

    def __init__(self, cur: psycopg.Cursor, raw_table: RawTable, load_date: date, source: str):
        self.cur = cur
        self.target = sql.Identifier(RAW_SCHEMA, raw_table.name)
        regclass = f"{RAW_SCHEMA}.{raw_table.name}"
        cur.execute(sql.SQL("truncate {}").format(self.target))
        self.constraints = cur.execute(
            "select conname, pg_get_constraintdef(oid), contype from pg_constraint "
            "where conrelid = %s::regclass and contype in ('p', 'u', 'x') order by conname",
            (regclass,),
        ).fetchall()
        self.indexes = cur.execute(
            "select c.relname, pg_get_indexdef(i.indexrelid) from pg_index i "
            "join pg_class c on c.oid = i.indexrelid where i.indrelid = %s::regclass "
            "and not exists (select 1 from pg_constraint k "
            "where k.conrelid = i.indrelid and k.conindid = i.indexrelid) order by 1",
            (regclass,),
        ).fetchall()
        # Rebuilding the primary key finds any duplicate key for free.
        self.finds_duplicates = any(kind == "p" for _, _, kind in self.constraints)
        for name, _, _ in self.constraints:
            cur.execute(
                sql.SQL("alter table {} drop constraint {}").format(
                    self.target, sql.Identifier(name)
                )
            )
        for name, _ in self.indexes:
            cur.execute(sql.SQL("drop index {}").format(sql.Identifier(RAW_SCHEMA, name)))
        self._set_lineage_defaults({"_load_date": load_date.isoformat(), "_source_file": source})

    def _set_lineage_defaults(self, values: dict[str, str | None]) -> None:
        self.cur.execute(
            sql.SQL("alter table {} {}").format(
                self.target,
                sql.SQL(", ").join(
                    sql.SQL("alter column {} set default {}").format(
                        sql.Identifier(c), sql.Literal(v)
                    )
                    if v is not None
                    else sql.SQL("alter column {} drop default").format(sql.Identifier(c))
                    for c, v in values.items()
                ),
            )
        )

    def finish(self) -> None:
        self._set_lineage_defaults({"_load_date": None, "_source_file": None})
        for name, definition, _ in self.constraints:
            self.cur.execute(
                sql.SQL("alter table {} add constraint {} {}").format(
                    self.target, sql.Identifier(name), sql.SQL(definition)
                )
            )
        for _, definition in self.indexes:
            self.cur.execute(sql.SQL(definition))


def upsert(cur: psycopg.Cursor, raw_table: RawTable, load_date: date, source: str) -> int:
    columns = raw_table.column_names
    non_key = [c for c in columns if c not in raw_table.primary_key]
    target = sql.Identifier(RAW_SCHEMA, raw_table.name)
    updates = [
        sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(c))
        for c in [*non_key, "_load_date", "_source_file", "_source_line", "_loaded_at"]
    ]
    cur.execute(
        sql.SQL(
            """
            insert into {target} ({cols}, _load_date, _source_file, _source_line)
            select {cols}, %(load_date)s, %(source)s, _source_line from incoming
            on conflict ({pk}) do update set {updates}
            where {target}._load_date <= excluded._load_date
            """
        ).format(
            target=target,
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            pk=sql.SQL(", ").join(sql.Identifier(k) for k in raw_table.primary_key),
            updates=sql.SQL(", ").join(updates),
        ),
        {"load_date": load_date, "source": source},
    )
    return int(cur.execute("select count(*) from incoming").fetchone()[0])


def is_referenced(raw_table: RawTable) -> bool:
    return any(
        c.references and c.references[0] == raw_table.name for t in TABLES for c in t.columns
    )
