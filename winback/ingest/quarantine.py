"""Step 5: broken rows to `raw.quarantine`, counts to `raw.load_batches`.

Each rejected row keeps its file, line, column, rule, reason and the raw record; the
counts of rows read, loaded and quarantined reconcile per file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date

import psycopg
from psycopg import sql

from winback.ingest.contract import RawTable


@dataclass
class Rejection:
    line: int
    column_name: str | None
    rule: str
    reason: str
    raw_record: str | None  # JSON of the values as written; None until read back


@dataclass
class Normalisation:
    """A text value loaded changed: control and line-break characters became spaces."""

    line: int
    column_name: str
    value_as_written: str
    value_loaded: str


# jsonb cannot hold NUL (U+0000): it is stored as these six characters instead.
NUL_IN_RECORD = "\\u0000"


def raw_record(values: dict[str, str]) -> str:
    """The JSON `raw.quarantine.raw_record` holds: each value exactly as the file wrote it.

    A malformed line, which has no columns, is `{"_line": <its text>}`.
    """
    return json.dumps(
        {name: value.replace("\x00", NUL_IN_RECORD) for name, value in values.items()},
        ensure_ascii=False,
    )


def record_sql(raw_table: RawTable, alias: str) -> sql.Composable:
    return sql.SQL("jsonb_build_object({})::text").format(
        sql.SQL(", ").join(
            sql.SQL("{}, {}.{}::text").format(
                sql.Literal(c), sql.Identifier(alias), sql.Identifier(c)
            )
            for c in raw_table.column_names
        )
    )


def write_rejections(
    cur: psycopg.Cursor,
    load_date: date,
    table_name: str,
    source: str,
    rejected: dict[int, Rejection],
) -> None:
    """COPY one file's rejected rows into `raw.quarantine`, in line order."""
    if rejected:
        with cur.copy(
            "copy raw.quarantine (load_date, table_name, source_file, line_number,"
            " column_name, rule, reason, raw_record) from stdin"
        ) as copy:
            for r in sorted(rejected.values(), key=lambda r: r.line):
                copy.write_row(
                    (
                        load_date,
                        table_name,
                        source,
                        r.line,
                        r.column_name,
                        r.rule,
                        r.reason,
                        r.raw_record,
                    )
                )


def record_load_batch(conn: psycopg.Connection, load_date: date, report) -> None:
    """Record a file's counts in `raw.load_batches` (one row per day and table)."""
    conn.execute(
        """
        insert into raw.load_batches
            (load_date, table_name, source_file, rows_read, rows_loaded, rows_quarantined)
        values (%s, %s, %s, %s, %s, %s)
        on conflict (load_date, table_name) do update set
            source_file = excluded.source_file,
            rows_read = excluded.rows_read,
            rows_loaded = excluded.rows_loaded,
            rows_quarantined = excluded.rows_quarantined,
            loaded_at = now()
        """,
        (
            load_date,
            report.table,
            report.source_file,
            report.rows_read,
            report.rows_loaded,
            report.rows_quarantined,
        ),
    )


def write_normalisations(
    cur: psycopg.Cursor,
    load_date: date,
    table_name: str,
    source: str,
    changed: list[Normalisation],
) -> None:
    """COPY one file's changed values, as written and as loaded, into `raw.normalised_values`."""
    if changed:
        with cur.copy(
            "copy raw.normalised_values (load_date, table_name, source_file, line_number,"
            " column_name, value_as_written, value_loaded) from stdin"
        ) as copy:
            for n in sorted(changed, key=lambda n: (n.line, n.column_name)):
                copy.write_row(
                    (
                        load_date,
                        table_name,
                        source,
                        n.line,
                        n.column_name,
                        n.value_as_written,
                        n.value_loaded,
                    )
                )
