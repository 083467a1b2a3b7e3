"""Benchmark: the checking loader against an unchecked bulk COPY, on the 100k shop.

    .venv/bin/python bench/bench_load.py                      # the shop bench_dbt generates
    .venv/bin/python bench/bench_load.py --landing DIR        # any landing folder with both days
    .venv/bin/python bench/bench_load.py --size 1m --malformed 1   # 1M customers, 1% broken lines

Day 1 (the whole history, ~6.2M rows) and day 2 (~0.5% new orders and their lines) are
loaded by `winback.ingest.loader.load_day` into a fresh database, then by
`bench_dbt.bulk_load_day` (COPY straight into the raw tables, no checks, no quarantine)
into another fresh database: the yardstick, measured in the same run. Rows per second
per table and in total are printed side by side, with the machine's load average before
and after (2 shared cores: figures move with it). `--repeat N` alternates the two N
times and reports each one's fastest day 1 (and every attempt). `--json` writes them.

`--malformed P` loads a copy of the shop's CSV files in which P% of the data lines are
broken in turn as real exports break them (cut off mid-row, an extra field, only spaces):
each must become one quarantined row while the rest loads, at the fast path's speed. The
bulk COPY yardstick cannot load such files, so it then reads the intact originals.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


BROKEN_LINE_KINDS = ("cut off", "extra field", "only spaces")


def break_lines(line: bytes, kind: int) -> bytes:
    if kind == 0:
        # Cut at a field boundary: a quote left open would swallow the next line too.
        cut = line.rfind(b",", 0, len(line) // 2 + 1)
        return line[: max(cut, 1)]
    if kind == 1:
        return line + b",surplus"
    return b"   "


def with_malformed_lines(landing: Path, percent: float) -> tuple[Path, int]:
    """A copy of `landing` with every (100 / percent)th data line of each CSV broken.

    Lines are counted by LF, so the shop's files must hold no quoted line breaks (the
    simulator writes none). Returns the copy and how many lines were broken.
    """
    every = max(round(100 / percent), 2)
    copy = landing.parent / f"{landing.name}-malformed-{percent:g}pct"
    marker = copy / "broken.json"
    if marker.exists():
        return copy, json.loads(marker.read_text())["broken_lines"]
    shutil.rmtree(copy, ignore_errors=True)
    broken = 0
    for _, day in DAYS:
        source, target = landing / day.isoformat(), copy / day.isoformat()
        target.mkdir(parents=True)
        for path in sorted(source.iterdir()):
            if path.suffix != ".csv":
                shutil.copy(path, target / path.name)
                continue
            with open(path, "rb") as reader, open(target / path.name, "wb") as writer:
                writer.write(reader.readline())  # the header
                for number, line in enumerate(reader, start=1):
                    if number % every == 0:
                        line = break_lines(line.rstrip(b"\r\n"), broken % 3) + b"\n"
                        broken += 1
                    writer.write(line)
    marker.write_text(json.dumps({"broken_lines": broken, "every": every}))
    return copy, broken


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
        checked, copied = result["loader"][label], result.get("bulk_copy", {}).get(label)
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
        if copied is None:
            continue
        out.append(
            f"  {'bulk COPY, total':18} {copied['rows']:>10,} {copied['rows']:>10,} "
            f"{0:>8,} {copied['seconds']:>9.2f} {copied['rows'] / copied['seconds']:>9,.0f}"
        )
    out.append(
        f"day 1 seconds, every attempt: loader {result['loader_day1_seconds']}, "
        f"bulk COPY {result.get('bulk_copy_day1_seconds', 'not run')}"
    )
    out.append(f"load average before: {result['load_before']}; after: {result['load_after']}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landing", type=Path, help="landing folder holding both days")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--repeat", type=int, default=1, help="attempts of each, alternated")
    parser.add_argument("--size", choices=sorted(bench_dbt.SIZES), default="100k")
    parser.add_argument(
        "--malformed", type=float, default=0.0, help="percent of CSV lines to break (e.g. 1)"
    )
    parser.add_argument("--no-bulk-copy", action="store_true", help="skip the yardstick")
    args = parser.parse_args(argv)
    landing = args.landing or bench_dbt.ensure_shop(bench_dbt.SIZES[args.size])
    result = {"landing": str(landing), "load_before": load_average()}
    loader_landing = landing
    if args.malformed:
        loader_landing, broken = with_malformed_lines(landing, args.malformed)
        result.update(malformed_percent=args.malformed, broken_lines=broken)
        print(f"{broken:,} lines broken ({args.malformed:g}%) in {loader_landing}", flush=True)
    attempts: dict[str, list[dict]] = {"loader": [], "bulk_copy": []}
    for _ in range(args.repeat):
        attempts["loader"].append(run_loader(loader_landing))
        if not args.no_bulk_copy:
            attempts["bulk_copy"].append(run_bulk_copy(landing))
    if args.no_bulk_copy:
        attempts.pop("bulk_copy")
    for method, runs in attempts.items():
        result[method] = min(runs, key=lambda days: days["day1"]["seconds"])
        result[f"{method}_day1_seconds"] = [round(days["day1"]["seconds"], 1) for days in runs]
    result["load_after"] = load_average()
    if args.malformed:
        quarantined = result["loader"]["day1"]["report"]["rows_quarantined"]
        print(f"day 1 quarantined {quarantined:,} rows ({result['broken_lines']:,} lines broken)")
    result["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print("\n".join(table(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
