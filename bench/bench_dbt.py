"""Benchmark: the dbt project at 100k or 1M customers against one GROUP BY pass.

    .venv/bin/python bench/bench_dbt.py --size 100k      # quick, ~1M orders
    .venv/bin/python bench/bench_dbt.py --size 1m        # the issue's 1M customers / 10M orders

1. The simulator writes the shop (four years of history: ~10 orders per customer) into
   `.winback/bench/shop-<customers>/<day>/`, chunk by chunk, and a next day holding ~0.5%
   new orders by existing customers. Files are generated once and reused.
2. A fresh database `winback_bench_dbt` on the embedded cluster (or on the server
   WINBACK_DATABASE_URL names) is loaded with day 1 by the winback loader.
3. The yardstick: one `GROUP BY customer_id` pass over raw.orders (count, sum, min, max),
   best of three, timed in the same run.
4. A full `dbt build` (seeds, models, tests) for day 1; then day 2 is loaded and an
   incremental `dbt build` runs for it; the yardstick is timed again on day 2's orders.
5. Both ratios (goal: full <= 4x the pass, incremental <= 0.5x) and every node's time
   from dbt's run_results.json are printed; `--json` writes them for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

import psycopg

from winback import config
from winback.ingest import loader, manifest
from winback.local import dbt_runner, embedded_pg
from winback.simulation import simulator
from winback.warehouse import db

DAY = date(2026, 11, 20)
NEXT = DAY + timedelta(days=1)
SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}  # 10k: a smoke test
NEXT_DAY_ORDER_SHARE = 0.005
BENCH_DIR = config.STATE_DIR / "bench"
DATABASE = "winback_bench_dbt"

# One pass over every order, grouped by customer: the least any per-customer model does.
GROUP_BY_PASS = """
select count(*) from (
    select customer_id, count(*), sum(total), min(ordered_at), max(ordered_at)
    from raw.orders
    group by customer_id
) as per_customer
"""


def shop_config(customers: int) -> simulator.SimulationConfig:
    # Four years of history and a lower drop-out than the demo shop's give ~10 orders per
    # customer: the 1M customers / 10M orders.
    return simulator.SimulationConfig(
        customers=customers, seed=20261120, as_of=DAY, history_days=1460, dropout_b=35.0
    )


def ensure_shop(customers: int) -> Path:
    """The landing folder with day 1 (the whole history) and day 2 (~0.5% new orders)."""
    landing = BENCH_DIR / f"shop-{customers}"
    marker = landing / "generated.json"
    if marker.exists():
        for day in (DAY, NEXT):  # a shop generated before deliveries carried their manifest
            if not (landing / day.isoformat() / manifest.MANIFEST_NAME).exists():
                manifest.write_manifest(landing / day.isoformat(), day)
        return landing
    shutil.rmtree(landing, ignore_errors=True)
    settings = shop_config(customers)
    started = time.perf_counter()
    rows = simulator.write_shop(settings, landing / DAY.isoformat())
    next_day = simulator.simulate_next_day_orders(
        settings, NEXT, round(NEXT_DAY_ORDER_SHARE * rows["orders"])
    )
    simulator.write_landing_files(next_day, landing / NEXT.isoformat())
    seconds = time.perf_counter() - started
    marker.write_text(
        json.dumps(
            {
                "rows": rows,
                "next_day_orders": len(next_day["orders"]),
                "next_day_order_lines": len(next_day["order_lines"]),
                "seconds": round(seconds, 1),
            },
            indent=2,
        )
    )
    print(f"generated {sum(rows.values()):,} rows for {customers:,} customers in {seconds:.0f} s")
    return landing


def shop_rows(landing: Path) -> dict:
    return json.loads((landing / "generated.json").read_text())


def fresh_database(name: str, template: str | None = None) -> str:
    """Drop and create `name` on the warehouse server (a copy of `template` when given);
    returns its URL."""
    server = db.database_url()
    with psycopg.connect(db.with_database(server, "postgres"), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        if template:
            conn.execute(f'create database "{name}" template "{template}"')
        else:
            # The collation the embedded cluster gives its databases (embedded_pg.COLLATION).
            conn.execute(embedded_pg.create_database_statement(name))
    return db.with_database(server, name)


def database_exists(name: str) -> bool:
    server = db.database_url()
    with psycopg.connect(db.with_database(server, "postgres")) as conn:
        found = conn.execute("select 1 from pg_database where datname = %s", (name,))
        return found.fetchone() is not None


def day1_template_name(size: str, bulk_load: bool) -> str:
    """The database that keeps day 1's raw load for `--reuse-day1`, one per load method."""
    return f"{DATABASE}_day1_{size}" + ("_bulk" if bulk_load else "")


@contextmanager
def using_database(url: str) -> Iterator[str]:
    """Point winback, and the dbt processes it starts, at `url`."""
    saved = os.environ.get(config.DATABASE_URL_ENV)
    os.environ[config.DATABASE_URL_ENV] = url
    db.database_url.cache_clear()
    try:
        yield url
    finally:
        if saved is None:
            os.environ.pop(config.DATABASE_URL_ENV, None)
        else:
            os.environ[config.DATABASE_URL_ENV] = saved
        db.database_url.cache_clear()


