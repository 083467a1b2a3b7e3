"""Step 1 and the reading of step 2: find the day's files, check their headers, read them.

Every file is read as string columns, block by block, each row with its 1-based line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from winback.ingest.contract import TABLES, RawTable

CHUNK_ROWS = 500_000  # parquet batches
BLOCK_BYTES = 64 << 20  # CSV blocks: ~0.6M rows of the widest file
SUPPORTED_SUFFIXES = (".csv", ".parquet")


class ContractError(ValueError):
    """A file that cannot be loaded at all (wrong header, unreadable, unknown name)."""


# --------------------------------------------------------------------------- discovery


def landing_folder(landing_root: Path, load_date: date) -> Path:
    return Path(landing_root) / load_date.isoformat()


def discover_files(folder: Path) -> dict[str, Path]:
    """Map raw table name -> file in `folder`; unknown file names are an error, not ignored."""
    if not folder.is_dir():
        raise ContractError(f"no landing folder {folder}: nothing was delivered for that date")
    known = {t.stem: t.name for t in TABLES}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix not in SUPPORTED_SUFFIXES or path.stem not in known:
            raise ContractError(
                f"{path.name}: not a winback input file; expected one of "
                f"{sorted(s + '.csv' for s in known)} (or .parquet)"
            )
        name = known[path.stem]
        if name in found:
            raise ContractError(f"{folder}: both {found[name].name} and {path.name} deliver {name}")
        found[name] = path
    return found


def read_header(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [h.strip() for h in next(csv.reader(handle), [])]


def check_header(raw_table: RawTable, path: Path) -> None:
    """Refuse a file whose header lacks a required column or has one the contract lacks."""
    header = read_header(path)
    expected = raw_table.column_names
    missing = [c for c in raw_table.required_column_names if c not in header]
    unexpected = [c for c in header if c not in expected]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    optional = [c for c in expected if c not in raw_table.required_column_names]
    if missing or unexpected or duplicated:
        raise ContractError(
            f"{path.name}: refused, the header does not match the {raw_table.name} contract. "
            f"Expected columns: {', '.join(expected)} (optional: {', '.join(optional) or 'none'}). "
            f"Missing: {', '.join(missing) or 'none'}; "
            f"unexpected: {', '.join(unexpected) or 'none'}"
            + (f"; repeated: {', '.join(duplicated)}." if duplicated else ".")
        )


def read_batches(path: Path, columns: list[str]) -> Iterator[pa.Table]:
    """Yield the file as string columns, block by block, with a 1-based `_source_line`.

    Values come as written (not trimmed, never null); optional columns the file leaves
    out come back empty.
    """
    header = read_header(path)
    present = [c for c in columns if c in header]
    if path.suffix == ".parquet":
        batches, first_line = _parquet_batches(path, present), 1
    else:
        # Line 1 is the header, so record n is on line n + 1.
        batches, first_line = _csv_batches(path, header, present), 2
    offset = 0
    for batch in batches:
        rows = batch.num_rows
        if rows == 0:
            continue
        arrays = [batch.column(c) if c in present else pa.repeat("", rows) for c in columns]
        lines = pa.array(np.arange(first_line + offset, first_line + offset + rows))
        offset += rows
        yield pa.Table.from_arrays([*arrays, lines], names=[*columns, "_source_line"])


def _csv_batches(path: Path, header: list[str], present: list[str]) -> Iterator[pa.RecordBatch]:
    reader = pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(column_names=header, skip_rows=1, block_size=BLOCK_BYTES),
        # Quoted values may span lines (an address, a note); csv allows it, so we do.
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            include_columns=present,
            column_types=dict.fromkeys(present, pa.string()),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as error:
            raise ContractError(f"{path.name}: unreadable CSV ({error})") from error
        yield batch


def _parquet_batches(path: Path, present: list[str]) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS, columns=present):
        # Typed parquet columns are checked as the text pandas writes for them.
        frame = batch.to_pandas().astype("string").fillna("")
        yield pa.RecordBatch.from_arrays(
            [pa.array(frame[c].astype(object).tolist(), pa.string()) for c in present],
            names=present,
        )
