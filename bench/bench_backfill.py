"""Benchmark: a backfill of winback_daily over the demo shop, through the real scheduler.

    make demo                                                   # the demo shop, once
    .venv/bin/python bench/bench_backfill.py --days 30          # the figure for BENCHMARKS.md
    .venv/bin/python bench/bench_backfill.py --days 2           # a smoke run

What it measures is what a data engineer waits for: the wall-clock from `airflow backfill
create` (the README's command: one day at a time, reprocessing days that ran, dry run)
to the end of the last day, for the `--days` days ending on `--end` (default the demo's
closing day, 2026-11-20, so the demo's campaign window is measured inside it).

It never touches the demo's own state: the demo warehouse is copied to a database of its
own (`winback_bench_backfill`, recreated each time) and Airflow runs on a fresh metadata
database (`winback_bench_backfill_airflow`) and home under `.winback/bench/`, with the
LocalExecutor, the api-server and the dag-processor (`start_local_airflow`), and no
scheduled runs (`backfill.LOCAL_BACKFILL_SETTINGS`). The landing folder is the demo's:
its two delivered days were loaded already, every other day has no files, so each day
is rebuilt from the warehouse, the normal case for a backfill.

Checked before any figure is written: every day succeeded in date order, one at a time,
nothing was sent live. Each day's wall-clock is split by its task instances
(`winback.local.backfill.day_timings`): time some task ran, time the run was open with no
task running (the scheduler deciding, a task's process starting), the slowest tasks; the
load average at the start and the end says how quiet the machine was. Results go to
`.winback/bench/backfill-<days>d.json` and are printed as a Markdown table for
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psutil
import psycopg

from winback import config
from winback.local import airflow_ui, backfill
from winback.warehouse import db

WAREHOUSE = "winback_bench_backfill"
METADATA = "winback_bench_backfill_airflow"
DEMO_END = date(2026, 11, 20)
BENCH_DIR = config.STATE_DIR / "bench"


def recreate_database(name: str, template: str | None = None) -> str:
    admin = db.with_database(db.database_url(), "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        if template:
            # A template must have no other sessions: end the demo's idle ones.
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s",
                (template,),
            )
            conn.execute(f'create database "{name}" template "{template}"')
        else:
            conn.execute(f'create database "{name}"')
    return db.with_database(db.database_url(), name)


def demo_database() -> str:
    """The demo warehouse's name, after checking `make demo` ran."""
    url = db.database_url()
    with psycopg.connect(url) as conn:
        loaded = conn.execute("select to_regclass('raw.load_batches') is not null").fetchone()[0]
    if not loaded:
        raise SystemExit(f"no demo shop in {db.redacted(url)}: run `make demo` first")
    return db.database_name(url)


def live_sends(url: str) -> int:
    with psycopg.connect(url) as conn:
        exists = conn.execute("select to_regclass('winback.send_ledger') is not null").fetchone()
        if not exists[0]:
            return 0
        return conn.execute(
            "select count(*) from winback.send_ledger where mode = 'live'"
        ).fetchone()[0]


