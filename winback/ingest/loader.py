"""Load a logical date's landing files into the `raw` schema, enforcing the input contract.

For every file of the day (`<landing>/<YYYY-MM-DD>/<table>.csv` or `.parquet`):

1. The header must name exactly the contract's columns, or the whole day is refused
   before anything is written, with a message that lists the expected columns.
2. The file is read in blocks of string columns with pyarrow. A vectorised screen proves
   most rows valid (strict ISO timestamps, plain decimals, ASCII emails and codes ...)
   and normalises them (trimmed, emails lower-cased, phones to E.164, each distinct
   number and country parsed once). Every row it cannot prove valid goes through the
   reference checks (`validate_chunk`, plain pandas), which decide and word the reason,
   so a verdict never depends on which path a row took.
3. Within the file, a later duplicate of a primary key is quarantined (the first valid
   row wins), and so is a row that references an unknown customer/order/product.
4. Valid rows are streamed with COPY. Into an empty table (a first load) they go straight
   in, with its indexes dropped and rebuilt after, in the transaction that truncated it
   (wal_level minimal then skips the WAL). Into a table with data they go through a
   temporary table and an upsert that only replaces a row loaded for the same or an
   earlier date, so re-loading an old day (a backfill) never overwrites newer data.
5. Broken rows go to `raw.quarantine` with file, line, column, rule, reason and the raw
   record; `raw.load_batches` records rows read, loaded and quarantined, which reconcile.

Everything for one day happens in one transaction, and the day's previous quarantine rows
are replaced, so loading the same day twice changes nothing. docs/loading.md has figures.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from time import perf_counter

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from winback.ingest import phones
from winback.ingest.contract import RAW_SCHEMA, TABLES, Column, RawTable
from winback.orchestration import progress
from winback.warehouse import raw_schema

log = logging.getLogger(__name__)

CHUNK_ROWS = 500_000  # parquet batches
BLOCK_BYTES = 64 << 20  # CSV blocks: ~0.6M rows of the widest file
SUPPORTED_SUFFIXES = (".csv", ".parquet")
# RFC 5322 allows far more, but a winback email must be deliverable by an ordinary ESP:
# one @, no spaces, a dotted domain with an alphabetic top-level label.
_DOMAIN_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
EMAIL_PATTERN = re.compile(
    rf"^[a-z0-9.!#$%&'*+/=?^_`{{|}}~-]+@{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*\.[a-z]{{2,}}$"
)
MAX_AMOUNT = 10**12  # numeric(14, 2)
LINEAGE_COLUMNS = ("_load_date", "_source_file", "_source_line")
# Composite keys are compared as one string; PostgreSQL text cannot hold NUL, so no id
# can contain the separator.
KEY_SEPARATOR = "\x00"


class ContractError(ValueError):
    """A file that cannot be loaded at all (wrong header, unreadable, unknown name)."""


@dataclass
class FileReport:
    table: str
    source_file: str
    rows_read: int
    rows_loaded: int
    rows_quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the file's checks, COPY and index builds


@dataclass
class LoadReport:
    load_date: date
    files: list[FileReport]

    @property
    def rows_read(self) -> int:
        return sum(f.rows_read for f in self.files)

    @property
    def rows_loaded(self) -> int:
        return sum(f.rows_loaded for f in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(f.rows_quarantined for f in self.files)

    def as_dict(self) -> dict:
        return {
            "load_date": self.load_date.isoformat(),
            "rows_read": self.rows_read,
            "rows_loaded": self.rows_loaded,
            "rows_quarantined": self.rows_quarantined,
            "files": [f.__dict__ for f in self.files],
        }


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


# --------------------------------------------------------------------------- reference checks
# The rules as plain pandas code: the authority on every verdict, reason text and rule
# code. The loader runs them only on the rows the vectorised screen below cannot prove
# valid (broken rows, and unusual but possibly valid spellings), so they cost little.


@dataclass
class ValidatedChunk:
    valid: pd.DataFrame  # normalised values, ready for COPY
    rejected: pd.DataFrame  # _source_line, column_name, reason, raw_record


def _check_column(
    column: Column, values: pd.Series, frame: pd.DataFrame, latest_allowed: pd.Timestamp
) -> tuple[pd.Series, pd.Series]:
    """Return (normalised values, reason or '' per row, rule or '' per row) for one column."""
    stripped = values.str.strip()
    empty = stripped == ""
    reason = pd.Series("", index=values.index, dtype=object)
    rule = pd.Series("", index=values.index, dtype=object)

    def flag(mask: pd.Series, text, code: str) -> None:
        reason[mask] = text if isinstance(text, str) else text[mask]
        rule[mask] = code

    normalised: pd.Series = stripped.astype(object)
    kind = column.kind

    if kind == "timestamp" or kind == "date":
        parsed = pd.to_datetime(stripped.where(~empty), errors="coerce", utc=True, format="ISO8601")
        bad = parsed.isna() & ~empty
        flag(bad, f"unparseable {kind} '" + stripped + "'", f"unparseable_{kind}")
        if kind == "timestamp":  # events cannot be in the future; dates (expiries) can
            future = (parsed > latest_allowed) & ~bad
            flag(
                future,
                f"timestamp in the future (after {latest_allowed.isoformat()})",
                "future_timestamp",
            )
        if kind == "timestamp":
            normalised = parsed.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").astype(object)
        else:
            normalised = parsed.dt.strftime("%Y-%m-%d").astype(object)
        normalised[parsed.isna()] = ""
    elif kind in ("amount", "integer"):
        numbers = pd.to_numeric(stripped.where(~empty), errors="coerce")
        finite = np.isfinite(numbers.astype(float))
        bad = ~finite & ~empty
        flag(bad, f"non-numeric {kind} '" + stripped + "'", f"non_numeric_{kind}")
        ok = finite & ~empty
        if kind == "integer":
            fractional = ok & (numbers.astype(float) % 1 != 0)
            flag(fractional, "not a whole number '" + stripped + "'", "not_whole_number")
            ok &= ~fractional
        if not column.signed:
            negative = ok & (numbers < 0)
            flag(negative, f"negative {kind} " + stripped, f"negative_{kind}")
        too_large = ok & (numbers.abs() >= MAX_AMOUNT)
        flag(too_large, f"{kind} out of range " + stripped, f"{kind}_out_of_range")
        ok &= ~too_large
        if kind == "integer" and ok.any():
            # '2.0' or '1e3' are whole numbers, but bigint's input parser refuses them.
            normalised = normalised.astype(object)
            normalised[ok] = numbers[ok].astype("int64").astype(str).astype(object)
    elif kind == "email":
        lowered = stripped.str.lower()
        bad = ~empty & ~lowered.str.match(EMAIL_PATTERN)
        flag(bad, "malformed email", "malformed_email")
        normalised = lowered.astype(object)
    elif kind == "phone":
        countries = frame["country"].str.strip().str.upper() if "country" in frame else ""
        e164_values = pd.Series("", index=values.index, dtype=object)
        for idx in stripped.index[~empty]:
            e164 = phones.to_e164(stripped[idx], countries[idx] if len(countries) else "")
            if e164 is None:
                reason[idx] = "invalid phone number for the customer's country"
                rule[idx] = "invalid_phone"
            else:
                e164_values[idx] = e164
        normalised = e164_values
    elif kind == "country":
        upper = stripped.str.upper()
        bad = ~empty & ~upper.str.fullmatch(r"[A-Z]{2}")
        flag(bad, "invalid country code '" + stripped + "'", "invalid_country")
        normalised = upper.astype(object)
    elif kind == "currency":
        upper = stripped.str.upper()
        bad = ~empty & ~upper.str.fullmatch(r"[A-Z]{3}")
        flag(bad, "invalid currency code '" + stripped + "'", "invalid_currency")
        normalised = upper.astype(object)
    elif kind == "enum":
        lowered = stripped.str.lower()
        bad = ~empty & ~lowered.isin(column.choices)
        expected = f"' (expected one of {', '.join(column.choices)})"
        flag(bad, "unexpected value '" + stripped + expected, "unexpected_value")
        normalised = lowered.astype(object)

    if column.required:
        flag(empty, "missing value", "missing_value")
    return normalised, reason, rule


def validate_chunk(raw_table: RawTable, frame: pd.DataFrame, load_date: date) -> ValidatedChunk:
    # Data for day D may carry any time of day D, in any time zone ahead of UTC.
    latest_allowed = pd.Timestamp(datetime.combine(load_date + timedelta(days=1), time(), UTC))
    latest_allowed += pd.Timedelta(hours=14)
    reasons: dict[str, pd.Series] = {}
    rules: dict[str, pd.Series] = {}
    normalised: dict[str, pd.Series] = {}
    for column in raw_table.columns:
        values, reason, rule = _check_column(column, frame[column.name], frame, latest_allowed)
        normalised[column.name] = values
        reasons[column.name] = reason
        rules[column.name] = rule

    reason_frame = pd.DataFrame(reasons)
    has_reason = reason_frame != ""
    is_bad = has_reason.any(axis=1)
    first_bad_column = has_reason.idxmax(axis=1)
    all_reasons = reason_frame[is_bad].apply(
        lambda row: "; ".join(f"{col}: {text}" for col, text in row.items() if text), axis=1
    )
    rule_frame = pd.DataFrame(rules)
    first_rule = pd.Series(
        [rule_frame.at[i, c] for i, c in first_bad_column[is_bad].items()],
        index=first_bad_column[is_bad].index,
        dtype=object,
    )

    valid = pd.DataFrame(normalised)[~is_bad]
    valid["_source_line"] = frame.loc[~is_bad, "_source_line"]
    rejected_raw = frame.loc[is_bad, raw_table.column_names]
    rejected = pd.DataFrame(
        {
            "_source_line": frame.loc[is_bad, "_source_line"],
            "column_name": first_bad_column[is_bad],
            "rule": first_rule,
            "reason": all_reasons if len(all_reasons) else pd.Series(dtype=object),
            "raw_record": rejected_raw.apply(lambda r: r.to_json(), axis=1)
            if len(rejected_raw)
            else pd.Series(dtype=object),
        }
    )
    return ValidatedChunk(valid=valid, rejected=rejected)


# --------------------------------------------------------------------------- the screen
# Vectorised checks that prove a value valid only where the reference checks would accept
# it and normalise it the same way; anything else is left to the reference checks.
# Strict forms only: a timestamp 'YYYY-MM-DDTHH:MM:SSZ' (no fraction, offset or leap
# second; a year pandas can represent), a date 'YYYY-MM-DD', a decimal with at most 12
# integer and 2 fraction digits, ASCII emails and codes (Python's lower/upper equal the
# ASCII ones there).

_YMD = r"(?:19|20)[0-9]{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
STRICT_TIMESTAMP = rf"^{_YMD}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$"
STRICT_DATE = rf"^{_YMD}$"
STRICT_AMOUNT = r"^[0-9]{1,12}(?:\.[0-9]{1,2})?$"
STRICT_INTEGER = r"^[0-9]{1,12}$"
STRICT_SIGNED_INTEGER = r"^-?[0-9]{1,12}$"
CODE_PATTERNS = {"country": r"^[A-Z]{2}$", "currency": r"^[A-Z]{3}$"}
UTC_SECONDS = pa.timestamp("s", "UTC")


@functools.cache
def python_whitespace() -> str:
    """Every character `str.strip()` removes, so that the screen trims exactly as it does."""
    return "".join(filter(str.isspace, map(chr, range(sys.maxunicode + 1))))


def _latest_allowed(load_date: date) -> datetime:
    # Data for day D may carry any time of day D, in any time zone ahead of UTC.
    return datetime.combine(load_date + timedelta(days=1), time(), UTC) + timedelta(hours=14)


def _calendar_checked(trimmed: pa.Array, pattern: str, fmt: str, placeholder: str, as_type):
    """(strict-form mask, parsed value): the strict form that names a real calendar day."""
    strict = pc.match_substring_regex(trimmed, pattern)
    filled = pc.if_else(strict, trimmed, placeholder)
    try:
        # Arrow's ISO 8601 cast refuses an impossible day ('2025-02-30') for the whole
        # block, so it only serves when every strict value is a real day (the usual case).
        return strict, pc.cast(filled, as_type)
    except pa.ArrowInvalid:
        pass
    # strptime rolls an impossible day over ('2025-02-30' -> March 2): compare the day.
    parsed = pc.strptime(filled, format=fmt, unit="s", error_is_null=True)
    day_written = pc.cast(pc.utf8_slice_codeunits(filled, 8, 10), pa.int64())
    same_day = pc.fill_null(pc.equal(pc.day(parsed), day_written), False)
    return pc.and_(strict, same_day), pc.cast(parsed, as_type)


def _screen_phones(trimmed: pa.Array, countries: pa.Array | None, empty: pa.Array):
    """(E.164 or null, valid) per row; each distinct number and country is parsed once."""
    rows = len(trimmed)
    filled = pc.indices_nonzero(pc.invert(empty))
    values = np.full(rows, None, dtype=object)
    valid = np.ones(rows, dtype=bool)
    if len(filled):
        numbers = trimmed.take(filled).to_pylist()
        codes = countries.take(filled).to_pylist() if countries is not None else [""] * len(numbers)
        e164 = phones.to_e164_many(list(zip(numbers, codes, strict=True)))
        where = filled.to_numpy()
        values[where] = e164
        valid[where] = [v is not None for v in e164]
    return pa.array(values, pa.string()), pa.array(valid)


def screen_batch(raw_table: RawTable, batch: pa.Table, load_date: date):
    """(normalised string columns with null for empty, rows proven valid) for one block."""
    latest = pa.scalar(_latest_allowed(load_date), pa.timestamp("s", "UTC"))
    trimmed = {
        c.name: pc.utf8_trim(batch.column(c.name).combine_chunks(), python_whitespace())
        for c in raw_table.columns
    }
    countries = pc.ascii_upper(trimmed["country"]) if "country" in trimmed else None
    proven = pa.array(np.ones(batch.num_rows, dtype=bool))
    normalised: dict[str, pa.Array] = {}
    for column in raw_table.columns:
        value = trimmed[column.name]
        empty = pc.equal(pc.binary_length(value), 0)
        ok, value = _screen_column(column, value, empty, countries, latest)
        ok = pc.and_not(ok, empty) if column.required else pc.or_(ok, empty)
        proven = pc.and_(proven, ok)
        normalised[column.name] = pc.if_else(empty, pa.scalar(None, pa.string()), value)
    return normalised, proven


def _screen_column(column: Column, value, empty, countries, latest):
    kind = column.kind
    if kind in ("id", "text"):
        return pa.array(np.ones(len(value), dtype=bool)), value
    if kind == "timestamp":
        ok, parsed = _calendar_checked(
            value, STRICT_TIMESTAMP, "%Y-%m-%dT%H:%M:%SZ", "2000-01-01T00:00:00Z", UTC_SECONDS
        )
        return pc.and_(ok, pc.fill_null(pc.less_equal(parsed, latest), False)), value
    if kind == "date":
        return _calendar_checked(value, STRICT_DATE, "%Y-%m-%d", "2000-01-01", pa.date32())[
            0
        ], value
    if kind == "amount":
        return pc.match_substring_regex(value, STRICT_AMOUNT), value
    if kind == "integer":
        pattern = STRICT_SIGNED_INTEGER if column.signed else STRICT_INTEGER
        return pc.match_substring_regex(value, pattern), value
    if kind == "phone":
        e164, valid = _screen_phones(value, countries, empty)
        return valid, e164
    ascii_only = pc.string_is_ascii(value)
    if kind == "email":
        lowered = pc.ascii_lower(value)
        return pc.and_(
            ascii_only, pc.match_substring_regex(lowered, EMAIL_PATTERN.pattern)
        ), lowered
    if kind in CODE_PATTERNS:
        upper = pc.ascii_upper(value)
        return pc.and_(ascii_only, pc.match_substring_regex(upper, CODE_PATTERNS[kind])), upper
    if kind == "enum":
        lowered = pc.ascii_lower(value)
        choices = pa.array(column.choices, pa.string())
        return pc.and_(ascii_only, pc.is_in(lowered, value_set=choices)), lowered
    raise ValueError(f"no screen for column kind {kind!r}")


@dataclass
class Rejection:
    line: int
    column_name: str | None
    rule: str
    reason: str
    raw_record: str  # JSON


@dataclass
class CheckedBatch:
    valid: pa.Table  # normalised strings (null for empty) and _source_line, ready for COPY
    rejected: list[Rejection]


def check_batch(raw_table: RawTable, batch: pa.Table, load_date: date) -> CheckedBatch:
    """Every value rule for one block: the screen, then the reference checks on the rest."""
    normalised, proven = screen_batch(raw_table, batch, load_date)
    names = raw_table.column_names
    screened = pa.table({**normalised, "_source_line": batch.column("_source_line")})
    if pc.all(proven).as_py():
        return CheckedBatch(valid=screened, rejected=[])
    doubtful = batch.filter(pc.invert(proven)).to_pandas()
    checked = validate_chunk(raw_table, doubtful, load_date)
    rescued = pa.table(
        {
            **{
                c: pa.array(
                    [v if isinstance(v, str) and v else None for v in checked.valid[c]],
                    pa.string(),
                )
                for c in names
            },
            "_source_line": pa.array(checked.valid["_source_line"].to_numpy(), pa.int64()),
        }
    )
    rejected = [
        Rejection(int(line), column, rule, reason, record)
        for line, column, rule, reason, record in checked.rejected[
            ["_source_line", "column_name", "rule", "reason", "raw_record"]
        ].itertuples(index=False)
    ]
    return CheckedBatch(
        valid=pa.concat_tables([screened.filter(proven), rescued]), rejected=rejected
    )


# --------------------------------------------------------------------------- database


def _payload(table: pa.Table) -> pa.Buffer:
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


def _record_sql(raw_table: RawTable, alias: str) -> sql.Composable:
    return sql.SQL("jsonb_build_object({})::text").format(
        sql.SQL(", ").join(
            sql.SQL("{}, {}.{}::text").format(
                sql.Literal(c), sql.Identifier(alias), sql.Identifier(c)
            )
            for c in raw_table.column_names
        )
    )


def _staging_ddl(raw_table: RawTable) -> sql.Composed:
    columns = [
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type))
        for c in raw_table.columns
    ]
    columns.append(sql.SQL("_source_line integer not null"))
    return sql.SQL("create temporary table incoming ({}) on commit drop").format(
        sql.SQL(", ").join(columns)
    )


def _key(raw_table: RawTable, valid: pa.Table) -> pa.Array:
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


def _later_duplicates(raw_table: RawTable, blocks: list[pa.Table]) -> dict[int, tuple[str, int]]:
    """line -> (key, first line) for every row whose key a valid earlier row already has.

    `blocks` hold the key columns and `_source_line` of every row that passed the checks.
    """
    keys = [_key(raw_table, block) for block in blocks]
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


def _duplicates_in(
    cur: psycopg.Cursor, raw_table: RawTable, target: sql.Composable, more: list[pa.Table]
) -> dict[int, tuple[str, int]]:
    """`_later_duplicates` over the rows COPYed into `target` (this file's only) and `more`."""
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
    return _later_duplicates(raw_table, blocks) if blocks else {}


class _Run:
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


def _unknown_mask(values: pa.Array, known: pa.Array) -> pa.Array:
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


def _unknown_references(
    raw_table: RawTable, valid: pa.Table, known: dict[str, pa.Array]
) -> tuple[pa.Table, list[Rejection], pa.Table]:
    """(rows whose references are all known, their rejections, the others' keys and lines)
    for a bulk load; a row with several unknown references is rejected for the first."""
    rejected: list[Rejection] = []
    dangling_keys: list[pa.Table] = []
    for name, keys in known.items():  # in the contract's column order
        unknown = _unknown_mask(valid.column(name).combine_chunks(), keys)
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
                    json.dumps(row),
                )
            )
        valid = valid.filter(pc.invert(unknown))
    keys = pa.concat_tables(dangling_keys) if dangling_keys else None
    return valid, rejected, keys


