"""Benchmark: the loader's quarantine path against its load path.

    .venv/bin/python bench/bench_quarantine.py --lines 2000000           # the real figures
    .venv/bin/python bench/bench_quarantine.py --lines 20000 --shares 0 0.5   # a smoke run

For each quarantined share (default 0, 0.01, 0.5, 0.996) one day's order lines are
written, `--lines` of them, with that share made unreadable (a non-numeric unit price,
the commonest defect of a broken export), plus the products and orders they reference;
`winback.ingest.loader.load_day` loads the day into a fresh database. Printed per share:
seconds and rows per second for the order-lines file (read, loaded, quarantined). Issue
25's goal: the quarantine path as fast as the load path, >= 200,000 rows/s with half the
rows quarantined (a real shop's broken day once loaded at about 10,000 rows/s). Run on a
quiet machine for real figures: 2 shared cores move them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_dbt  # noqa: E402  (fresh databases, the database switch)

from winback.ingest import contract, loader  # noqa: E402
from winback.simulation import simulator  # noqa: E402
from winback.warehouse import db  # noqa: E402

DAY = date(2026, 11, 20)
DATABASE = "winback_bench_quarantine"


def day_frames(lines: int, share: float, seed: int = 25) -> dict[str, pd.DataFrame]:
    """One day's files: 4 lines per order, 200 products, a customer per 3 orders."""
    rng = np.random.default_rng(seed)
    orders = max(1, lines // 4)
    customers = max(1, orders // 3)
    customer_ids = pd.Series([f"C{i:08d}" for i in range(customers)])
    frames = {
        "products": pd.DataFrame(
            {
                "product_id": [f"P{i:04d}" for i in range(200)],
                "product_name": [f"Product {i}" for i in range(200)],
                "category": "",
                "list_price": "9.99",
                "product_type": "",
            }
        ),
        "customers": pd.DataFrame(
            {
                "customer_id": customer_ids,
                "email": "",
                "phone": "",
                "first_name": "",
                "country": "GB",
                "created_at": "2026-01-01T00:00:00Z",
            }
        ),
        "orders": pd.DataFrame(
            {
                "order_id": [f"O{i:09d}" for i in range(orders)],
                "customer_id": customer_ids.to_numpy()[rng.integers(0, customers, orders)],
                "ordered_at": "2026-11-20T10:00:00Z",
                "status": "completed",
                "total": "39.96",
                "currency": "GBP",
                "coupon_code": "",
                "discount_total": "",
            }
        ),
    }
    order_index = np.arange(lines) // 4
    broken = rng.random(lines) < share
    frames["order_lines"] = pd.DataFrame(
        {
            "order_id": frames["orders"]["order_id"].to_numpy()[
                np.minimum(order_index, orders - 1)
            ],
            "line_number": (np.arange(lines) % 4 + 1 + 4 * (order_index >= orders)).astype(str),
            "product_id": [f"P{i:04d}" for i in rng.integers(0, 200, lines)],
            "category": "",
            "quantity": "1",
            "unit_price": np.where(broken, "9,99 GBP", "9.99"),
        }
    )
    for raw_table in contract.TABLES:
        frames.setdefault(raw_table.name, pd.DataFrame(columns=raw_table.column_names))
    return frames


def run_share(lines: int, share: float, workdir: Path) -> dict:
    landing = workdir / f"share_{share}"
    simulator.write_landing_files(day_frames(lines, share), landing / DAY.isoformat())
    with bench_dbt.using_database(bench_dbt.fresh_database(DATABASE)):
        with db.connect() as conn:
            started = time.perf_counter()
            report = loader.load_day(conn, landing, DAY)
            seconds = time.perf_counter() - started
            per_file = conn.execute(
                "select rows_read, rows_loaded, rows_quarantined from raw.load_batches"
                " where table_name = 'order_lines'"
            ).fetchone()
    read, loaded, quarantined = per_file
    return {
        "share": share,
        "lines": lines,
        "day_seconds": round(seconds, 2),
        "day_rows": report.rows_read,
        "day_rows_per_second": round(report.rows_read / seconds),
        "order_lines": {"read": read, "loaded": loaded, "quarantined": quarantined},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.01, 0.5, 0.996])
    parser.add_argument("--workdir", type=Path, default=Path(".winback/bench_quarantine"))
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    results = []
    for share in args.shares:
        result = run_share(args.lines, share, args.workdir)
        results.append(result)
        print(
            f"quarantined share {share:>6.1%}: {result['day_rows']:,} rows in"
            f" {result['day_seconds']:.1f} s = {result['day_rows_per_second']:,} rows/s"
            f" (order lines {result['order_lines']})",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
