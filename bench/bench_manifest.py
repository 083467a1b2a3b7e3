"""Benchmark: what checking a delivery against its manifest costs before the load.

    .venv/bin/python bench/bench_manifest.py --size 100k     # the shop bench_dbt generates
    .venv/bin/python bench/bench_manifest.py --landing DIR --date 2026-11-20

`winback.ingest.manifest.check_delivery` reads every file of the day once (SHA-256 and the
CSV record count in one pass) before the loader reads it again. This times that pass on
day 1 of the bench shop (the whole history), per file and in total, in MB/s and rows/s,
with the machine's load average before and after (2 shared cores: figures move with it).
`--repeat N` keeps the fastest of N passes (the first also warms the page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_dbt  # noqa: E402

from winback.ingest import landing, manifest  # noqa: E402


def measure(folder: Path) -> dict:
    files = {}
    started = time.perf_counter()
    for path in landing.list_files(folder) or []:
        if path.name == manifest.MANIFEST_NAME:
            continue
        began = time.perf_counter()
        described = manifest.describe_file(path)
        seconds = time.perf_counter() - began
        files[path.name] = {
            "rows": described.rows,
            "megabytes": round(described.bytes / 1e6, 1),
            "seconds": round(seconds, 2),
            "mb_per_second": round(described.bytes / 1e6 / max(seconds, 1e-9), 1),
        }
    seconds = time.perf_counter() - started
    megabytes = sum(f["megabytes"] for f in files.values())
    rows = sum(f["rows"] for f in files.values())
    return {
        "files": files,
        "seconds": round(seconds, 2),
        "megabytes": round(megabytes, 1),
        "mb_per_second": round(megabytes / max(seconds, 1e-9), 1),
        "rows_per_second": round(rows / max(seconds, 1e-9)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=sorted(bench_dbt.SIZES), default="100k")
    parser.add_argument("--landing", help="a landing folder instead of the bench shop")
    parser.add_argument("--date", type=date.fromisoformat, default=bench_dbt.DAY)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    root = Path(args.landing) if args.landing else bench_dbt.ensure_shop(bench_dbt.SIZES[args.size])
    folder = root / args.date.isoformat()
    load_before = os.getloadavg()[0]
    runs = [measure(folder) for _ in range(max(1, args.repeat))]
    best = min(runs, key=lambda r: r["seconds"])
    result = {
        **best,
        "attempts": [r["seconds"] for r in runs],
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "folder": str(folder),
    }
    for name, figures in best["files"].items():
        print(f"  {name:24} {figures['megabytes']:>8.1f} MB {figures['mb_per_second']:>7.1f} MB/s")
    print(
        f"manifest check of {folder}: {best['megabytes']:.1f} MB in {best['seconds']:.2f} s "
        f"({best['mb_per_second']:.0f} MB/s, {best['rows_per_second']:,} rows/s); "
        f"load average {load_before:.1f} -> {result['load_after']:.1f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
