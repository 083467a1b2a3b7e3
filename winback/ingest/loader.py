"""Load a logical date's landing files into the `raw` schema, enforcing the input contract.

For every file of the day (`<landing>/<YYYY-MM-DD>/<table>.csv` or `.parquet`):

1. `read`: the header must name exactly the contract's columns, or the whole day is
   refused before anything is written, with a message that lists the expected columns.
2. `read`, `validate`: the file is read in blocks of string columns with pyarrow. A
   vectorised screen proves most rows valid (strict ISO timestamps, plain decimals,
   ASCII emails and codes ...) and normalises them (trimmed, emails lower-cased, phones
   to E.164, each distinct number and country parsed once; in free text, each run of
   control and line-break characters becomes one space, the value as written kept in
   `raw.normalised_values`). Every row it cannot prove
   valid goes through the reference checks (`validate_chunk`, plain pandas), which
   decide and word the reason, so a verdict never depends on which path a row took.
3. `references`: within the file, a later duplicate of a primary key is quarantined (the
   first valid row wins), and so is a row that references an unknown customer/order/product.
4. `write`: valid rows are streamed with COPY. Into an empty table (a first load) they go straight
   in, with its indexes dropped and rebuilt after, in the transaction that truncated it
   (wal_level minimal then skips the WAL). Into a table with data they go through a
   temporary table and an upsert that only replaces a row loaded for the same or an
   earlier date, so re-loading an old day (a backfill) never overwrites newer data.
5. `quarantine`: broken rows go to `raw.quarantine` with file, line, column, rule, reason
   and the raw record; `raw.load_batches` records rows read, loaded and quarantined, which
   reconcile.

Everything for one day happens in one transaction, and the day's previous quarantine rows
are replaced, so loading the same day twice changes nothing. docs/loading.md has figures.
This module keeps `load_day`, which runs the steps; the others live beside it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from time import perf_counter

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from winback.ingest import manifest, quarantine
from winback.ingest.contract import RAW_SCHEMA, TABLES, RawTable
from winback.ingest.quarantine import Normalisation, Rejection, raw_record
from winback.ingest.read import (  # noqa: F401 (the loader's public names)
    ContractError,
    MalformedLine,
    check_header,
    csv_rows_at,
    discover_files,
    landing_folder,
    read_batches,
)
from winback.ingest.references import (
    KEY_SEPARATOR,
    KnownKeys,
    delete_lines,
    duplicates_in,
    primary_key_strings,
    quarantine_dangling_references,
    unknown_references,
)
from winback.ingest.validate import check_batch, screen_batch, validate_chunk  # noqa: F401
from winback.ingest.write import BulkTarget, is_referenced, payload, staging_ddl, upsert
from winback.orchestration import progress
from winback.warehouse import raw_schema

log = logging.getLogger(__name__)


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


def _malformed_line(line: MalformedLine) -> Rejection:
    if not line.text.strip():
        what = "only spaces"
    else:
        what = f"{line.fields} field(s) where the header has {line.expected}"
        if line.text.count('"') % 2:
            what += ", and a quote that never closes"
    return Rejection(
        line.line,
        None,
        "malformed_line",
        f"malformed line: {what}",
        raw_record({"_line": line.text}),
    )


def _add_raw_records(rejections: list[Rejection], batch: pa.Table) -> None:
    """Give each rejection its row as written, from the block it was read in."""
    if not rejections:
        return
    lines = pa.array([r.line for r in rejections], pa.int64())
    rows = batch.filter(pc.is_in(batch.column("_source_line"), value_set=lines)).to_pylist()
    by_line = {row.pop("_source_line"): row for row in rows}
    for rejection in rejections:
        rejection.raw_record = raw_record(by_line[rejection.line])


def raw_records(path: Path, columns: list[str], lines: list[int]) -> dict[int, str]:
    """line -> the row as written (`raw_record`), read back from the file."""
    if path.suffix == ".csv":
        return {line: raw_record(row) for line, row in csv_rows_at(path, columns, lines).items()}
    wanted = pa.array(lines, pa.int64())
    records: dict[int, str] = {}
    for block in read_batches(path, columns):
        rows = block.rows
        found = rows.filter(pc.is_in(rows.column("_source_line"), value_set=wanted))
        for row in found.to_pylist():
            line = row.pop("_source_line")
            records[line] = raw_record(row)
        if len(records) == len(lines):
            break
    return records


def _load_file(
    conn: psycopg.Connection, raw_table: RawTable, path: Path, load_date: date, run: KnownKeys
) -> FileReport:
    started = perf_counter()
    source = f"{load_date.isoformat()}/{path.name}"
    target = sql.Identifier(RAW_SCHEMA, raw_table.name)
    names = raw_table.column_names
    rejected: dict[int, Rejection] = {}
    changed: list[Normalisation] = []
    dangling_keys: list[pa.Table] = []  # the keys of rows that lost their reference
    copied_keys: list[pa.Array] = []
    rows_read = rows_copied = 0
    with conn.cursor() as cur:
        empty = cur.execute(sql.SQL("select not exists (select from {})").format(target))
        bulk = None
        if empty.fetchone()[0]:
            try:
                with conn.transaction():
                    bulk = BulkTarget(cur, raw_table, load_date, source)
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
            cur.execute(staging_ddl(raw_table))
            copy_target, options = sql.Identifier("incoming"), sql.SQL("format csv, null ''")
            known = {}  # checked in SQL against the indexed tables, after the COPY
        statement = sql.SQL("copy {} ({}) from stdin with ({})").format(
            copy_target, sql.SQL(", ").join(map(sql.Identifier, [*names, "_source_line"])), options
        )
        # The queued writer sends one block while the next is being checked.
        with cur.copy(statement, writer=QueuedLibpqWriter(cur)) as copy:
            for block in read_batches(path, names):
                batch = block.rows
                rows_read += batch.num_rows + len(block.malformed)
                rejected.update((m.line, _malformed_line(m)) for m in block.malformed)
                if not batch.num_rows:
                    continue
                checked = check_batch(raw_table, batch, load_date)
                rejected.update((r.line, r) for r in checked.rejected)
                changed.extend(checked.changed)
                valid, dangling, keys = unknown_references(raw_table, checked.valid, known)
                _add_raw_records(dangling, batch)
                rejected.update((r.line, r) for r in dangling)
                if keys is not None:
                    dangling_keys.append(keys)
                rows_copied += valid.num_rows
                if bulk_load and is_referenced(raw_table):
                    copied_keys.append(primary_key_strings(raw_table, valid))
                if valid.num_rows:
                    copy.write(payload(valid))
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
                duplicates = duplicates_in(cur, raw_table, copy_target, dangling_keys)
        else:
            duplicates = duplicates_in(cur, raw_table, copy_target, dangling_keys)
        if duplicates:
            deleted = delete_lines(cur, raw_table, copy_target, sorted(duplicates))
            rows_copied -= len(deleted)
            first_key = raw_table.primary_key[0]
            for line, (key, first_line) in duplicates.items():
                record = rejected[line].raw_record if line in rejected else None
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
            rejected.update((r.line, r) for r in quarantine_dangling_references(cur, raw_table))
            rows_loaded = upsert(cur, raw_table, load_date, source)
            cur.execute("drop table incoming")
            run.complete_keys.pop(raw_table.name, None)
        unread = sorted(line for line, r in rejected.items() if r.raw_record is None)
        if unread:
            # Rows rejected after their COPY (duplicates; unknown references when loading
            # into data): their text as written is read back from the file.
            records = raw_records(path, names, unread)
            for line in unread:
                rejected[line].raw_record = records[line]
        quarantine.write_rejections(cur, load_date, raw_table.name, source, rejected)
        # Only rows loaded: one quarantined later (a duplicate, a lost reference) is kept
        # whole, as written, in the quarantine.
        loaded_changes = [n for n in changed if n.line not in rejected]
        quarantine.write_normalisations(cur, load_date, raw_table.name, source, loaded_changes)
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


def load_day(
    conn: psycopg.Connection, landing_root: Path, load_date: date, *, require_manifest: bool = False
) -> LoadReport:
    """Load every file delivered for `load_date`; one transaction, idempotent.

    `landing_root` is a folder or an object-store location (`winback.ingest.landing`). A
    delivery with a `_manifest.json` is loaded only when its files match it
    (`manifest.DeliveryRefused` otherwise, before anything is read into the warehouse);
    `require_manifest` refuses a folder without one (the daily DAG's load does).
    The day is committed here unless the caller holds a transaction open, which then
    stays the caller's to commit.
    """
    owns_transaction = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    folder = manifest.check_delivery(landing_root, load_date, require_manifest)
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
    run = KnownKeys()
    with conn.transaction():
        for kept in ("raw.quarantine", "raw.normalised_values"):
            conn.execute(
                sql.SQL("delete from {} where load_date = %s and table_name = any(%s)").format(
                    sql.SQL(kept)
                ),
                (load_date, list(files)),
            )
        for raw_table in sorted(TABLES, key=lambda t: t.load_order):
            if raw_table.name not in files:
                continue
            report = _load_file(conn, raw_table, files[raw_table.name], load_date, run)
            quarantine.record_load_batch(conn, load_date, report)
            reports.append(report)
    if owns_transaction and not conn.autocommit:
        conn.commit()
    for index, report in enumerate(reports, 1):
        # After the commit, so a line never reports a load that was rolled back. Counts
        # and rule names only: rows may hold personal data and never reach the logs.
        progress.file_loaded(index, len(reports), report)
        log.info(
            "%s: read %d, loaded %d, quarantined %d %s",
            report.source_file,
            report.rows_read,
            report.rows_loaded,
            report.rows_quarantined,
            report.reasons or "",
        )
    for report in reports:
        # As autovacuum would: statistics are refreshed once a tenth of the rows is new.
        if report.rows_loaded > 0.1 * rows_before.get(report.table, -1):
            conn.execute(sql.SQL("analyze {}").format(sql.Identifier(RAW_SCHEMA, report.table)))
    return LoadReport(load_date=load_date, files=reports)
