"""Step 1 and the reading of step 2: find the day's files, check their headers, read them.

Every file is read as string columns, block by block, each row with the line it starts on
in the file. A line that is not a row of the header's shape (too few or too many fields, an
unterminated quote at the end, only spaces) is handed back as a `MalformedLine` for the
quarantine, and the rest of the file reads on. A file that cannot be read at all (not
UTF-8, a symbolic link, not really Parquet, ...) is refused with one line that names it,
what was expected and what was found, and never quotes a value from it.
"""

from __future__ import annotations

import codecs
import csv
import errno
import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from winback.ingest import landing
from winback.ingest.contract import TABLES, RawTable

CHUNK_ROWS = 500_000  # parquet batches
BLOCK_BYTES = 64 << 20  # CSV blocks: ~0.6M rows of the widest file
SUPPORTED_SUFFIXES = (".csv", ".parquet")
HEADER_BYTES = 64 << 10  # a header line longer than this is not a header
SCAN_BYTES = 1 << 20  # reads of the rare second passes (a bad byte, blank lines)
# Byte-order marks of encodings other than UTF-8, longest first (UTF-32 LE starts like
# UTF-16 LE).
FOREIGN_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
    (b"\x84\x31\x95\x33", "GB 18030"),
    (b"\xdd\x73\x66\x73", "UTF-EBCDIC"),
    (b"\x2b\x2f\x76", "UTF-7"),
    (b"\xf7\x64\x4c", "UTF-1"),
    (b"\x0e\xfe\xff", "SCSU"),
    (b"\xfb\xee\x28", "BOCU-1"),
)
PARQUET_MAGIC = b"PAR1"


class ContractError(ValueError):
    """A file that cannot be loaded at all (wrong header, unreadable, unknown name)."""


@dataclass
class MalformedLine:
    """A line that is not a row of the header's shape; `text` is as written."""

    line: int
    text: str
    fields: int
    expected: int


@dataclass
class Block:
    """One block of a file: its rows as strings with `_source_line`, its broken lines."""

    rows: pa.Table
    malformed: list[MalformedLine] = field(default_factory=list)


# --------------------------------------------------------------------------- discovery


def landing_folder(landing_root: Path, load_date: date) -> Path:
    """The day's folder: a local `Path`, or an `ObjectStoragePath` (`winback.ingest.landing`)."""
    return landing.delivery_folder(landing_root, load_date)


def discover_files(folder: Path) -> dict[str, Path]:
    """Map raw table name -> file in `folder`; unknown file names are an error, not ignored.

    Hidden files are skipped, and so are folders whose names are not input files'.
    """
    if not folder.is_dir():
        raise ContractError(f"no landing folder {folder}: nothing was delivered for that date")
    known = {t.stem: t.name for t in TABLES}
    found: dict[str, Path] = {}
    remote = landing.is_remote(folder)
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        # The delivery's marker is checked before the load (winback.ingest.manifest).
        if path.name.startswith(".") or path.name == landing.MANIFEST_NAME:
            continue
        named_like_input = path.suffix in SUPPORTED_SUFFIXES and path.stem in known
        if not remote and path.is_symlink():
            # Never followed, and the target never read: it may be any file on the machine.
            raise ContractError(
                f"{path.name}: refused, a symbolic link; put the file itself in the landing folder"
            )
        if path.is_dir():
            if named_like_input:
                raise ContractError(f"{path.name}: refused, a folder where a file was expected")
            continue
        if not named_like_input:
            hint = ""
            if path.suffix.lower() in SUPPORTED_SUFFIXES and path.stem.lower() in known:
                hint = f" (names are lower case: {path.stem.lower()}{path.suffix.lower()})"
            raise ContractError(
                f"{path.name}: not a winback input file{hint}; expected one of "
                f"{sorted(s + '.csv' for s in known)} (or .parquet)"
            )
        name = known[path.stem]
        if name in found:
            raise ContractError(f"{folder}: both {found[name].name} and {path.name} deliver {name}")
        found[name] = path
    return found


