"""PostgreSQL's binary COPY format to and from numpy, for fixed-width columns.

Scoring moves millions of numbers each way: formatting doubles as CSV text cost more than
predicting them, and a Python object per row more than both. When every column is
fixed-width and never NULL, each row of the binary format is the same record (a field
count, then a length and a value per field), so a whole stream is one numpy structured
array: `binary_copy_block` writes one, `copy_out_columns` reads one. Column types are numpy
big-endian codes (`">i4"`, `">i8"`, `">f8"`), as the format stores them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import psycopg


class BinaryCopyError(RuntimeError):
    """A COPY stream that is not the fixed-width, NULL-free layout asked for."""


BINARY_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
BINARY_COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)


def binary_copy_block(frame: pd.DataFrame, column_types: dict[str, str]) -> bytes:
    """`frame`'s columns as one complete PostgreSQL binary COPY stream (no NULLs)."""
    fields = [("field_count", ">i2")]
    for name, dtype in column_types.items():
        fields += [(f"{name}__length", ">i4"), (name, dtype)]
    rows = np.empty(len(frame), dtype=fields)
    rows["field_count"] = len(column_types)
    for name, dtype in column_types.items():
        rows[f"{name}__length"] = np.dtype(dtype).itemsize
        rows[name] = frame[name].to_numpy()
    return BINARY_COPY_HEADER + rows.tobytes() + BINARY_COPY_TRAILER


def copy_out_columns(conn: psycopg.Connection, query: str, column_types: dict) -> dict:
    """`query`'s fixed-width, never-NULL columns as numpy arrays, by binary COPY.

    The counterpart of `binary_copy_block`: every row of PostgreSQL's binary format is then
    the same record (a field count, and a length and value per field), so the whole
    stream is one numpy structured array, with no Python object per row.
    """
    with conn.cursor() as cursor, cursor.copy(f"copy ({query}) to stdout (format binary)") as copy:
        stream = b"".join(bytes(block) for block in copy)
    extension_length = int.from_bytes(stream[15:19], "big")
    body = stream[19 + extension_length : -2]
    fields = [("field_count", ">i2")]
    for name, dtype in column_types.items():
        fields += [(f"{name}__length", ">i4"), (name, dtype)]
    record = np.dtype(fields)
    if stream[-2:] != BINARY_COPY_TRAILER or len(body) % record.itemsize:
        raise BinaryCopyError(f"unexpected binary COPY layout (a NULL?) from: {query.strip()}")
    rows = np.frombuffer(body, dtype=record)
    for name, dtype in column_types.items():
        if np.any(rows[f"{name}__length"] != np.dtype(dtype).itemsize):
            raise BinaryCopyError(f"column {name} has a NULL or another width in: {query.strip()}")
    return {name: rows[name].astype(np.dtype(dtype).newbyteorder("=")) for name, dtype in
            column_types.items()}  # fmt: skip
