"""Benchmark: the lifecycle history's rows and bytes after N simulated days, as validity
ranges (today's design) against one row per customer per day (the design before).

    .venv/bin/python bench/bench_lifecycle_history.py --customers 100000 --days 30
    .venv/bin/python bench/bench_lifecycle_history.py --customers 2000 --days 3   # smoke

The shop is bench_dbt.py's (four years of history, ~10 orders per customer), generated
into .winback/bench/history-<customers>/; each later day brings ~0.5% new orders
(`simulator.simulate_next_day_orders`), as bench_daily's day 2 does. On a fresh database
`winback_bench_history_<customers>`, each day is loaded with the winback loader and
`dbt run --select +customer_lifecycle_history` builds the lifecycle and the history for
it. Beside it, the old design is kept as it was built: the day's customer_lifecycle
joined to customer_rfm appended to `bench.customer_lifecycle_history_daily`, with its
unique index on (as_of_date, customer_id). Both answer "stage on day D" the same way
(tests/test_lifecycle_history.py proves it); this compares what they store: rows, and
bytes with indexes (`pg_total_relation_size`). The history model's own seconds per day
come from dbt's run_results.json, the old append's from the clock.

Results go to .winback/bench/lifecycle-history-<customers>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_dbt  # noqa: E402  (the shop, the database and the dbt runner are shared)

from winback.simulation import simulator  # noqa: E402
from winback.warehouse import db  # noqa: E402

DATABASE = "winback_bench_history"
DAILY_TABLE = "bench.customer_lifecycle_history_daily"
# What the history model stored per run date before validity ranges.
OLD_DESIGN_APPEND = f"""
insert into {DAILY_TABLE}
select lifecycle.customer_id, lifecycle.as_of_date, lifecycle.lifecycle_stage,
       rfm.rfm_segment, lifecycle.days_since_last_order
from marts.customer_lifecycle as lifecycle
left join marts.customer_rfm as rfm on lifecycle.customer_id = rfm.customer_id
"""
RELATIONS = {
    "ranges": ["marts.customer_lifecycle_history", "marts.customer_lifecycle_recorded_days"],
    "daily": [DAILY_TABLE],
}


def ensure_days(customers: int, days: int) -> Path:
    """The landing folder: the shop's history on day 1, then `days - 1` days of new orders."""
    settings = bench_dbt.shop_config(customers)
    landing = bench_dbt.BENCH_DIR / f"history-{customers}"
    first = landing / bench_dbt.DAY.isoformat()
    if not (first / "_manifest.json").exists():
        started = time.perf_counter()
        rows = simulator.write_shop(settings, first)
        from winback.ingest import manifest

        manifest.write_manifest(first, bench_dbt.DAY)
        seconds = time.perf_counter() - started
        print(f"generated the shop ({sum(rows.values()):,} rows) in {seconds:.0f} s")
        (landing / "orders_on_day1.json").write_text(json.dumps(rows))
    orders = json.loads((landing / "orders_on_day1.json").read_text())["orders"]
    for offset in range(1, days):
        day = bench_dbt.DAY + timedelta(days=offset)
        folder = landing / day.isoformat()
        if not (folder / "_manifest.json").exists():
            frames = simulator.simulate_next_day_orders(
                settings, day, round(bench_dbt.NEXT_DAY_ORDER_SHARE * orders)
            )
            simulator.write_landing_files(frames, folder)
    return landing


def sizes(conn) -> dict[str, dict[str, int]]:
    result = {}
    for design, relations in RELATIONS.items():
        rows = bytes_ = 0
        for relation in relations:
            rows += conn.execute(f"select count(*) from {relation}").fetchone()[0]
            bytes_ += conn.execute(
                "select pg_total_relation_size(%s::regclass)", (relation,)
            ).fetchone()[0]
        result[design] = {"rows": rows, "bytes": bytes_}
    return result


def run(customers: int, days: int) -> dict:
    landing = ensure_days(customers, days)
    target = bench_dbt.BENCH_DIR / f"history-target-{customers}"
    per_day = []
    with bench_dbt.using_database(bench_dbt.fresh_database(f"{DATABASE}_{customers}")):
        with db.connect() as conn:
            conn.execute(
                f"create schema bench; create table {DAILY_TABLE} (customer_id text,"
                " as_of_date date, lifecycle_stage text, rfm_segment text,"
                " days_since_last_order integer);"
                f" create unique index customer_lifecycle_history_daily_pk"
                f" on {DAILY_TABLE} (as_of_date, customer_id)"
            )
            conn.commit()
        for offset in range(days):
            day = bench_dbt.DAY + timedelta(days=offset)
            load_seconds, loaded = bench_dbt.load_day(landing, day)
            if offset == 0:
                bench_dbt.dbt("seed", day, target)
            build = bench_dbt.dbt("run", day, target, "--select", "+customer_lifecycle_history")
            history_seconds = sum(
                n.seconds
                for n in build.nodes
                if n.name in ("customer_lifecycle_history", "customer_lifecycle_recorded_days")
            )
            with db.connect() as conn:
                started = time.perf_counter()
                conn.execute(OLD_DESIGN_APPEND)
                conn.commit()
                daily_seconds = time.perf_counter() - started
                figures = sizes(conn)
            per_day.append(
                {
                    "day": day.isoformat(),
                    "rows_loaded": loaded,
                    "dbt_seconds": round(build.seconds, 1),
                    "ranges_model_seconds": round(history_seconds, 2),
                    "daily_append_seconds": round(daily_seconds, 2),
                    **{f"{d}_{k}": v for d, f in figures.items() for k, v in f.items()},
                }
            )
            row, mb = per_day[-1], 2**20
            print(
                f"{day}  ranges {row['ranges_rows']:>11,} rows {row['ranges_bytes'] / mb:8.1f} MB"
                f" ({row['ranges_model_seconds']:.1f} s)   daily {row['daily_rows']:>11,} rows"
                f" {row['daily_bytes'] / mb:8.1f} MB ({row['daily_append_seconds']:.1f} s)",
                flush=True,
            )
    result = {
        "customers": customers,
        "days": days,
        "per_day": per_day,
        "final": per_day[-1],
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = bench_dbt.BENCH_DIR / f"lifecycle-history-{customers}.json"
    out.write_text(json.dumps(result, indent=2))
    final, mb = per_day[-1], 2**20
    print(
        f"\nafter {days} days at {customers:,} customers:\n"
        f"  validity ranges: {final['ranges_rows']:,} rows, {final['ranges_bytes'] / mb:.1f} MB\n"
        f"  daily snapshot:  {final['daily_rows']:,} rows, {final['daily_bytes'] / mb:.1f} MB\n"
        f"  written to {out}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args(argv)
    if args.days < 1 or args.customers < 1:
        parser.error("--customers and --days must be at least 1")
    run(args.customers, args.days)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