def open_source(path: Path) -> BinaryIO:
    """Open a landing file for reading bytes: the one place the loader opens one.

    A symbolic link is refused without being followed (`O_NOFOLLOW`), and so is anything
    that is not a regular file (opened non-blocking, so a named pipe cannot stall the load).
    An object in an object store is streamed with ranged GETs (`winback.ingest.landing`).
    """
    if landing.is_remote(path):
        return path.open("rb", block_size=landing.REMOTE_BLOCK_BYTES)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ContractError(f"{path.name}: refused, a symbolic link") from None
        raise ContractError(f"{path.name}: cannot be opened ({error.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ContractError(f"{path.name}: refused, not a regular file")
    return os.fdopen(fd, "rb")


# --------------------------------------------------------------------------- headers


def _csv_header(path: Path, handle: BinaryIO) -> tuple[list[str], int]:
    """(column names, byte offset where the rows start) from the file's first line.

    Only the first line is decoded, so a bad byte further down is reported by the read,
    with its line.
    """
    head = handle.read(HEADER_BYTES)
    if not head:
        raise ContractError(f"{path.name}: refused, the file is empty (not even a header line)")
    for bom, encoding in FOREIGN_BOMS:
        if head.startswith(bom):
            raise ContractError(
                f"{path.name}: not UTF-8 (it starts with the {encoding} byte-order mark "
                f"{bom.hex(' ')}); export it as UTF-8"
            )
    start = len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0
    end = head.find(b"\n", start)
    if end < 0:
        if len(head) == HEADER_BYTES:
            raise ContractError(
                f"{path.name}: refused, no line break in the first {HEADER_BYTES} bytes: "
                "not a CSV header"
            )
        end = len(head)
    line = head[start:end]
    if b"\x00" in line:
        raise ContractError(
            f"{path.name}: not UTF-8 (NUL bytes in the header line, as UTF-16 has); "
            "export it as UTF-8"
        )
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ContractError(
            f"{path.name}: not UTF-8 (byte 0x{line[error.start]:02x} at line 1); export it as UTF-8"
        ) from None
    names = [h.strip() for h in next(csv.reader([text.rstrip("\r")]), [])]
    return names, end + 1


def _parquet_schema(path: Path, handle: BinaryIO):
    import pyarrow.parquet as pq

    head = handle.read(len(PARQUET_MAGIC))
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(size - len(PARQUET_MAGIC), 0))
    tail = handle.read()
    if head != PARQUET_MAGIC or tail != PARQUET_MAGIC or size < 3 * len(PARQUET_MAGIC):
        raise ContractError(
            f"{path.name}: not a Parquet file (no PAR1 marks at its start and end; "
            "is it CSV named .parquet?)"
        )
    handle.seek(0)
    try:
        return pq.ParquetFile(handle)
    except (pa.ArrowException, OSError) as error:
        raise ContractError(
            f"{path.name}: not a readable Parquet file ({type(error).__name__})"
        ) from None


def read_header(path: Path) -> list[str]:
    with open_source(path) as handle:
        if path.suffix == ".parquet":
            return list(_parquet_schema(path, handle).schema_arrow.names)
        return _csv_header(path, handle)[0]


def check_header(raw_table: RawTable, path: Path) -> None:
    """Refuse a file whose header lacks a required column or has one the contract lacks."""
    header = read_header(path)
    expected = raw_table.column_names
    missing = [c for c in raw_table.required_column_names if c not in header]
    unexpected = [c for c in header if c not in expected]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    optional = [c for c in expected if c not in raw_table.required_column_names]
    if missing or unexpected or duplicated:
        hint = ""
        if len(header) == 1 and any(d in header[0] for d in ";\t|"):
            hint = " The header is one column: winback reads comma-separated files."
        raise ContractError(
            f"{path.name}: refused, the header does not match the {raw_table.name} contract. "
            f"Expected columns: {', '.join(expected)} (optional: {', '.join(optional) or 'none'}). "
            f"Missing: {', '.join(missing) or 'none'}; "
            f"unexpected: {_names(unexpected)}"
            + (f"; repeated: {', '.join(duplicated)}." if duplicated else ".")
            + hint
        )


def _names(names: list[str]) -> str:
    """Unexpected column names for a message, shortened: a file without its header line
    puts a row's values there."""
    if not names:
        return "none"
    shown = [(n if len(n) <= 40 else n[:37] + "...") or "(empty)" for n in names[:10]]
    return ", ".join(shown) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


