"""Step 3: duplicate keys and unknown references within a file.

A later duplicate of a primary key is quarantined (the first valid row wins), and so is
a row that references an unknown customer/order/product.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from psycopg import sql

from winback.ingest.contract import RAW_SCHEMA, RawTable
from winback.ingest.quarantine import Rejection, record_sql

# Composite keys are compared as one string; PostgreSQL text cannot hold NUL, so no id
# can contain the separator.
KEY_SEPARATOR = "\x00"


def primary_key_strings(raw_table: RawTable, valid: pa.Table) -> pa.Array:
    """The primary key as one comparable string per row (bigint parts as bigint prints them)."""
    parts = []
    for name in raw_table.primary_key:
        part = valid.column(name)
        if raw_table.column(name).kind == "integer":
            part = pc.cast(pc.cast(part, pa.int64()), pa.string())
        parts.append(part)
    if len(parts) == 1:
        return parts[0].combine_chunks() if isinstance(parts[0], pa.ChunkedArray) else parts[0]
    joined = pc.binary_join_element_wise(*parts, KEY_SEPARATOR)
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def later_duplicates(raw_table: RawTable, blocks: list[pa.Table]) -> dict[int, tuple[str, int]]:
    """line -> (key, first line) for every row whose key a valid earlier row already has.

    `blocks` hold the key columns and `_source_line` of every row that passed the checks.
    """
    keys = [primary_key_strings(raw_table, block) for block in blocks]
    lines = [block.column("_source_line").combine_chunks() for block in blocks]
    all_keys = pa.chunked_array(keys, pa.string())
    if pc.count_distinct(all_keys).as_py() == len(all_keys):
        return {}  # the usual case: one hash pass, nothing else
    frame = pd.DataFrame(
        {
            "key": all_keys.to_numpy(zero_copy_only=False),
            "line": pa.chunked_array(lines, pa.int64()).to_numpy(),
        }
    ).sort_values("line")
    first = frame.groupby("key", sort=False)["line"].transform("min")
    later = frame["line"] != first
    return {
        int(line): (key, int(first_line))
        for line, key, first_line in zip(
            frame["line"][later], frame["key"][later], first[later], strict=True
        )
    }


def duplicates_in(
    cur: psycopg.Cursor, raw_table: RawTable, target: sql.Composable, more: list[pa.Table]
) -> dict[int, tuple[str, int]]:
    """`later_duplicates` over the rows COPYed into `target` (this file's only) and `more`."""
    buffer = io.BytesIO()
    columns = [*raw_table.primary_key, "_source_line"]
    statement = sql.SQL("copy (select {} from {}) to stdout with (format csv)").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), target
    )
    with cur.copy(statement) as copy:
        for data in copy:
            buffer.write(data)
    blocks = list(more)
    if buffer.tell():
        buffer.seek(0)
        types = {**dict.fromkeys(raw_table.primary_key, pa.string()), "_source_line": pa.int64()}
        blocks.append(
            pcsv.read_csv(
                buffer,
                read_options=pcsv.ReadOptions(column_names=columns),
                parse_options=pcsv.ParseOptions(newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(column_types=types),
            )
        )
    return later_duplicates(raw_table, blocks) if blocks else {}


class KnownKeys:
    """What one load_day knows across its files: the keys of tables it bulk-loaded."""

    def __init__(self) -> None:
        self.complete_keys: dict[str, pa.Array] = {}

    def known_keys(self, cur: psycopg.Cursor, table_name: str, column: str) -> pa.Array:
        if table_name in self.complete_keys:
            return self.complete_keys[table_name]
        buffer = io.BytesIO()
        statement = sql.SQL("copy (select {} from {}) to stdout with (format csv)").format(
            sql.Identifier(column), sql.Identifier(RAW_SCHEMA, table_name)
        )
        with cur.copy(statement) as copy:
            for data in copy:
                buffer.write(data)
        if buffer.tell() == 0:
            keys = pa.array([], pa.string())
        else:
            buffer.seek(0)
            keys = (
                pcsv.read_csv(
                    buffer,
                    read_options=pcsv.ReadOptions(column_names=["key"]),
                    parse_options=pcsv.ParseOptions(newlines_in_values=True),
                    convert_options=pcsv.ConvertOptions(column_types={"key": pa.string()}),
                )
                .column("key")
                .combine_chunks()
            )
        self.complete_keys[table_name] = keys
        return keys


def unknown_mask(values: pa.Array, known: pa.Array) -> pa.Array:
    """True where a value is set but not among `known` (unique keys).

    Arrow builds a hash set per call, so the block's few distinct values become the set
    and the (possibly ten million) known keys only probe it.
    """
    distinct = pc.unique(values.drop_null())
    found = pc.is_in(known, value_set=distinct)
    if (pc.sum(found).as_py() or 0) == len(distinct):
        return pa.array(np.zeros(len(values), dtype=bool))
    missing = distinct.filter(pc.invert(pc.is_in(distinct, value_set=known.filter(found))))
    return pc.fill_null(pc.is_in(values, value_set=missing), False)


def unknown_references(
    raw_table: RawTable, valid: pa.Table, known: dict[str, pa.Array]
) -> tuple[pa.Table, list[Rejection], pa.Table]:
    """(rows whose references are all known, their rejections, the others' keys and lines)
    for a bulk load; a row with several unknown references is rejected for the first."""
    rejected: list[Rejection] = []
    dangling_keys: list[pa.Table] = []
    for name, keys in known.items():  # in the contract's column order
        unknown = unknown_mask(valid.column(name).combine_chunks(), keys)
        if not pc.any(unknown).as_py():
            continue
        entity = raw_table.column(name).references[0].rstrip("s")
        dangling = valid.filter(unknown)
        dangling_keys.append(dangling.select([*raw_table.primary_key, "_source_line"]))
        for row in dangling.to_pylist():
            line = row.pop("_source_line")
            rejected.append(
                Rejection(
                    line,
                    name,
                    f"unknown_{entity}",
                    f"{name}: unknown {entity} {row[name]}",
                    None,  # the row as written is added by the caller
                )
            )
        valid = valid.filter(pc.invert(unknown))
    keys = pa.concat_tables(dangling_keys) if dangling_keys else None
    return valid, rejected, keys


def delete_lines(
    cur: psycopg.Cursor, raw_table: RawTable, target: sql.Composable, lines: list[int]
) -> dict[int, str]:
    """Delete this file's rows at `lines` from `target`; line -> the row as JSON."""
    rows = cur.execute(
        sql.SQL(
            "delete from {} as t where _source_line = any(%s) returning _source_line, {}"
        ).format(target, record_sql(raw_table, "t")),
        (lines,),
    ).fetchall()
    return dict(rows)


def quarantine_dangling_references(cur: psycopg.Cursor, raw_table: RawTable) -> list[Rejection]:
    """Move rows of `incoming` that reference an unknown row out (loads into data)."""
    rejected: list[Rejection] = []
    for column in raw_table.columns:
        if column.references is None:
            continue
        ref_table, ref_column = column.references
        entity = ref_table.rstrip("s")
        rows = cur.execute(
            sql.SQL(
                """
                delete from incoming i
                where i.{col} is not null
                  and not exists (select 1 from {ref} r where r.{ref_col} = i.{col})
                returning i._source_line, i.{col}::text, {record}
                """
            ).format(
                col=sql.Identifier(column.name),
                ref=sql.Identifier(RAW_SCHEMA, ref_table),
                ref_col=sql.Identifier(ref_column),
                record=record_sql(raw_table, "i"),
            )
        ).fetchall()
        rejected += [
            Rejection(
                line,
                column.name,
                f"unknown_{entity}",
                f"{column.name}: unknown {entity} {value}",
                None,  # the row as written is read back from the file by the caller
            )
            for line, value, _ in rows
        ]
    return rejected
