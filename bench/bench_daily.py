"""Benchmark: the whole winback_daily run, stage by stage, at 100k or 1M customers.

    .venv/bin/python bench/bench_daily.py --size 100k     # quick
    .venv/bin/python bench/bench_daily.py --size 1m       # 1M customers, ~10M orders
    .venv/bin/python bench/bench_daily.py --markdown-only # rewrite BENCHMARKS.md

The shop comes from bench_dbt.py (generated once into .winback/bench/). On a fresh
database `winback_bench_daily`, day 1 (the whole history, every model built from scratch)
and then day 2 (~0.5% new orders, incremental) run through the same functions the DAG's
tasks call, in the DAG's order: load, dbt without the feature models (the DAG's
`dbt_customers` group), input gate, scoring, score gate, dbt feature models
(`dbt_features`), audiences, audience gate, dry-run sync, measurement, summary. dbt runs
as one `dbt build` per group (the DAG runs the same nodes one cosmos task each, which
adds dbt's start-up per node).

Each stage runs in its own process; a sampler adds up the resident memory of that
process and its children (dbt) every 50 ms, so "peak MB" is the stage's own. The
PostgreSQL server is not a child and is not counted (its shared_buffers are fixed).
The yardstick, one `GROUP BY customer_id` pass over raw.orders, is timed after each
day's load. Results go to .winback/bench/daily-<size>.json, and BENCHMARKS.md is
rewritten from every result present.

Then the same days run through Airflow itself (`bench_dag_run.py`: `airflow dags test` and
the scheduler with the LocalExecutor), and BENCHMARKS.md shows the DAG's wall-clock beside
the stage sum, so Airflow's overhead is a number (`--no-dag` skips that part, `--dag-only`
runs only it, `--dag-ways dags-test` one way).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_dag_run  # noqa: E402  (the real DAG run, beside the stage sum)
import bench_dbt  # noqa: E402  (the shop, the database and the yardstick are shared)

from winback import config  # noqa: E402

DATABASE = "winback_bench_daily"
FEATURE_MODELS = "customer_features+"  # as dags/winback_daily.py splits the dbt groups
STAGES = (
    "load",
    "dbt_customers",
    "check_raw_inputs",
    "score",
    "check_scores",
    "dbt_features",
    "audiences",
    "check_audiences",
    "sync_dry_run",
    "measure",
    "summarize",
)
BENCHMARKS_MD = config.PROJECT_ROOT / "BENCHMARKS.md"
DEMO_SECTION = "## The demo on a fresh clone"


def run_stage(stage: str, ds: str, landing: str, target_path: str, bulk_load: bool) -> dict:
    """Run one stage in this process (called in the stage's own child process)."""
    from winback import pipeline

    if stage == "load" and bulk_load:
        seconds, rows = bench_dbt.bulk_load_day(Path(landing), date.fromisoformat(ds))
        return {"rows_loaded": rows, "method": "bulk COPY"}
    if stage == "load":
        return pipeline.load_raw_files(ds, landing)
    if stage in ("dbt_customers", "dbt_features"):
        selection = (
            ["--exclude", FEATURE_MODELS]
            if stage == "dbt_customers"
            else ["--select", FEATURE_MODELS]
        )
        run = bench_dbt.dbt("build", date.fromisoformat(ds), Path(target_path), *selection)
        return {"dbt_seconds": run.seconds, "nodes": [node.__dict__ for node in run.nodes]}
    calls = {
        "check_raw_inputs": lambda: pipeline.check_raw_inputs(ds),
        "score": lambda: pipeline.score_customers(ds),
        "check_scores": lambda: pipeline.check_scores(ds),
        "audiences": lambda: pipeline.build_audiences(ds),
        "check_audiences": lambda: pipeline.check_audiences(ds),
        "sync_dry_run": lambda: pipeline.sync_outbox(ds, mode="dry_run"),
        "measure": lambda: pipeline.measure_closed_windows(ds),
        "summarize": lambda: pipeline.summarize(ds),
    }
    return calls[stage]()


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass  # it ended between the listing and the reading
    return total


def measure_stage(
    stage: str, ds: str, landing: Path, target_path: Path, bulk_load: bool = False
) -> dict:
    """Run a stage in a child process; wall time and peak RSS of that process tree."""
    out = target_path.parent / f"stage-{stage}.json"
    command = [
        sys.executable, __file__, "--run-stage", stage, "--ds", ds,
        "--landing", str(landing), "--target-path", str(target_path), "--out", str(out),
        *(["--bulk-load"] if bulk_load else []),
    ]  # fmt: skip
    started = time.perf_counter()
    child = subprocess.Popen(command)
    process = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_rss(process))
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"stage {stage} for {ds} failed (exit {child.returncode})")
    result = json.loads(out.read_text())
    return {"stage": stage, "seconds": seconds, "peak_mb": peak / 2**20, "result": result}


