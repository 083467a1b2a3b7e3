"""Benchmark: the audience stage alone (enrolment and journeys of the six example
campaigns, `winback.campaigns.audiences.build_audiences`), day after day, at any size.

    .venv/bin/python bench/bench_audiences.py --customers 2000 --days 3       # smoke, seconds
    .venv/bin/python bench/bench_audiences.py --customers 100000 --days 8
    .venv/bin/python bench/bench_audiences.py --customers 1000000 --days 8    # issue 19's goal
    .venv/bin/python bench/bench_audiences.py --customers 20000 --engine reference

The shop is `winback.simulation.campaign_world` (the marts the campaigns read as tables,
its days lived in SQL), on a fresh database `winback_bench_audiences`, so the figure is the
stage's own: no dbt, no scoring. Day 0 enrols everyone the campaigns want at once (the
program's first day); the later days are the daily cost (issue 19's goal: a later day at
1M customers in 15 s or less). `--engine reference` runs the per-customer engine the
set-based one replaced (tests/journey_reference.py), for comparison at small sizes.
Results go to .winback/bench/audiences-<customers>[-reference].json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_dbt  # noqa: E402  (the bench database helpers)

from winback import config  # noqa: E402
from winback.campaigns import audiences, campaign_files, journeys  # noqa: E402
from winback.simulation import campaign_world  # noqa: E402

DATABASE = "winback_bench_audiences"
OUT_DIR = config.PROJECT_ROOT / ".winback" / "bench"


def run(customers: int, days: int, engine: str) -> dict:
    if engine == "reference":
        sys.path.insert(0, str(config.PROJECT_ROOT / "tests"))
        import journey_reference

        journeys.advance = journey_reference.advance
    url = bench_dbt.fresh_database(DATABASE)
    campaigns = campaign_files.load_campaigns(config.CAMPAIGNS_DIR)
    result = {"customers": customers, "engine": engine, "days": []}
    with bench_dbt.using_database(url), psycopg.connect(url) as conn:
        started = time.perf_counter()
        campaign_world.create_marts(conn)
        campaign_world.populate(conn, customers)
        result["populate_seconds"] = round(time.perf_counter() - started, 2)
        for n in range(days):
            started = time.perf_counter()
            if n:
                campaign_world.live_a_day(conn, n)
            lived = time.perf_counter()
            run_date = campaign_world.DAY0 + timedelta(days=n)
            built = audiences.build_audiences(conn, campaigns, run_date)
            conn.commit()
            done = time.perf_counter()
            day = {
                "day": n,
                "world_seconds": round(lived - started, 2),
                "audiences_seconds": round(done - lived, 2),
                "entered": sum(r.entered for r in built),
                "outbox_added": sum(r.outbox_added for r in built),
                "in_journey": conn.execute(
                    "select count(*) from winback.journey_state where status = 'active'"
                ).fetchone()[0],
            }
            result["days"].append(day)
            print(
                f"day {n:2d}: audiences {day['audiences_seconds']:7.2f} s  "
                f"(entered {day['entered']:7d}, messages {day['outbox_added']:7d}, "
                f"active journeys {day['in_journey']:7d}); world {day['world_seconds']:.2f} s",
                flush=True,
            )
    later = [d["audiences_seconds"] for d in result["days"][1:]]
    if later:
        result["later_day_median_seconds"] = sorted(later)[len(later) // 2]
        print(f"a later day, median: {result['later_day_median_seconds']:.2f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--engine", choices=["set", "reference"], default="set")
    args = parser.parse_args(argv)
    result = run(args.customers, args.days, args.engine)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.engine == "set" else f"-{args.engine}"
    out = OUT_DIR / f"audiences-{args.customers}{suffix}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