class _BulkTarget:
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


def _delete_lines(
    cur: psycopg.Cursor, raw_table: RawTable, target: sql.Composable, lines: list[int]
) -> dict[int, str]:
    """Delete this file's rows at `lines` from `target`; line -> the row as JSON."""
    rows = cur.execute(
        sql.SQL(
            "delete from {} as t where _source_line = any(%s) returning _source_line, {}"
        ).format(target, _record_sql(raw_table, "t")),
        (lines,),
    ).fetchall()
    return dict(rows)


def _quarantine_dangling_references(cur: psycopg.Cursor, raw_table: RawTable) -> list[Rejection]:
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
                record=_record_sql(raw_table, "i"),
            )
        ).fetchall()
        rejected += [
            Rejection(
                line,
                column.name,
                f"unknown_{entity}",
                f"{column.name}: unknown {entity} {value}",
                record,
            )
            for line, value, record in rows
        ]
    return rejected


def _upsert(cur: psycopg.Cursor, raw_table: RawTable, load_date: date, source: str) -> int:
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


def _is_referenced(raw_table: RawTable) -> bool:
    return any(
        c.references and c.references[0] == raw_table.name for t in TABLES for c in t.columns
    )


def _load_file(
    conn: psycopg.Connection, raw_table: RawTable, path: Path, load_date: date, run: _Run
) -> FileReport:
    started = perf_counter()
    source = f"{load_date.isoformat()}/{path.name}"
    target = sql.Identifier(RAW_SCHEMA, raw_table.name)
    names = raw_table.column_names
    rejected: dict[int, Rejection] = {}
    dangling_keys: list[pa.Table] = []  # the keys of rows that lost their reference
    copied_keys: list[pa.Array] = []
    rows_read = rows_copied = 0
    with conn.cursor() as cur:
        empty = cur.execute(sql.SQL("select not exists (select from {})").format(target))
        bulk = None
        if empty.fetchone()[0]:
            try:
                with conn.transaction():
                    bulk = _BulkTarget(cur, raw_table, load_date, source)
            except (psycopg.errors.FeatureNotSupported, psycopg.errors.DependentObjectsStillExist):
                # Someone's foreign key forbids the truncate or needs the primary key: load
                # as into a table with data.
                bulk = None
        bulk_load = bulk is not None
        if bulk is not None:
            copy_target, options = target, sql.SQL("format csv, null '', freeze")
            # The referenced tables are complete now: check references while reading.
            known = {
                c.name: run.known_keys(cur, *c.references)
                for c in raw_table.columns
                if c.references
            }
        else:
            cur.execute(_staging_ddl(raw_table))
            copy_target, options = sql.Identifier("incoming"), sql.SQL("format csv, null ''")
            known = {}  # checked in SQL against the indexed tables, after the COPY
        statement = sql.SQL("copy {} ({}) from stdin with ({})").format(
            copy_target, sql.SQL(", ").join(map(sql.Identifier, [*names, "_source_line"])), options
        )
        # The queued writer sends one block while the next is being checked.
        with cur.copy(statement, writer=QueuedLibpqWriter(cur)) as copy:
            for batch in read_batches(path, names):
                rows_read += batch.num_rows
                checked = check_batch(raw_table, batch, load_date)
                rejected.update((r.line, r) for r in checked.rejected)
                valid, dangling, keys = _unknown_references(raw_table, checked.valid, known)
                rejected.update((r.line, r) for r in dangling)
                if keys is not None:
                    dangling_keys.append(keys)
                rows_copied += valid.num_rows
                if bulk_load and _is_referenced(raw_table):
                    copied_keys.append(_key(raw_table, valid))
                if valid.num_rows:
                    copy.write(_payload(valid))
        duplicates: dict[int, tuple[str, int]] = {}
        if bulk is not None and bulk.finds_duplicates and not dangling_keys:
            # The usual first load: let the primary key's rebuild look for duplicates, and
            # only when it finds one, name them all (a row that lost its reference may
            # still have been the first of its key, hence the condition).
            try:
                with conn.transaction():
                    bulk.finish()
                bulk = None
            except psycopg.errors.UniqueViolation:
                duplicates = _duplicates_in(cur, raw_table, copy_target, dangling_keys)
        else:
            duplicates = _duplicates_in(cur, raw_table, copy_target, dangling_keys)
        if duplicates:
            deleted = _delete_lines(cur, raw_table, copy_target, sorted(duplicates))
            rows_copied -= len(deleted)
            first_key = raw_table.primary_key[0]
            for line, (key, first_line) in duplicates.items():
                record = deleted[line] if line in deleted else rejected[line].raw_record
                rejected[line] = Rejection(
                    line,
                    first_key,
                    "duplicate_id",
                    f"{first_key}: duplicate id {key.replace(KEY_SEPARATOR, '/')} "
                    f"(first seen on line {first_line})",
                    record,
                )
        if bulk_load:
            if bulk is not None:
                bulk.finish()
            rows_loaded = rows_copied
            if copied_keys and not duplicates and len(raw_table.primary_key) == 1:
                run.complete_keys[raw_table.name] = pa.chunked_array(
                    copied_keys, pa.string()
                ).combine_chunks()
            else:
                run.complete_keys.pop(raw_table.name, None)
        else:
            rejected.update((r.line, r) for r in _quarantine_dangling_references(cur, raw_table))
            rows_loaded = _upsert(cur, raw_table, load_date, source)
            cur.execute("drop table incoming")
            run.complete_keys.pop(raw_table.name, None)
        if rejected:
            with cur.copy(
                "copy raw.quarantine (load_date, table_name, source_file, line_number,"
                " column_name, rule, reason, raw_record) from stdin"
            ) as copy:
                for r in sorted(rejected.values(), key=lambda r: r.line):
                    copy.write_row(
                        (
                            load_date,
                            raw_table.name,
                            source,
                            r.line,
                            r.column_name,
                            r.rule,
                            r.reason,
                            r.raw_record,
                        )
                    )
    rows_quarantined = len(rejected)
    reasons = Counter(r.rule for r in rejected.values())
    if rows_read != rows_loaded + rows_quarantined:
        raise AssertionError(
            f"{source}: counts do not reconcile: read {rows_read}, "
            f"loaded {rows_loaded}, quarantined {rows_quarantined}"
        )
    return FileReport(
        raw_table.name,
        source,
        rows_read,
        rows_loaded,
        rows_quarantined,
        dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0]))),
        seconds=perf_counter() - started,
    )


