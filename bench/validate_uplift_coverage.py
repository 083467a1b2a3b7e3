"""Validation: does the measured 95% interval cover the simulator's true uplift?

    .venv/bin/python bench/validate_uplift_coverage.py --seeds 100

Runs `winback.simulation.measurement_validation` over the seeds twice: with a true uplift (coverage
should be about 95%, the goal is at least 90 of 100) and with none (the interval should
exclude zero about 5% of the time). Uses its own database on the warehouse server.
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
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--uplift", type=float, default=0.03)
    args = parser.parse_args()
    admin = db.with_database(db.database_url(), "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"drop database if exists {DATABASE} with (force)")
        conn.execute(f"create database {DATABASE}")
    started = time.perf_counter()
    with psycopg.connect(db.with_database(db.database_url(), DATABASE)) as conn:
        with_effect = measurement_validation.coverage(
            conn, range(args.seeds), customers=args.customers, uplift=args.uplift
        )
        without = measurement_validation.coverage(
            conn, range(1000, 1000 + args.seeds), customers=args.customers, uplift=0.0
        )
    covered = sum(r.covers_truth for r in with_effect)
    false_positives = sum(r.excludes_zero for r in without)
    mean_measured = sum(r.measured_uplift for r in with_effect) / len(with_effect)
    print(f"{args.seeds} seeds x {args.customers:,} inactive customers (20% holdout), "
          f"{time.perf_counter() - started:.0f}s")  # fmt: skip
    print(f"true uplift {args.uplift:.3f}: mean measured {mean_measured:.4f}; "
          f"95% interval covered the truth in {covered} of {args.seeds}")  # fmt: skip
    print(f"no true effect: the interval excluded zero in {false_positives} of {args.seeds} "
          f"(nominal 5%)")  # fmt: skip
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"drop database if exists {DATABASE} with (force)")


if __name__ == "__main__":
    main()