def time_group_by_pass(repeats: int = 3) -> float:
    """Best of `repeats` runs of the yardstick (warm cache, as the dbt build sees it)."""
    best = float("inf")
    with db.connect() as conn:
        for _ in range(repeats):
            started = time.perf_counter()
            conn.execute(GROUP_BY_PASS).fetchone()
            best = min(best, time.perf_counter() - started)
    return best


def load_day(landing: Path, day: date) -> tuple[float, int]:
    """Load one day with the winback loader; returns (seconds, rows loaded)."""
    started = time.perf_counter()
    with db.connect() as conn:
        report = loader.load_day(conn, landing, day)
    return time.perf_counter() - started, report.rows_loaded


def bulk_load_day(landing: Path, day: date) -> tuple[float, int]:
    """COPY the day's files straight into raw.*, without the loader's per-value checks.

    The yardstick bench/bench_load.py measures the winback loader against (it used to
    stand in for the loader at 1M, when the loader was ten times slower): the simulator's
    files are valid by construction and a day never repeats an id (a duplicate fails the
    COPY). PostgreSQL
    parses the values into the raw tables' types; quoted empty values become null
    (FORCE_NULL); the bookkeeping columns take the day and file for the duration of the
    COPY; raw.load_batches gets reconciled counts as the loader writes them.
    """
    from psycopg import sql

    from winback.ingest.contract import RAW_SCHEMA, TABLES
    from winback.warehouse import raw_schema

    started = time.perf_counter()
    total = 0
    folder = landing / day.isoformat()
    with db.connect() as conn:
        raw_schema.ensure_raw_schema(conn)
        conn.commit()
        for raw_table in TABLES:
            path = folder / f"{raw_table.stem}.csv"
            if not path.exists():
                continue
            target = sql.Identifier(RAW_SCHEMA, raw_table.name)
            bookkeeping = {
                "_load_date": day.isoformat(),
                "_source_file": path.name,
                "_source_line": 0,
            }
            for column, value in bookkeeping.items():
                conn.execute(
                    sql.SQL("alter table {} alter column {} set default {}").format(
                        target, sql.Identifier(column), sql.Literal(value)
                    )
                )
            names = sql.SQL(", ").join(sql.Identifier(c) for c in raw_table.column_names)
            statement = sql.SQL(
                "copy {} ({}) from stdin with (format csv, header, force_null ({}))"
            ).format(target, names, names)
            with conn.cursor() as cur:
                with cur.copy(statement) as copy, open(path, "rb") as handle:
                    while block := handle.read(1 << 20):
                        copy.write(block)
                loaded = cur.rowcount
            for column in bookkeeping:
                conn.execute(
                    sql.SQL("alter table {} alter column {} drop default").format(
                        target, sql.Identifier(column)
                    )
                )
            conn.execute(
                "insert into raw.load_batches (load_date, table_name, source_file, rows_read,"
                " rows_loaded, rows_quarantined) values (%s, %s, %s, %s, %s, 0)",
                (day, raw_table.name, path.name, loaded, loaded),
            )
            conn.commit()
            conn.execute(sql.SQL("analyze {}").format(target))
            conn.commit()
            total += loaded
    return time.perf_counter() - started, total


@dataclass
class NodeTiming:
    name: str
    resource_type: str
    status: str
    seconds: float