def load_day(conn: psycopg.Connection, landing_root: Path, load_date: date) -> LoadReport:
    """Load every file delivered for `load_date`; one transaction, idempotent."""
    folder = landing_folder(landing_root, load_date)
    files = discover_files(folder)
    by_name = {t.name: t for t in TABLES}
    for name, path in files.items():
        check_header(by_name[name], path)

    raw_schema.ensure_raw_schema(conn)
    # The planner's estimate (-1: never analysed), enough to decide on an analyze below.
    rows_before = dict(
        conn.execute(
            "select relname, reltuples from pg_class "
            "where relnamespace = %s::regnamespace and relname = any(%s)",
            (RAW_SCHEMA, list(files)),
        ).fetchall()
    )
    reports: list[FileReport] = []
    run = _Run()
    with conn.transaction():
        conn.execute(
            "delete from raw.quarantine where load_date = %s and table_name = any(%s)",
            (load_date, list(files)),
        )
        for raw_table in sorted(TABLES, key=lambda t: t.load_order):
            if raw_table.name not in files:
                continue
            report = _load_file(conn, raw_table, files[raw_table.name], load_date, run)
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
                    raw_table.name,
                    report.source_file,
                    report.rows_read,
                    report.rows_loaded,
                    report.rows_quarantined,
                ),
            )
            # Counts only: rows themselves may hold personal data and never reach the logs.
            log.info(
                "%s: read %d, loaded %d, quarantined %d %s",
                report.source_file,
                report.rows_read,
                report.rows_loaded,
                report.rows_quarantined,
                report.reasons or "",
            )
            reports.append(report)
            progress.file_loaded(len(reports), len(files), report)
    for report in reports:
        # As autovacuum would: statistics are refreshed once a tenth of the rows is new.
        if report.rows_loaded > 0.1 * rows_before.get(report.table, -1):
            conn.execute(sql.SQL("analyze {}").format(sql.Identifier(RAW_SCHEMA, report.table)))
    return LoadReport(load_date=load_date, files=reports)
