"""Where a run's day comes from: its landing files, or the warehouse as it already is.

A backfill exists to rebuild state and re-measure from what is already in the warehouse:
the landing files of past days are often archived, and a day on which the shop delivered
nothing is no error then. So the load step of a run decides first:

| run | landing folder | already in `raw.load_batches` | the day is |
| --- | --- | --- | --- |
| any | present, with a file not loaded yet | - | loaded from its files |
| backfill | present, every file loaded before | yes | rebuilt from the warehouse |
| scheduled, manual | present | either | loaded again (idempotent; picks up a corrected file) |
| any | gone | yes | rebuilt from the warehouse (a rerun of a loaded day) |
| backfill | gone | no | rebuilt from the warehouse (nothing was delivered that day) |
| scheduled, manual | gone | no | failed: `ContractError`, nothing was delivered |

Each decision is logged with its reason and returned with the load report, so the
task's XCom and log say whether a day was loaded or rebuilt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import psycopg

from winback.ingest import loader

log = logging.getLogger(__name__)

LOADED = "landing files"
REBUILT = "warehouse"


@dataclass(frozen=True)
class LoadedBatch:
    table: str
    source_file: str
    rows_loaded: int
    loaded_at: datetime


def loaded_batches(conn: psycopg.Connection, load_date: date) -> list[LoadedBatch]:
    """What `raw.load_batches` says was loaded for the day (nothing before the first load)."""
    exists = conn.execute("select to_regclass('raw.load_batches') is not null").fetchone()[0]
    if not exists:
        return []
    rows = conn.execute(
        "select table_name, source_file, rows_loaded, loaded_at from raw.load_batches"
        " where load_date = %s order by table_name",
        (load_date,),
    ).fetchall()
    return [LoadedBatch(*row) for row in rows]


def _all_files_loaded(folder: Path, load_date: date, batches: list[LoadedBatch]) -> bool:
    files = loader.discover_files(folder)
    recorded = {b.table: b.source_file for b in batches}
    return bool(files) and all(
        recorded.get(table) == f"{load_date.isoformat()}/{path.name}"
        for table, path in files.items()
    )


def _rebuilt(load_date: date, reason: str, batches: list[LoadedBatch]) -> dict:
    log.info("%s: not loaded, rebuilt from the warehouse: %s", load_date, reason)
    return {
        "load_date": load_date.isoformat(),
        "source": REBUILT,
        "reason": reason,
        "rows_read": 0,
        "rows_loaded": 0,
        "rows_quarantined": 0,
        "files": [],
        "loaded_before": {b.table: b.rows_loaded for b in batches},
    }


def load_or_rebuild(
    conn: psycopg.Connection,
    landing_root: Path,
    load_date: date,
    run_type: str | None,
    *,
    require_manifest: bool = False,
) -> dict:
    """Load the day's landing files, or say why the day is rebuilt from the warehouse.

    `run_type` is the Airflow run's type (`backfill`, `scheduled`, `manual`, ...); only a
    backfill, or a rerun of a day already loaded, may go on without files. A scheduled
    or manual run of a day never loaded, without a landing folder, fails as before.
    Files that are loaded must match their delivery's manifest (`require_manifest`: even
    when there is none).
    """
    folder = loader.landing_folder(landing_root, load_date)
    batches = loaded_batches(conn, load_date)
    is_backfill = run_type == "backfill"
    last_load = max((b.loaded_at for b in batches), default=None)
    if folder.is_dir():
        if is_backfill and batches and _all_files_loaded(folder, load_date, batches):
            return _rebuilt(
                load_date,
                f"a backfill run, and every file in {folder} was already loaded "
                f"({len(batches)} files, last at {last_load:%Y-%m-%d %H:%M:%S %Z})",
                batches,
            )
    elif batches:
        return _rebuilt(
            load_date,
            f"the landing folder {folder} no longer exists; its {len(batches)} files were "
            f"loaded at {last_load:%Y-%m-%d %H:%M:%S %Z}",
            batches,
        )
    elif is_backfill:
        return _rebuilt(
            load_date,
            f"a backfill run, and nothing was delivered for that date (no landing folder "
            f"{folder}, nothing in raw.load_batches)",
            batches,
        )
    # A scheduled or manual run without its delivery fails here, loudly (ContractError).
    report = loader.load_day(conn, landing_root, load_date, require_manifest=require_manifest)
    return {**report.as_dict(), "source": LOADED, "reason": f"loaded from {folder}"}