# --------------------------------------------------------------------------- reading


def read_batches(path: Path, columns: list[str]) -> Iterator[Block]:
    """Yield the file block by block: string columns and the line each row starts on.

    Values come as written (not trimmed, never null); optional columns the file leaves
    out come back empty. Blank lines are not rows; malformed lines come with their block.
    """
    with open_source(path) as handle:
        if path.suffix == ".parquet":
            yield from _parquet_blocks(path, handle, columns)
        else:
            yield from _CsvReader(path, handle, columns).blocks()


def _with_columns(batch, present: list[str], columns: list[str], lines: pa.Array) -> pa.Table:
    rows = len(lines)
    arrays = [batch.column(c) if c in present else pa.repeat("", rows) for c in columns]
    return pa.Table.from_arrays([*arrays, lines], names=[*columns, "_source_line"])


def _parquet_blocks(path: Path, handle: BinaryIO, columns: list[str]) -> Iterator[Block]:
    parquet = _parquet_schema(path, handle)
    present = [c for c in columns if c in parquet.schema_arrow.names]
    offset = 0  # row n of the file is "line" n
    batches = parquet.iter_batches(batch_size=CHUNK_ROWS, columns=present)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as error:
            raise ContractError(
                f"{path.name}: a Parquet row group cannot be read after row {offset} "
                f"({type(error).__name__})"
            ) from None
        try:
            # Typed parquet columns are checked as the text pandas writes for them.
            frame = batch.to_pandas().astype("string").fillna("")
            batch = pa.RecordBatch.from_arrays(
                [pa.array(frame[c].astype(object).tolist(), pa.string()) for c in present],
                names=present,
            )
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as error:
            types = ", ".join(f"{f.name} {f.type}" for f in batch.schema)
            raise ContractError(
                f"{path.name}: a Parquet column cannot be read as text ({type(error).__name__}; "
                f"columns: {types})"
            ) from None
        rows = batch.num_rows
        if rows:
            lines = pa.array(np.arange(offset + 1, offset + rows + 1))
            offset += rows
            yield Block(_with_columns(batch, present, columns, lines))