@dataclass
class DbtRun:
    seconds: float
    nodes: list[NodeTiming] = field(default_factory=list)

    def seconds_by_type(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for node in self.nodes:
            totals[node.resource_type] = totals.get(node.resource_type, 0.0) + node.seconds
        return totals


def dbt(command: str, day: date, target_path: Path, *extra: str) -> DbtRun:
    """Run `dbt <command>` for `day`; fail loudly when dbt does. Times per node from
    run_results.json (threads overlap, so they can add up to more than the wall time)."""
    started = time.perf_counter()
    code = dbt_runner.run_dbt(
        [command, "--vars", f"{{as_of_date: {day}}}", "--target-path", str(target_path),
         "--quiet", *extra]
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"dbt {command} for {day} failed (exit {code})")
    results = json.loads((target_path / "run_results.json").read_text())
    nodes = [
        NodeTiming(
            name=result["unique_id"].split(".")[-1]
            if not result["unique_id"].startswith("test.")
            else result["unique_id"].split(".")[2],
            resource_type=result["unique_id"].split(".")[0],
            status=str(result["status"]),
            seconds=float(result["execution_time"]),
        )
        for result in results["results"]
    ]
    return DbtRun(seconds=seconds, nodes=nodes)


def server_settings() -> dict[str, str]:
    names = (
        "shared_buffers", "work_mem", "maintenance_work_mem", "effective_cache_size",
        "max_parallel_workers_per_gather", "max_parallel_workers", "synchronous_commit",
        "wal_level", "max_wal_size", "jit", "random_page_cost", "server_version",
    )  # fmt: skip
    with db.connect() as conn:
        rows = conn.execute(
            "select name, current_setting(name) from pg_settings where name = any(%s)",
            (list(names),),
        ).fetchall()
    return dict(rows)


def run(size: str, bulk_load: bool = False, reuse_day1: bool = False) -> dict:
    customers = SIZES[size]
    load = bulk_load_day if bulk_load else load_day
    landing = ensure_shop(customers)
    generated = shop_rows(landing)
    target = BENCH_DIR / f"dbt-target-{customers}"
    template = day1_template_name(size, bulk_load)
    if reuse_day1 and database_exists(template):
        # Day 1's raw tables as a previous run loaded them: the dbt figures do not depend
        # on the load, and at 1M it takes longer than the builds.
        url = fresh_database(DATABASE, template=template)
        load_seconds, loaded = 0.0, 0
        print(f"day 1: raw tables copied from {template}")
    else:
        url = fresh_database(DATABASE)
        with using_database(url):
            load_seconds, loaded = load(landing, DAY)
        print(f"day 1 loaded: {loaded:,} rows in {load_seconds:.1f} s")
        if reuse_day1:
            fresh_database(template, template=DATABASE)
    with using_database(url):
        pass_day1 = time_group_by_pass()
        full = dbt("build", DAY, target)
        print(f"full build {full.seconds:.1f} s = {full.seconds / pass_day1:.2f}x the pass")
        next_load_seconds, next_loaded = load(landing, NEXT)
        pass_day2 = time_group_by_pass()
        incremental = dbt("build", NEXT, target)
        print(
            f"incremental build {incremental.seconds:.1f} s = "
            f"{incremental.seconds / pass_day2:.2f}x the pass"
        )
        settings = server_settings()
    return {
        "size": size,
        "customers": customers,
        "generated": generated,
        "load_method": "bulk COPY" if bulk_load else "winback loader",
        "day1": {
            "load_seconds": load_seconds,
            "rows_loaded": loaded,
            "group_by_seconds": pass_day1,
            "dbt": asdict(full),
            "ratio": full.seconds / pass_day1,
        },
        "day2": {
            "load_seconds": next_load_seconds,
            "rows_loaded": next_loaded,
            "group_by_seconds": pass_day2,
            "dbt": asdict(incremental),
            "ratio": incremental.seconds / pass_day2,
        },
        "settings": settings,
    }


def print_report(result: dict) -> None:
    day1, day2 = result["day1"], result["day2"]
    print()
    orders = result["generated"]["rows"]["orders"]
    print(f"dbt build, {result['customers']:,} customers, {orders:,} orders")
    print(f"{'':32} {'day 1 (full)':>14} {'day 2 (incr.)':>14}")
    yardsticks = f"{day1['group_by_seconds']:>13.2f}s {day2['group_by_seconds']:>13.2f}s"
    print(f"{'GROUP BY customer_id pass':32} {yardsticks}")
    print(
        f"{'dbt build (wall)':32} {day1['dbt']['seconds']:>13.1f}s {day2['dbt']['seconds']:>13.1f}s"
    )
    print(f"{'ratio (goal 4x / 0.5x)':32} {day1['ratio']:>13.2f}x {day2['ratio']:>13.2f}x")
    print()
    print(f"{'node':44} {'type':6} {'day 1 s':>9} {'day 2 s':>9}")
    second = {(n["resource_type"], n["name"]): n["seconds"] for n in day2["dbt"]["nodes"]}
    models = [n for n in day1["dbt"]["nodes"] if n["resource_type"] != "test"]
    for node in sorted(models, key=lambda n: -n["seconds"]):
        later = second.get((node["resource_type"], node["name"]), 0.0)
        print(f"{node['name']:44} {node['resource_type']:6} {node['seconds']:>9.2f} {later:>9.2f}")
    tests1 = sum(n["seconds"] for n in day1["dbt"]["nodes"] if n["resource_type"] == "test")
    tests2 = sum(n["seconds"] for n in day2["dbt"]["nodes"] if n["resource_type"] == "test")
    count = sum(1 for n in day1["dbt"]["nodes"] if n["resource_type"] == "test")
    print(f"{f'{count} data and unit tests (sum)':44} {'test':6} {tests1:>9.2f} {tests2:>9.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="100k")
    parser.add_argument(
        "--generate-only", action="store_true", help="write the shop files and stop"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--bulk-load",
        action="store_true",
        help="COPY the files into raw.* without the loader's checks",
    )
    parser.add_argument(
        "--reuse-day1",
        action="store_true",
        help="keep day 1's raw load in a template database and copy it on the next run",
    )
    args = parser.parse_args(argv)
    if args.generate_only:
        ensure_shop(SIZES[args.size])
        return 0
    result = run(args.size, bulk_load=args.bulk_load, reuse_day1=args.reuse_day1)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
