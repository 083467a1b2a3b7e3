"""Validation: do the measured 95% intervals cover the simulator's true uplift?

    .venv/bin/python bench/validate_uplift_coverage.py --seeds 100

Runs `winback.simulation.measurement_validation` over the seeds twice: with each example
campaign's true uplift (each rate and revenue interval, per campaign and for the program
against the global control, should cover the truth in at least 90 of 100 seeds) and with
none (each should exclude zero in at most 8 of 100). Uses its own database on the
warehouse server. Smoke run: --seeds 3 --customers 1000.
"""

from __future__ import annotations

import argparse
import time

import psycopg

from winback.simulation import measurement_validation
from winback.warehouse import db

DATABASE = "winback_uplift_validation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--customers", type=int, default=3000, help="per campaign")
    parser.add_argument("--global-control-share", type=float, default=0.05)
    args = parser.parse_args()
    admin = db.with_database(db.database_url(), "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"drop database if exists {DATABASE} with (force)")
        conn.execute(f"create database {DATABASE}")
    started = time.perf_counter()
    options = {"customers": args.customers, "control_share": args.global_control_share}
    try:
        with psycopg.connect(db.with_database(db.database_url(), DATABASE)) as conn:
            with_effect = measurement_validation.coverage(conn, range(args.seeds), **options)
            without = measurement_validation.coverage(
                conn, range(1000, 1000 + args.seeds), uplifts={}, **options
            )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"drop database if exists {DATABASE} with (force)")
    effect = measurement_validation.tally(with_effect)
    null = measurement_validation.tally(without)
    print(f"{args.seeds} seeds x {args.customers:,} customers per campaign"
          f" ({args.global_control_share:.0%} global control), "
          f"{time.perf_counter() - started:.0f}s")  # fmt: skip
    print(f"{'measurement':<24}{'metric':<9}{'true (mean)':>12}{'measured':>10}"
          f"{'covered':>9}{'null: excl. 0':>15}")  # fmt: skip
    failures = []
    for (name, metric), row in sorted(effect.items()):
        excluded = null[(name, metric)]["excluded_zero"]
        covered = f"{row['covered']:.0f}/{row['seeds']:.0f}"
        print(f"{name:<24}{metric:<9}{row['truth']:>12.4f}{row['measured']:>10.4f}"
              f"{covered:>9}{excluded:>11.0f}/{args.seeds}")  # fmt: skip
        if row["covered"] < 0.9 * row["seeds"] or excluded > 0.08 * args.seeds:
            failures.append(f"{name} {metric}")
    print("goal (>= 90% covered, <= 8% excluding zero without an effect): "
          + ("met" if not failures else "missed for " + ", ".join(failures)))  # fmt: skip


if __name__ == "__main__":
    main()
