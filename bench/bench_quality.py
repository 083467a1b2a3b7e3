"""Benchmark: the three great-expectations gates, in one process, on a built warehouse.

    .venv/bin/python bench/bench_daily.py --size 1m        # builds winback_bench_daily_1m
    .venv/bin/python bench/bench_quality.py --size 1m      # then: the gates on its day 2
    .venv/bin/python bench/bench_quality.py --size 10k     # smoke (after bench_daily --size 10k)

Prints the import of winback.quality with great-expectations (paid once by every process
that runs a gate: an Airflow task, bench_daily's stage), then each gate twice: the first
call builds the per-process GX objects (context, data source, batch definition), the
second is what a gate costs once they exist. Beside each, the gate's queries alone
(`quality._counts`): the rest is GX's validation of the gate's one row of counts. The
goal (issue 19): each gate under 2 s at 1M customers, imports aside.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_daily  # noqa: E402
import bench_dbt  # noqa: E402

from winback.warehouse import db  # noqa: E402


def gate_checks(gate: str, run_date: date) -> list:
    from winback import quality

    if gate == "raw_inputs":
        checks = quality.raw_input_checks(run_date)
        with db.connect() as conn:
            return checks + quality.quarantine_checks(conn, run_date)
    if gate == "scores":
        return quality.score_checks()
    with db.connect() as conn:
        return quality.audience_checks(conn, run_date, quality.DEFAULT_MAX_AUDIENCE_GROWTH)


def run(run_date: date) -> dict:
    started = time.perf_counter()
    import great_expectations  # noqa: F401  (what a gate's process imports)

    from winback import quality

    figures = {"import_seconds": round(time.perf_counter() - started, 2), "gates": {}}
    print(f"import winback.quality + great_expectations  {figures['import_seconds']:6.2f} s")
    gates = {
        "raw_inputs": lambda: quality.check_raw_inputs(run_date),
        "scores": lambda: quality.check_scores(run_date),
        "audiences": lambda: quality.check_audiences(run_date),
    }
    for gate, call in gates.items():
        timings = []
        for _ in range(2):
            started = time.perf_counter()
            try:
                call()
                failed = 0
            except quality.QualityGateError as error:
                failed = str(error).count("\n  - ")
            timings.append(time.perf_counter() - started)
        checks = gate_checks(gate, run_date)
        started = time.perf_counter()
        quality._counts(checks)
        queries = time.perf_counter() - started
        figures["gates"][gate] = {
            "checks": len(checks),
            "failed": failed,
            "first_seconds": round(timings[0], 2),
            "seconds": round(timings[1], 2),
            "queries_seconds": round(queries, 2),
        }
        print(
            f"{gate:12} {len(checks):3} checks  first {timings[0]:6.2f} s  then {timings[1]:6.2f} s"
            f"  (queries {queries:5.2f} s){f'  {failed} FAILED' if failed else ''}",
            flush=True,
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(bench_dbt.SIZES), default="100k")
    parser.add_argument("--database", help="another warehouse URL (default: bench_daily's)")
    parser.add_argument("--ds", type=date.fromisoformat, default=bench_dbt.NEXT)
    args = parser.parse_args(argv)
    url = args.database or db.with_database(
        db.database_url(), f"{bench_daily.DATABASE}_{args.size}"
    )
    with bench_dbt.using_database(url):
        figures = run(args.ds)
    out = bench_dbt.BENCH_DIR / f"quality-{args.size}.json"
    out.write_text(json.dumps({"size": args.size, "ds": args.ds.isoformat(), **figures}, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