def windows_measured_since(url: str, since) -> list[str]:
    """The campaign windows whose results were (re)computed after `since`."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select distinct campaign_id, window_start, window_end from winback.campaign_results"
            " where computed_at >= %s order by 1, 2",
            (since,),
        ).fetchall()
    return [f"{campaign} {first}..{last}" for campaign, first, last in rows]


def run(days: int, end: date, timeout: float) -> dict:
    start = end - timedelta(days=days - 1)
    source = demo_database()
    warehouse = recreate_database(WAREHOUSE, template=source)
    metadata = recreate_database(METADATA)
    home = BENCH_DIR / "backfill-airflow"
    home.mkdir(parents=True, exist_ok=True)
    (home / "airflow.cfg").unlink(missing_ok=True)  # a fresh home: migrated below
    os.environ.update(
        {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata.replace(
                "postgresql://", "postgresql+psycopg2://", 1
            ),
            "AIRFLOW_HOME": str(home),
            config.DATABASE_URL_ENV: warehouse,
        }
    )
    os.environ.pop("WINBACK_SEND_MODE", None)
    db.database_url.cache_clear()
    live_before = live_sends(warehouse)
    print(f"warehouse: a copy of {source} ({WAREHOUSE}); Airflow metadata: {METADATA}")
    started = time.monotonic()
    airflow = airflow_ui.start_local_airflow(
        0,
        log_dir=home / "logs" / "local",
        triggerer=False,
        extra_env=backfill.LOCAL_BACKFILL_SETTINGS,
    )
    with airflow:
        print(f"Airflow ready after {time.monotonic() - started:.0f}s at {airflow.url}")
        airflow.unpause()
        command = " ".join(backfill.backfill_command(start, end))
        print(f"backfill {start}..{end} ({days} days): airflow {command}")
        created = time.monotonic()
        created_at = datetime.now(UTC)
        load_before = os.getloadavg()
        backfill.create_backfill(start, end)
        runs = backfill.wait_for_backfill(airflow, start, end, timeout, poll=5)
        wall = time.monotonic() - created
        load_after = os.getloadavg()
        # Where each day's time went: tasks running, or the run open with no task running.
        timings = {r.logical_date.isoformat(): backfill.day_timings(airflow, r) for r in runs}
    bad = [r for r in runs if (r.state, r.run_type) != ("success", "backfill")]
    if bad:
        raise SystemExit(f"not every day succeeded: {bad}\nlogs: {airflow.log_dir}")
    for before, after in zip(runs, runs[1:], strict=False):
        if after.start_date < before.end_date:
            raise SystemExit(f"{after.logical_date} started before {before.logical_date} ended")
    if live_sends(warehouse) != live_before:
        raise SystemExit("the backfill sent live")
    per_day = [r.seconds for r in runs]
    with psycopg.connect(warehouse) as conn:
        customers = conn.execute("select count(*) from raw.customers").fetchone()[0]
    measured = windows_measured_since(warehouse, created_at)
    print(f"windows measured inside the backfill: {measured or 'none'}")
    return {
        "customers": customers,
        "windows_measured": measured,
        "days": days,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "wall_clock_seconds": round(wall, 1),
        "per_day_seconds": {r.logical_date.isoformat(): round(r.seconds, 1) for r in runs},
        "mean_day_seconds": round(sum(per_day) / len(per_day), 1),
        "slowest_day_seconds": round(max(per_day), 1),
        "between_days_seconds": round(wall - sum(per_day), 1),
        "per_day": {
            day: {
                "wall": t.wall_seconds,
                "busy": t.busy_seconds,
                "idle": t.idle_seconds,
                "queued": t.queued_seconds,
                "task_sum": t.task_seconds,
                "tasks": t.tasks,
                "slowest": dict(t.slowest),
            }
            for day, t in timings.items()
        },
        "mean_idle_seconds": round(sum(t.idle_seconds for t in timings.values()) / len(timings), 1),
        # 1-minute load average when the backfill was created and when it ended: the
        # figures mean little on a machine other work keeps busy.
        "load_average": {"start": round(load_before[0], 2), "end": round(load_after[0], 2)},
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
        },
    }


def markdown(result: dict) -> str:
    load = result.get("load_average", {})
    return "\n".join(
        [
            "| backfill of the demo shop | wall-clock | mean day | slowest day "
            "| scheduler time between days | mean time no task ran, per day | load average |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {result['days']} days, {result['from']}..{result['to']}, "
            f"{result.get('customers', 0):,} customers "
            f"| {result['wall_clock_seconds'] / 60:.1f} min | {result['mean_day_seconds']:.0f} s "
            f"| {result['slowest_day_seconds']:.0f} s | {result['between_days_seconds']:.0f} s "
            f"| {result.get('mean_idle_seconds', 0):.0f} s "
            f"| {load.get('start', '?')} to {load.get('end', '?')} |",
        ]
    )


FULL_RUN_COMMAND = "make demo && .venv/bin/python bench/bench_backfill.py --days 30"


def markdown_section(bench_dir: Path = BENCH_DIR) -> list[str]:
    """BENCHMARKS.md's backfill section (bench_daily.py writes the file), from the results here.

    A run of fewer than 30 days is a smoke run: shown, and said to be one.
    """
    results = sorted(
        (json.loads(path.read_text()) for path in bench_dir.glob("backfill-*d.json")),
        key=lambda result: result["days"],
    )
    out = [
        "## A 30-day backfill through the scheduler (`bench/bench_backfill.py`)",
        "",
        "The README's backfill command over the demo shop (`make demo`, 20k customers), run by",
        "a local Airflow: scheduler with the LocalExecutor, api-server, dag-processor (no",
        "triggerer, DAG files re-parsed every 10 min: `LOCAL_BACKFILL_SETTINGS`). Days go",
        "one at a time in date order; each is rebuilt from the warehouse (no new files), dry",
        "run. Wall-clock from `airflow backfill create` to the end of the last day; time no",
        "task ran is the run open while the scheduler decided or a task's process started.",
        "",
    ]
    full = [r for r in results if r["days"] >= 30]
    if not full:
        out += [f"Not measured on a quiet machine yet: `{FULL_RUN_COMMAND}`.", ""]
    for result in results:
        kind = "" if result["days"] >= 30 else " (smoke run, machine shared)"
        out += [f"Measured{kind}: `{result['from']}`..`{result['to']}`.", "", markdown(result), ""]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30, help="days in the backfill (default 30)")
    parser.add_argument("--end", type=date.fromisoformat, default=DEMO_END, help="its last day")
    parser.add_argument(
        "--timeout-minutes", type=float, default=None, help="default: 15 per day, at least 30"
    )
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be at least 1")
    timeout = 60 * (args.timeout_minutes or max(30, 15 * args.days))
    result = run(args.days, args.end, timeout)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    out = BENCH_DIR / f"backfill-{args.days}d.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"\n{markdown(result)}\n\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
