"""Benchmark: the checking loader against an unchecked bulk COPY, on the 100k shop.

    .venv/bin/python bench/bench_load.py                      # the shop bench_dbt generates
    .venv/bin/python bench/bench_load.py --landing DIR        # any landing folder with both days

Day 1 (the whole history, ~6.2M rows) and day 2 (~0.5% new orders and their lines) are
loaded by `winback.ingest.loader.load_day` into a fresh database, then by
`bench_dbt.bulk_load_day` (COPY straight into the raw tables, no checks, no quarantine)
into another fresh database: the yardstick, measured in the same run. Rows per second
per table and in total are printed side by side, with the machine's load average before
and after (2 shared cores: figures move with it). `--repeat N` alternates the two N
times and reports each one's fastest day 1 (and every attempt). `--json` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_dbt  # noqa: E402  (the shop, the databases and the yardstick are shared)

from winback.ingest import loader  # noqa: E402
from winback.warehouse import db  # noqa: E402

DATABASE = "winback_bench_load"
DAYS = (("day1", bench_dbt.DAY), ("day2", bench_dbt.NEXT))


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def run_loader(landing: Path) -> dict:
    days = {}
    with bench_dbt.using_database(bench_dbt.fresh_database(DATABASE)):
        for label, day in DAYS:
            started = time.perf_counter()
            with db.connect() as conn:
                report = loader.load_day(conn, landing, day)
            seconds = time.perf_counter() - started
            days[label] = {"seconds": seconds, "report": report.as_dict()}
            print(f"loader   {label}: {report.rows_read:,} rows in {seconds:.1f} s", flush=True)
    return days


def run_bulk_copy(landing: Path) -> dict:
    days = {}
    with bench_dbt.using_database(bench_dbt.fresh_database(f"{DATABASE}_copy")):
        for label, day in DAYS:
            seconds, rows = bench_dbt.bulk_load_day(landing, day)
            days[label] = {"seconds": seconds, "rows": rows}
            print(f"bulk COPY {label}: {rows:,} rows in {seconds:.1f} s", flush=True)
    return days


def table(result: dict) -> list[str]:
    out = []
    for label, _ in DAYS:
        checked, copied = result["loader"][label], result["bulk_copy"][label]
        out += [
            f"{label}: table           rows read   loaded  quarantined  seconds    rows/s",
        ]
        for f in checked["report"]["files"]:
            rate = f["rows_read"] / f["seconds"] if f["seconds"] else 0.0
            out.append(
                f"  {f['table']:18} {f['rows_read']:>10,} {f['rows_loaded']:>10,} "
                f"{f['rows_quarantined']:>8,} {f['seconds']:>9.2f} {rate:>9,.0f}"
            )
        rows = checked["report"]["rows_read"]
        out.append(
            f"  {'loader, total':18} {rows:>10,} {checked['report']['rows_loaded']:>10,} "
            f"{checked['report']['rows_quarantined']:>8,} {checked['seconds']:>9.2f} "
            f"{rows / checked['seconds']:>9,.0f}"
        )
        out.append(
            f"  {'bulk COPY, total':18} {copied['rows']:>10,} {copied['rows']:>10,} "
            f"{0:>8,} {copied['seconds']:>9.2f} {copied['rows'] / copied['seconds']:>9,.0f}"
        )
    out.append(
        f"day 1 seconds, every attempt: loader {result['loader_day1_seconds']}, "
        f"bulk COPY {result['bulk_copy_day1_seconds']}"
    )
    out.append(f"load average before: {result['load_before']}; after: {result['load_after']}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landing", type=Path, help="landing folder holding both days")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--repeat", type=int, default=1, help="attempts of each, alternated")
    args = parser.parse_args(argv)
    landing = args.landing or bench_dbt.ensure_shop(bench_dbt.SIZES["100k"])
    result = {"landing": str(landing), "load_before": load_average()}
    attempts: dict[str, list[dict]] = {"loader": [], "bulk_copy": []}
    for _ in range(args.repeat):
        attempts["loader"].append(run_loader(landing))
        attempts["bulk_copy"].append(run_bulk_copy(landing))
    for method, runs in attempts.items():
        result[method] = min(runs, key=lambda days: days["day1"]["seconds"])
        result[f"{method}_day1_seconds"] = [round(days["day1"]["seconds"], 1) for days in runs]
    result["load_after"] = load_average()
    result["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print("\n".join(table(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