def run(size: str, bulk_load: bool = False) -> dict:
    customers = bench_dbt.SIZES[size]
    landing = bench_dbt.ensure_shop(customers)
    generated = bench_dbt.shop_rows(landing)
    work = bench_dbt.BENCH_DIR / f"daily-{customers}"
    work.mkdir(parents=True, exist_ok=True)
    days = {}
    load_average = {"start": os.getloadavg()}
    with bench_dbt.using_database(bench_dbt.fresh_database(f"{DATABASE}_{size}")):
        for label, day in (("day1", bench_dbt.DAY), ("day2", bench_dbt.NEXT)):
            stages = []
            for stage in STAGES:
                measured = measure_stage(
                    stage, day.isoformat(), landing, work / "target", bulk_load
                )
                stages.append(measured)
                seconds, peak = measured["seconds"], measured["peak_mb"]
                print(f"{label} {stage:18} {seconds:8.1f} s {peak:8.0f} MB", flush=True)
                if stage == "load":
                    yardstick = bench_dbt.time_group_by_pass()
                    print(f"{label} {'GROUP BY pass':18} {yardstick:8.2f} s", flush=True)
            days[label] = {"date": day.isoformat(), "stages": stages, "group_by_seconds": yardstick}
        settings = bench_dbt.server_settings()
    load_average["end"] = os.getloadavg()
    result = {
        "size": size,
        "customers": customers,
        "generated": generated,
        "load_method": "bulk COPY (no checks)" if bulk_load else "winback loader",
        "days": days,
        "settings": settings,
        "machine": machine(),
        "load_average": load_average,
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (bench_dbt.BENCH_DIR / f"daily-{size}.json").write_text(
        json.dumps(result, indent=2, default=str)
    )
    return result


def machine() -> dict:
    memory = psutil.virtual_memory().total / 2**30
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(memory, 1),
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def loaded_rows(stage: dict) -> int:
    return int(stage["result"].get("rows_loaded", 0))


def stage_table(result: dict) -> list[str]:
    day1, day2 = result["days"]["day1"], result["days"]["day2"]
    lines = [
        "| stage | day 1 s | day 1 peak MB | day 2 s | day 2 peak MB |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for first, second in zip(day1["stages"], day2["stages"], strict=True):
        lines.append(
            f"| {first['stage']} | {first['seconds']:.1f} | {first['peak_mb']:.0f} "
            f"| {second['seconds']:.1f} | {second['peak_mb']:.0f} |"
        )
    totals = [sum(s["seconds"] for s in day["stages"]) for day in (day1, day2)]
    peaks = [max(s["peak_mb"] for s in day["stages"]) for day in (day1, day2)]
    lines.append(
        f"| **total** | **{totals[0]:.1f}** | {peaks[0]:.0f} "
        f"| **{totals[1]:.1f}** | {peaks[1]:.0f} |"
    )
    lines.append(
        f"| GROUP BY customer_id pass (yardstick) | {day1['group_by_seconds']:.2f} | "
        f"| {day2['group_by_seconds']:.2f} | |"
    )
    return lines


def dbt_model_table(result: dict) -> list[str]:
    """Each dbt model's time (run_results.json) on both days, slowest first; tests summed."""
    per_day = {}
    for label, day in result["days"].items():
        nodes = [
            node
            for stage in day["stages"]
            if stage["stage"] in ("dbt_customers", "dbt_features")
            for node in stage["result"]["nodes"]
        ]
        per_day[label] = nodes
    models = {
        n["name"]: n["seconds"]
        for n in per_day["day1"]
        if n["resource_type"] in ("model", "seed", "snapshot")
    }
    later = {
        n["name"]: n["seconds"] for n in per_day["day2"] if n["resource_type"] in ("model", "seed")
    }
    lines = ["| dbt node | day 1 s | day 2 s |", "| --- | ---: | ---: |"]
    for name, seconds in sorted(models.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {seconds:.1f} | {later.get(name, 0.0):.1f} |")
    for kind, title in (("test", "data tests"), ("unit_test", "unit tests")):
        first = [n["seconds"] for n in per_day["day1"] if n["resource_type"] == kind]
        second = [n["seconds"] for n in per_day["day2"] if n["resource_type"] == kind]
        lines.append(f"| {len(first)} {title} (sum) | {sum(first):.1f} | {sum(second):.1f} |")
    return lines


def stages_by_name(day: dict) -> dict[str, dict]:
    return {s["stage"]: s for s in day["stages"]}


def growth_cells(small: float, large: float, value_format: str) -> list[str]:
    """Table cells: both values (`value_format`, e.g. "{:.1f} s"), their ratio and its
    exponent k (cost ~ customers^k)."""
    ratio = large / small
    return [
        value_format.format(small),
        value_format.format(large),
        f"{ratio:.1f}x",
        f"{math.log10(ratio):.2f}",
    ]


def summary_figures(result: dict) -> dict:
    figures = {}
    for label, day in result["days"].items():
        stages = stages_by_name(day)
        dbt_seconds = stages["dbt_customers"]["seconds"] + stages["dbt_features"]["seconds"]
        load = stages["load"]
        figures[label] = {
            "total": sum(s["seconds"] for s in day["stages"]),
            "peak_mb": max(s["peak_mb"] for s in day["stages"]),
            "dbt": dbt_seconds,
            "dbt_ratio": dbt_seconds / day["group_by_seconds"],
            "load_rows_per_s": loaded_rows(load) / load["seconds"],
            "rows_loaded": loaded_rows(load),
            "group_by": day["group_by_seconds"],
        }
    return figures


def goals_table(results: dict) -> list[str]:
    """The issues' goals against the largest size measured (and the loader at any size)."""
    size = "1m" if "1m" in results else "100k"
    figures = summary_figures(results[size])
    loader_rates = {
        name: summary_figures(r)["day1"]["load_rows_per_s"]
        for name, r in results.items()
        if r.get("load_method", "winback loader") == "winback loader"
    }
    rows = [
        ("full daily run (day 1)", "<= 600 s", figures["day1"]["total"], 600, "s"),
        ("next day (day 2)", "<= 180 s", figures["day2"]["total"], 180, "s"),
        (
            "peak memory of any stage",
            "<= 4096 MB",
            max(figures[d]["peak_mb"] for d in figures),
            4096,
            "MB",
        ),
        ("dbt, full build / GROUP BY pass", "<= 4x", figures["day1"]["dbt_ratio"], 4, "x"),
        ("dbt, incremental day / GROUP BY pass", "<= 0.5x", figures["day2"]["dbt_ratio"], 0.5, "x"),
    ]
    lines = [
        f"## Goals (issues 3 and 9) at {results[size]['customers']:,} customers",
        "",
        "| goal | target | measured | met |",
        "| --- | --- | ---: | --- |",
    ]
    for name, target, value, limit, unit in rows:
        lines.append(
            f"| {name} | {target} | {value:,.1f} {unit} | {'yes' if value <= limit else 'no'} |"
        )
    if loader_rates:
        # The slowest size decides; each size's own rate is shown beside it.
        rate = min(loader_rates.values())
        each = ", ".join(f"{name} {value:,.0f}" for name, value in sorted(loader_rates.items()))
        lines.append(
            f"| loading with the winback loader, day 1 (slowest size; {each}) "
            f"| >= 200,000 rows/s | {rate:,.0f} rows/s | {'yes' if rate >= 200_000 else 'no'} |"
        )
    return [*lines, ""]


def performance_goals_table(results: dict) -> list[str]:
    """Issue 19's goals at 1M customers: the real DAG's wall-clock (`airflow dags test`)
    for a whole day, the stage figures for audiences, dbt and memory; each with the
    distance left when it is not met."""
    if "1m" not in results:
        return []
    stages = {label: stages_by_name(day) for label, day in results["1m"]["days"].items()}
    figures = summary_figures(results["1m"])
    dag_path = bench_dbt.BENCH_DIR / "daily-1m-dag.json"
    dag = json.loads(dag_path.read_text())["ways"].get("dags-test") if dag_path.exists() else None
    rows = [
        ("a later day, the real DAG (airflow dags test)", 120, "s",
         dag["day2"]["wall_seconds"] if dag else None),
        ("day 1, the real DAG (airflow dags test)", 360, "s",
         dag["day1"]["wall_seconds"] if dag else None),
        ("peak memory of any stage", 2048, "MB",
         max(figures[d]["peak_mb"] for d in figures)),
        ("audiences on a later day (stage)", 15, "s", stages["day2"]["audiences"]["seconds"]),
        ("dbt on a later day (both groups, stages)", 30, "s", figures["day2"]["dbt"]),
    ]  # fmt: skip
    lines = [
        "## Goals (issue 19) at 1,000,000 customers",
        "",
        "| goal | target | measured | met | distance left |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for name, limit, unit, value in rows:
        if value is None:
            lines.append(f"| {name} | <= {limit:,} {unit} | not run | - | - |")
            continue
        met = value <= limit
        distance = "-" if met else f"{value - limit:,.1f} {unit}"
        lines.append(
            f"| {name} | <= {limit:,} {unit} | {value:,.1f} {unit} | {'yes' if met else 'no'} "
            f"| {distance} |"
        )
    return [*lines, ""]


def write_markdown(path: Path = BENCHMARKS_MD) -> None:
    results = {}
    for size in ("100k", "1m"):  # the sizes BENCHMARKS.md reports
        file = bench_dbt.BENCH_DIR / f"daily-{size}.json"
        if file.exists():
            results[size] = json.loads(file.read_text())
    if not results:
        raise SystemExit("no results yet: run bench/bench_daily.py --size 100k first")
    any_result = next(iter(results.values()))
    host = any_result["machine"]
    settings = any_result["settings"]
    out = [
        "# Benchmarks",
        "",
        "Written by `bench/bench_daily.py` (do not edit by hand; rerun it). The whole",
        "`winback_daily` run, stage by stage, on the simulator's shop: day 1 loads the whole",
        "history and builds every model from scratch; day 2 loads ~0.5% new orders and runs",
        "incrementally. Each stage runs the function its DAG task calls, in its own process;",
        "peak MB is the resident memory of that process and its children (dbt), sampled every",
        "50 ms (the PostgreSQL server is not included). dbt runs as one `dbt build` per DAG",
        "group (models, seeds and their tests); Airflow's own overhead is not included.",
        "",
        "## Machine",
        "",
        f"* {host['cpus']} CPUs ({host['cpu']}), {host['memory_gb']} GB RAM, {host['os']}",
        f"* Python {host['python']}; PostgreSQL {settings.get('server_version', '?')}, "
        "the embedded cluster (`winback/local/embedded_pg.py`)",
        "* PostgreSQL settings: "
        + ", ".join(f"`{k} = {v}`" for k, v in sorted(settings.items()) if k != "server_version"),
        "* When other jobs share the CPUs, times are upper bounds and the same stage can",
        "  vary several-fold between runs; the GROUP BY yardstick, timed in the same run,",
        "  shows how loaded the machine was. Each section says when it was measured; the",
        "  README says what else ran at the time.",
        "",
    ]
    for size, result in results.items():
        rows = result["generated"]["rows"]
        out += [
            f"## {result['customers']:,} customers ({size}), measured {result['measured_at']}",
            "",
            f"Shop: {rows['customers']:,} customers, {rows['orders']:,} orders, "
            f"{rows['order_lines']:,} order lines, {rows['engagement_events']:,} engagement "
            f"events, {rows['loyalty_points']:,} loyalty entries; day 2: "
            f"{result['generated']['next_day_orders']:,} new orders. Load stage: "
            f"{result.get('load_method', 'winback loader')}.",
            *(
                [
                    "",
                    "Load average (1 min) {:.2f} at the start, {:.2f} at the end; nothing else "
                    "ran beside it.".format(
                        result["load_average"]["start"][0], result["load_average"]["end"][0]
                    ),
                ]
                if "load_average" in result
                else []
            ),
            "",
            *stage_table(result),
            "",
            "dbt, per node (dbt's run_results.json; two threads, so the times overlap):",
            "",
            *dbt_model_table(result),
            "",
        ]
        figures = summary_figures(result)
        for label, name in (("day1", "Day 1"), ("day2", "Day 2")):
            f = figures[label]
            out.append(
                f"* {name}: total {f['total']:.0f} s; dbt {f['dbt']:.1f} s = "
                f"{f['dbt_ratio']:.1f}x the GROUP BY pass ({f['group_by']:.2f} s); load "
                f"{f['rows_loaded']:,} rows at {f['load_rows_per_s']:,.0f} rows/s; peak "
                f"{f['peak_mb']:.0f} MB."
            )
        out.append("")
    out += goals_table(results)
    out += performance_goals_table(results)
    if len(results) == 2:
        small, large = (summary_figures(results[s]) for s in ("100k", "1m"))
        out += [
            "## How cost grows: 100k → 1M (10x the customers)",
            "",
            *(
                [
                    f"The load row compares different methods (100k: "
                    f"{results['100k'].get('load_method', 'winback loader')}; 1M: "
                    f"{results['1m'].get('load_method', 'winback loader')}).",
                    "",
                ]
                if results["100k"].get("load_method") != results["1m"].get("load_method")
                else []
            ),
            "The exponent is how the cost grows with the customers: cost ~ customers^k, so",
            "k = log10 of the ratio (1 is linear; below 1, fixed costs weigh).",
            "",
            "| | day 1 100k | day 1 1M | ratio | k | day 2 100k | day 2 1M | ratio | k |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        days = ("day1", "day2")
        stages_small = {d: stages_by_name(results["100k"]["days"][d]) for d in days}
        stages_large = {d: stages_by_name(results["1m"]["days"][d]) for d in days}
        for stage in STAGES:
            cells = []
            for d in days:
                a, b = stages_small[d][stage]["seconds"], stages_large[d][stage]["seconds"]
                cells += growth_cells(a, b, "{:.1f} s")
            out.append(f"| {stage} | " + " | ".join(cells) + " |")
        for title, figure, value_format in (
            ("**total**", "total", "{:.0f} s"),
            ("peak memory", "peak_mb", "{:.0f} MB"),
            ("GROUP BY pass", "group_by", "{:.2f} s"),
        ):
            cells = []
            for d in days:
                cells += growth_cells(small[d][figure], large[d][figure], value_format)
            out.append(f"| {title} | " + " | ".join(cells) + " |")
        out.append("")
    out += bench_dag_run.markdown_section(results)
    import bench_backfill  # the backfill through the scheduler has its own section

    out += bench_backfill.markdown_section()
    # The demo's section (bench/bench_demo.py) is not this script's: keep it as it is.
    kept = path.read_text().partition(DEMO_SECTION)[1:] if path.exists() else ("", "")
    path.write_text("\n".join(out) + ("\n" + "".join(kept) if kept[0] else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(bench_dbt.SIZES), default="100k")
    parser.add_argument(
        "--markdown-only", action="store_true", help="rewrite BENCHMARKS.md and stop"
    )
    parser.add_argument(
        "--bulk-load",
        action="store_true",
        help="load with an unchecked bulk COPY instead of the winback loader; only for "
        "comparison: the loader is as fast at both sizes (docs/loading.md)",
    )
    parser.add_argument(
        "--dag-only", action="store_true", help="run only winback_daily through Airflow"
    )
    parser.add_argument(
        "--no-dag", action="store_true", help="run only the stages, not the DAG through Airflow"
    )
    parser.add_argument(
        "--dag-ways",
        default=",".join(bench_dag_run.WAYS),
        help="how Airflow runs the DAG: dags-test, scheduler or both (comma-separated)",
    )
    parser.add_argument("--run-stage", help=argparse.SUPPRESS)
    parser.add_argument("--ds", help=argparse.SUPPRESS)
    parser.add_argument("--landing", help=argparse.SUPPRESS)
    parser.add_argument("--target-path", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_stage:
        result = run_stage(args.run_stage, args.ds, args.landing, args.target_path, args.bulk_load)
        args.out.write_text(json.dumps(result, default=str))
        return 0
    if not args.markdown_only:
        if not args.dag_only:
            run(args.size, bulk_load=args.bulk_load)
        if not args.no_dag:
            ways = tuple(way.strip() for way in args.dag_ways.split(",") if way.strip())
            unknown = set(ways) - set(bench_dag_run.WAYS)
            if unknown:
                parser.error(f"--dag-ways: unknown {sorted(unknown)}")
            bench_dag_run.run(args.size, ways)
    if args.size not in ("100k", "1m") and not args.markdown_only:
        # A smoke size is not BENCHMARKS.md's: show its DAG figures here instead.
        stages = bench_dbt.BENCH_DIR / f"daily-{args.size}.json"
        stage_results = {args.size: json.loads(stages.read_text())} if stages.exists() else {}
        print("\n".join(bench_dag_run.markdown_section(stage_results)))
        return 0
    write_markdown()
    print(f"wrote {BENCHMARKS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
