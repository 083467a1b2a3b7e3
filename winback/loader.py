"""Load a logical date's landing files into the `raw` schema, enforcing the input contract.

For every file of the day (`<landing>/<YYYY-MM-DD>/<table>.csv` or `.parquet`):

1. The header must name exactly the contract's columns, or the whole day is refused
   before anything is written, with a message that lists the expected columns.
2. Each value is checked in Python, vectorised per chunk (dates, amounts, emails, phones,
   enums ...). Phones are normalised to E.164 with the customer's country, emails lower-cased.
3. Valid rows are streamed with COPY into a temporary table; broken rows into a temporary
   quarantine table with file, line, column and reason.
4. In SQL: later duplicates of a primary key within the file and rows that reference an
   unknown customer/order/product are moved to quarantine; the rest are upserted into
   the raw table. An upsert only replaces a row loaded for the same or an earlier date, so
   re-loading an old day (a backfill) never overwrites newer data.
5. `raw.load_batches` records rows read, loaded and quarantined; they must reconcile.

Everything for one day happens in one transaction, and the day's previous quarantine rows
are replaced, so loading the same day twice changes nothing.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import phonenumbers
import psycopg
from psycopg import sql

from winback import raw_schema
from winback.contract import RAW_SCHEMA, TABLES, Column, RawTable

log = logging.getLogger(__name__)

CHUNK_ROWS = 500_000
SUPPORTED_SUFFIXES = (".csv", ".parquet")
# RFC 5322 allows far more, but a winback email must be deliverable by an ordinary ESP:
# one @, no spaces, a dotted domain with an alphabetic top-level label.
_DOMAIN_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
EMAIL_PATTERN = re.compile(
    rf"^[a-z0-9.!#$%&'*+/=?^_`{{|}}~-]+@{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*\.[a-z]{{2,}}$"
)
MAX_AMOUNT = 10**12  # numeric(14, 2)


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


def read_chunks(path: Path, columns: list[str]) -> Iterator[pd.DataFrame]:
    """Yield the file as string columns, in chunks, with a 1-based `_source_line`.

    Optional columns the file leaves out come back empty.
    """
    present = [c for c in columns if c in read_header(path)]
    for frame in _read_present_columns(path, present):
        for column in columns:
            if column not in frame:
                frame[column] = ""
        yield frame[[*columns, "_source_line"]]


def _read_present_columns(path: Path, columns: list[str]) -> Iterator[pd.DataFrame]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        offset = 0
        for batch in parquet.iter_batches(batch_size=CHUNK_ROWS, columns=columns):
            frame = batch.to_pandas().astype("string").fillna("")
            frame = frame.astype(object)
            frame["_source_line"] = np.arange(offset + 1, offset + 1 + len(frame))
            offset += len(frame)
            yield frame
        return
    offset = 0
    reader = pd.read_csv(
        path,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        chunksize=CHUNK_ROWS,
        encoding="utf-8-sig",
        skipinitialspace=False,
    )
    for frame in reader:
        frame.columns = [c.strip() for c in frame.columns]
        # Line 1 is the header, so record n is on line n + 1.
        frame["_source_line"] = np.arange(offset + 2, offset + 2 + len(frame))
        offset += len(frame)
        yield frame[[*columns, "_source_line"]]


# --------------------------------------------------------------------------- validation


@dataclass
class ValidatedChunk:
    valid: pd.DataFrame  # normalised values, ready for COPY
    rejected: pd.DataFrame  # _source_line, column_name, reason, raw_record


def _normalise_phone(value: str, country: str) -> str | None:
    try:
        number = phonenumbers.parse(value, country or None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


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
    elif kind == "email":
        lowered = stripped.str.lower()
        bad = ~empty & ~lowered.str.match(EMAIL_PATTERN)
        flag(bad, "malformed email", "malformed_email")
        normalised = lowered.astype(object)
    elif kind == "phone":
        countries = frame["country"].str.strip().str.upper() if "country" in frame else ""
        phones = pd.Series("", index=values.index, dtype=object)
        for idx in stripped.index[~empty]:
            e164 = _normalise_phone(stripped[idx], countries[idx] if len(countries) else "")
            if e164 is None:
                reason[idx] = "invalid phone number for the customer's country"
                rule[idx] = "invalid_phone"
            else:
                phones[idx] = e164
        normalised = phones
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


# --------------------------------------------------------------------------- database


def _copy_frame(cur: psycopg.Cursor, target: sql.Composable, frame: pd.DataFrame) -> None:
    if frame.empty:
        return
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in frame.columns)
    statement = sql.SQL("copy {} ({}) from stdin with (format csv, null '')").format(
        target, columns
    )
    payload = frame.to_csv(index=False, header=False)
    with cur.copy(statement) as copy:
        copy.write(payload)


def _staging_ddl(raw_table: RawTable) -> sql.Composed:
    columns = [
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type))
        for c in raw_table.columns
    ]
    columns.append(sql.SQL("_source_line integer not null"))
    return sql.SQL("create temporary table incoming ({}) on commit drop").format(
        sql.SQL(", ").join(columns)
    )


REJECTED_DDL = """
create temporary table rejected (
    _source_line integer not null,
    column_name text,
    rule text not null,
    reason text not null,
    raw_record jsonb not null
) on commit drop
"""


def _quarantine_in_sql(cur: psycopg.Cursor, raw_table: RawTable) -> None:
    """Move in-file duplicates and dangling references from `incoming` to `rejected`."""
    pk = sql.SQL(", ").join(sql.Identifier(k) for k in raw_table.primary_key)
    record = sql.SQL("jsonb_build_object({})").format(
        sql.SQL(", ").join(
            sql.SQL("{}, {}::text").format(sql.Literal(c), sql.Identifier(c))
            for c in raw_table.column_names
        )
    )
    pk_text = sql.SQL(" || '/' || ").join(
        sql.SQL("{}::text").format(sql.Identifier(k)) for k in raw_table.primary_key
    )
    cur.execute(
        sql.SQL(
            """
            with ranked as (
                select _source_line,
                       {pk_text} as key_text,
                       min(_source_line) over (partition by {pk}) as first_line,
                       {record} as raw_record
                from incoming
            ), moved as (
                delete from incoming i
                using ranked r
                where i._source_line = r._source_line and r._source_line <> r.first_line
                returning r._source_line, r.key_text, r.first_line, r.raw_record
            )
            insert into rejected (_source_line, column_name, rule, reason, raw_record)
            select _source_line, {first_key}, 'duplicate_id',
                   {first_key} || ': duplicate id ' || key_text
                   || ' (first seen on line ' || first_line || ')',
                   raw_record
            from moved
            """
        ).format(
            pk=pk,
            pk_text=pk_text,
            record=record,
            first_key=sql.Literal(raw_table.primary_key[0]),
        )
    )
    for column in raw_table.columns:
        if column.references is None:
            continue
        ref_table, ref_column = column.references
        entity = ref_table.rstrip("s")
        cur.execute(
            sql.SQL(
                """
                with moved as (
                    delete from incoming i
                    where i.{col} is not null
                      and not exists (select 1 from {schema}.{ref} r where r.{ref_col} = i.{col})
                    returning i.*
                )
                insert into rejected (_source_line, column_name, rule, reason, raw_record)
                select _source_line, {col_name}, 'unknown_' || {entity},
                       {col_name} || ': unknown ' || {entity} || ' ' || {col}::text, {record}
                from moved
                """
            ).format(
                col=sql.Identifier(column.name),
                schema=sql.Identifier(RAW_SCHEMA),
                ref=sql.Identifier(ref_table),
                ref_col=sql.Identifier(ref_column),
                col_name=sql.Literal(column.name),
                entity=sql.Literal(entity),
                record=record,
            )
        )


def _upsert(cur: psycopg.Cursor, raw_table: RawTable, load_date: date, source: str) -> int:
    columns = raw_table.column_names
    non_key = [c for c in columns if c not in raw_table.primary_key]
    target = sql.SQL("{}.{}").format(sql.Identifier(RAW_SCHEMA), sql.Identifier(raw_table.name))
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
    count = cur.execute("select count(*) from incoming").fetchone()[0]
    return int(count)


def _load_file(
    conn: psycopg.Connection, raw_table: RawTable, path: Path, load_date: date
) -> FileReport:
    source = f"{load_date.isoformat()}/{path.name}"
    rows_read = 0
    with conn.cursor() as cur:
        cur.execute(_staging_ddl(raw_table))
        cur.execute(REJECTED_DDL)
        for chunk in read_chunks(path, raw_table.column_names):
            rows_read += len(chunk)
            checked = validate_chunk(raw_table, chunk, load_date)
            _copy_frame(cur, sql.Identifier("incoming"), checked.valid)
            _copy_frame(cur, sql.Identifier("rejected"), checked.rejected)
        cur.execute("analyze incoming")
        _quarantine_in_sql(cur, raw_table)
        rows_loaded = _upsert(cur, raw_table, load_date, source)
        cur.execute(
            """
            insert into raw.quarantine
                (load_date, table_name, source_file, line_number, column_name, rule, reason,
                 raw_record)
            select %s, %s, %s, _source_line, column_name, rule, reason, raw_record from rejected
            """,
            (load_date, raw_table.name, source),
        )
        reasons = dict(
            cur.execute(
                """
                select rule, count(*) from rejected group by rule order by 2 desc, 1
                """
            ).fetchall()
        )
        rows_quarantined = cur.execute("select count(*) from rejected").fetchone()[0]
        cur.execute("drop table incoming")
        cur.execute("drop table rejected")
    if rows_read != rows_loaded + rows_quarantined:
        raise AssertionError(
            f"{source}: counts do not reconcile: read {rows_read}, "
            f"loaded {rows_loaded}, quarantined {rows_quarantined}"
        )
    return FileReport(raw_table.name, source, rows_read, rows_loaded, rows_quarantined, reasons)


def load_day(conn: psycopg.Connection, landing_root: Path, load_date: date) -> LoadReport:
    """Load every file delivered for `load_date`; one transaction, idempotent."""
    folder = landing_folder(landing_root, load_date)
    files = discover_files(folder)
    by_name = {t.name: t for t in TABLES}
    for name, path in files.items():
        check_header(by_name[name], path)

    raw_schema.ensure_raw_schema(conn)
    reports: list[FileReport] = []
    with conn.transaction():
        conn.execute(
            "delete from raw.quarantine where load_date = %s and table_name = any(%s)",
            (load_date, list(files)),
        )
        for raw_table in sorted(TABLES, key=lambda t: t.load_order):
            if raw_table.name not in files:
                continue
            report = _load_file(conn, raw_table, files[raw_table.name], load_date)
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
    for table_name in files:
        conn.execute(
            sql.SQL("analyze {}.{}").format(sql.Identifier(RAW_SCHEMA), sql.Identifier(table_name))
        )
    return LoadReport(load_date=load_date, files=reports)