class _CsvReader:
    """pyarrow's streaming CSV reader, with the true line of every row and broken line.

    pyarrow numbers the records it parses (blank lines included) and hands a record of the
    wrong shape to `invalid_row_handler` instead of failing. The reader parses serially,
    so those numbers are exact, and a record's line is its number plus the line breaks
    inside the quoted values of the records before it. A blank line and a line of empty
    fields (`,,,`) come out alike, as a row of empty strings; both are one line long, so
    the numbering holds, and the few such rows are told apart at the end by reading their
    lines.
    """

    def __init__(self, path: Path, handle: BinaryIO, columns: list[str]):
        self.path, self.handle, self.columns = path, handle, columns
        self.header, self.body_offset = _csv_header(path, handle)
        self.present = [c for c in columns if c in self.header]
        self.invalid: list[tuple[int, str, int, int]] = []  # (record, text, fields, expected)
        self.next_record = 1  # records are numbered from 1 after the header
        self.breaks_before = 0  # line breaks inside the records numbered so far
        self.empty_lines: list[int] = []
        self.last_line = 1

    def _on_invalid_row(self, row) -> str:
        self.invalid.append((row.number, row.text, row.actual_columns, row.expected_columns))
        return "skip"

    def _open(self):
        self.handle.seek(self.body_offset)
        return pcsv.open_csv(
            self.handle,
            read_options=pcsv.ReadOptions(
                column_names=self.header, block_size=BLOCK_BYTES, use_threads=False
            ),
            parse_options=pcsv.ParseOptions(
                # Quoted values may span lines (an address, a note); csv allows it, so we do.
                newlines_in_values=True,
                # Blank lines stay records so that pyarrow's numbering counts them.
                ignore_empty_lines=False,
                invalid_row_handler=self._on_invalid_row,
            ),
            convert_options=pcsv.ConvertOptions(
                include_columns=self.present,
                column_types=dict.fromkeys(self.present, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )

    def blocks(self) -> Iterator[Block]:
        try:
            reader = self._open()
        except pa.ArrowInvalid as error:
            if "Empty CSV file" in str(error):
                return  # a header and nothing else: no rows
            self._refuse(error)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, UnicodeDecodeError) as error:
                self._refuse(error)
            yield self._block(batch)
        if self.invalid:
            yield self._block(None)
        if self.empty_lines:
            yield self._empty_field_rows()

    def _refuse(self, error: Exception):
        """Raise the ContractError for a read that failed; pyarrow's text quotes rows."""
        # Whatever pyarrow says (a bad byte in a malformed row reaches it as a parse
        # error), a byte that is not UTF-8 is the first thing to report.
        where = first_invalid_utf8(self.handle)
        if where is not None:
            byte, line = where
            raise ContractError(
                f"{self.path.name}: not UTF-8 (byte 0x{byte:02x} at line {line}); "
                "export it as UTF-8"
            ) from None
        if "straddling" in str(error):
            raise ContractError(
                f"{self.path.name}: refused, a quoted value opened after line {self.last_line} "
                "never closes (an unterminated quote); the export is cut or broken"
            ) from None
        raise ContractError(
            f"{self.path.name}: not readable as CSV after line {self.last_line} "
            f"({type(error).__name__})"
        ) from None

    def _block(self, batch: pa.RecordBatch | None) -> Block:
        """The block's rows with their lines, and the broken lines numbered before them."""
        rows = 0 if batch is None else batch.num_rows
        breaks, has_breaks = None, False
        for name in self.present if rows else []:
            column = batch.column(name)
            # One memchr pass over the column's bytes first: line breaks in values are rare.
            data = column.buffers()[2]
            if data is not None and data.to_pybytes().find(b"\n") >= 0:
                counts = pc.count_substring(column, "\n").to_numpy(zero_copy_only=False)
                breaks = counts if breaks is None else breaks + counts
                has_breaks = True
        if not self.invalid and not has_breaks:
            # The usual block: one line per record, no broken line.
            first = 1 + self.next_record + self.breaks_before
            lines = np.arange(first, first + rows, dtype=np.int64)
            invalid_now = []
            if rows:
                self.next_record += rows
                self.last_line = int(lines[-1])
        else:
            lines, invalid_now = self._number(rows, breaks)
        malformed = [
            MalformedLine(int(line), text, fields, expected)
            for line, (_, text, fields, expected) in zip(lines[rows:], invalid_now, strict=True)
        ]
        if batch is None:
            return Block(_with_columns(None, [], self.columns, pa.array([], pa.int64())), malformed)
        table = _with_columns(batch, self.present, self.columns, pa.array(lines[:rows]))
        empty = None
        for name in self.present:
            blank = pc.equal(pc.binary_length(table.column(name)), 0)
            empty = blank if empty is None else pc.and_(empty, blank)
            if not pc.any(empty).as_py():
                break  # the usual case, decided by the first column (an id)
        if empty is not None and pc.any(empty).as_py():
            self.empty_lines += table.filter(empty).column("_source_line").to_pylist()
            table = table.filter(pc.invert(empty))
        return Block(table, malformed)

    def _number(self, rows: int, breaks: np.ndarray | None) -> tuple[np.ndarray, list]:
        """(lines of the block's rows then of its broken lines, those broken lines)."""
        self.invalid.sort()
        invalid_records = np.array([r[0] for r in self.invalid], dtype=np.int64)
        # Valid row k is record next + k + (invalid records before it).
        valid_rank = invalid_records - self.next_record - np.arange(len(invalid_records))
        k = np.arange(rows, dtype=np.int64)
        records = self.next_record + k + np.searchsorted(valid_rank, k, side="right")
        last = int(records[-1]) if rows else int(invalid_records.max(initial=0))
        taken = invalid_records <= last
        invalid_now = [r for r, keep in zip(self.invalid, taken, strict=True) if keep]
        self.invalid = [r for r, keep in zip(self.invalid, taken, strict=True) if not keep]
        if breaks is None:
            breaks = np.zeros(rows, dtype=np.int64)
        all_records = np.concatenate([records, [r[0] for r in invalid_now]]).astype(np.int64)
        all_breaks = np.concatenate([breaks, [r[1].count("\n") for r in invalid_now]])
        order = np.argsort(all_records, kind="stable")
        before = np.cumsum(all_breaks[order]) - all_breaks[order] + self.breaks_before
        lines = np.empty(len(all_records), dtype=np.int64)
        lines[order] = 1 + all_records[order] + before
        if len(all_records):
            self.next_record = int(all_records.max()) + 1
            self.breaks_before += int(all_breaks.sum())
            self.last_line = int(lines.max())
        return lines, invalid_now

    def _empty_field_rows(self) -> Block:
        """The rows of only empty fields that are written as such (`,,,`), not blank lines."""
        texts = physical_lines(self.handle, set(self.empty_lines))
        lines = [n for n in self.empty_lines if texts.get(n, b"").strip(b"\r") != b""]
        table = pa.table(
            {
                **{c: pa.array([""] * len(lines), pa.string()) for c in self.columns},
                "_source_line": pa.array(lines, pa.int64()),
            }
        )
        return Block(table)


def physical_lines(handle: BinaryIO, wanted: set[int]) -> dict[int, bytes]:
    """The bytes of the given 1-based lines of the file (line breaks counted as LF)."""
    found: dict[int, bytes] = {}
    if not wanted:
        return found
    handle.seek(0)
    line, partial, last = 1, b"", max(wanted)
    while line <= last:
        chunk = handle.read(SCAN_BYTES)
        if not chunk:
            if line in wanted:
                found[line] = partial
            break
        parts = (partial + chunk).split(b"\n")
        partial = parts.pop()
        for text in parts:
            if line in wanted:
                found[line] = text
            line += 1
    return found


def first_invalid_utf8(handle: BinaryIO) -> tuple[int, int] | None:
    """(the byte, its 1-based line) of the file's first byte that is not UTF-8."""
    handle.seek(0)
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 1
    while True:
        chunk = handle.read(SCAN_BYTES)
        try:
            decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as error:
            # `error.object` is the chunk behind the few bytes of a character the previous
            # read cut in two, which hold no line break.
            data = error.object
            return data[error.start], lines + data.count(b"\n", 0, error.start)
        if not chunk:
            return None
        lines += chunk.count(b"\n")


def csv_rows_at(path: Path, columns: list[str], lines: list[int]) -> dict[int, dict[str, str]]:
    """line -> the values, as written, of the CSV record starting on each of `lines`.

    For rows rejected after their COPY: only the chunks holding those lines are split,
    so this costs about one read of the file's bytes, not another parse of it.
    """
    with open_source(path) as handle:
        header, _ = _csv_header(path, handle)
        texts = _record_texts(handle, sorted(set(lines)))
    rows = {}
    for line, text in texts.items():
        values = dict(
            zip(header, next(csv.reader(io.StringIO(text, newline="")), []), strict=False)
        )
        rows[line] = {c: values.get(c, "") for c in columns}
    return rows


def _record_texts(handle: BinaryIO, starts: list[int]) -> dict[int, str]:
    """The text of the record starting on each line of `starts` (sorted): its first line,
    and the next ones while a quoted value is open."""
    handle.seek(0)
    found: dict[int, str] = {}
    line, rest, next_start = 1, b"", 0  # `line` is the number of the first line of `rest`
    record: list[bytes] = []  # the lines of a record that is still open
    record_start = quotes = 0
    while next_start < len(starts) or record:
        chunk = handle.read(SCAN_BYTES)
        data = rest + chunk
        if chunk:
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            complete, rest = data[:cut], data[cut + 1 :]
        else:
            complete, rest = data, b""
        count = complete.count(b"\n") + 1
        if not record and (next_start == len(starts) or starts[next_start] >= line + count):
            line += count
        else:
            for offset, text in enumerate(complete.split(b"\n")):
                if not record:
                    if next_start == len(starts) or starts[next_start] != line + offset:
                        continue
                    record_start, quotes, next_start = line + offset, 0, next_start + 1
                record.append(text)
                quotes += text.count(b'"')
                if quotes % 2 == 0:
                    whole = b"\n".join(record)
                    found[record_start] = whole.removesuffix(b"\r").decode("utf-8")
                    record = []
            line += count
        if not chunk:
            if record:  # a quote open to the end of the file
                found[record_start] = b"\n".join(record).decode("utf-8")
            break
    return found
