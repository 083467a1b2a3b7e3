"""Benchmark: `make demo` on a fresh clone, wall-clock per stage.

    .venv/bin/python bench/bench_demo.py        # clone HEAD, time it, update BENCHMARKS.md
    .venv/bin/python bench/bench_demo.py --customers 1000 --no-markdown   # check the script

The current commit is cloned into a temporary folder (no virtual environment, no database,
no landing files: what a new user starts from), then `make venv` and `make demo` run there
as a user runs them. `make venv` is timed on its own (uv's cache is whatever the machine
has); the demo times its own stages (`.winback/demo-timings.json`: set-up, each DAG run,
the campaign responses, the summary, the reports). The load average before and after is
recorded with the figures: on a shared machine they are upper bounds, and the goal
(`make demo` under 300 s on two cores, set-up included) is judged on a quiet one (load
average below 0.5 before the demo starts; the load at its end is its own).

Results go to `.winback/bench/demo.json` and the "The demo on a fresh clone" section of
BENCHMARKS.md (between the markers below; the rest of the file is left as it is).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
RESULT = ROOT / ".winback" / "bench" / "demo.json"
GOAL_SECONDS = 300
START = "<!-- bench_demo.py: start -->"
END = "<!-- bench_demo.py: end -->"


def timed(command: list[str], cwd: Path, log: Path) -> tuple[float, int]:
    started = time.monotonic()
    with open(log, "w") as handle:
        code = subprocess.run(command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT).returncode
    return time.monotonic() - started, code


def measure(customers: int | None, keep: bool) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="winback-demo-bench-"))
    # As root, the embedded PostgreSQL runs as an unprivileged account that must reach
    # the clone's .winback/pg (mkdtemp makes the folder private to its owner).
    folder.chmod(0o755)
    clone = folder / "winback"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "checkout", "--quiet", commit], cwd=clone, check=True)
    env_note = {k: os.environ[k] for k in ("WINBACK_DATABASE_URL",) if k in os.environ}
    if env_note:
        print("note: WINBACK_DATABASE_URL is set; the clone's demo uses that server")
    load_start = os.getloadavg()
    venv_seconds, code = timed(["make", "venv"], clone, folder / "make-venv.log")
    if code != 0:
        raise SystemExit(f"make venv failed, see {folder / 'make-venv.log'}")
    make = ["make", "demo"] + ([f"DEMO_ARGS=--customers {customers}"] if customers else [])
    try:
        demo_seconds, code = timed(make, clone, folder / "make-demo.log")
    finally:  # the clone's embedded PostgreSQL, whatever happened
        subprocess.run(["make", "db-stop"], cwd=clone, capture_output=True)
    load_end = os.getloadavg()
    if code != 0:
        raise SystemExit(f"make demo failed, see {folder / 'make-demo.log'}")
    timings = json.loads((clone / ".winback" / "demo-timings.json").read_text())
    result = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "customers": timings["customers"],
        "machine": {"cpus": os.cpu_count(), "os": platform.platform()},
        "load_average_start": load_start,
        "load_average_end": load_end,
        "make_venv_seconds": venv_seconds,
        "make_demo_seconds": demo_seconds,
        "stages": timings["stages"],
        "logs": str(folder),
    }
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def markdown(result: dict) -> str:
    total = result["make_venv_seconds"] + result["make_demo_seconds"]
    stages = result["stages"]
    demo_overhead = result["make_demo_seconds"] - sum(stages.values())
    # Quiet means nothing else ran: the load before the demo. The load after it is the
    # demo's own (its dbt, Airflow, sandbox and PostgreSQL keep both cores busy).
    quiet = result["load_average_start"][0] < 0.5
    load = (
        f"load average {result['load_average_start'][0]:.2f} before,"
        f" {result['load_average_end'][0]:.2f} after, from the demo's own processes (1 min)"
    )
    lines = [
        START,
        f"Measured {result['measured_at']} at commit `{result['commit']}` by"
        f" `bench/bench_demo.py` on {result['machine']['cpus']} CPUs, {load}:"
        + (
            " a quiet machine."
            if quiet
            else " **a loaded machine** (other jobs shared the CPUs), so every figure is an"
            " upper bound; the goal is judged on a quiet machine."
        ),
        f"Shop: {result['customers']:,} simulated customers.",
        "",
        "| stage | wall-clock s |",
        "| --- | ---: |",
        f"| `make venv` (from the lock file; uv's cache as the machine had it) |"
        f" {result['make_venv_seconds']:.1f} |",
    ]
    names = {
        "set-up": "set-up: warehouse, dbt manifest, Airflow's database, sandbox",
        "simulated shop": "the simulated shop, up to the window's start (first day's files)",
        "responses": "the window's targets respond (second day's files)",
        "summary": "summary",
        "reports": "campaign reports",
    }
    for stage, seconds in stages.items():
        label = names.get(stage, f"`airflow dags test` {stage}")
        lines.append(f"| {label} | {seconds:.1f} |")
    lines += [
        f"| start-up of `winback demo` and the rest | {demo_overhead:.1f} |",
        f"| **`make venv` + `make demo`** | **{total:.1f}** |",
        "",
        f"Goal: under {GOAL_SECONDS} s on two quiet cores, set-up included:"
        f" {'met' if total < GOAL_SECONDS else 'not met'}"
        + ("" if quiet else " on this loaded machine")
        + ".",
        END,
    ]
    return "\n".join(lines)


def write_markdown(result: dict, path: Path = BENCHMARKS_MD) -> None:
    text = path.read_text()
    section = markdown(result)
    if START in text and END in text:
        before, _, rest = text.partition(START)
        _, _, after = rest.partition(END)
        text = before + section + after
    else:
        heading = "## The demo on a fresh clone"
        if heading not in text:
            text = text.rstrip("\n") + f"\n\n{heading}\n\n"
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, help="simulated customers (default: the demo's)")
    parser.add_argument("--no-markdown", action="store_true", help="leave BENCHMARKS.md alone")
    parser.add_argument("--keep", action="store_true", help="keep the clone and its logs")
    parser.add_argument(
        "--markdown-only", action="store_true", help="rewrite the section from the last result"
    )
    args = parser.parse_args(argv)
    if args.markdown_only:
        result = json.loads(RESULT.read_text())
    else:
        result = measure(args.customers, args.keep)
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    if not args.no_markdown:
        write_markdown(result)
        print(f"wrote {BENCHMARKS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
