"""Benchmark: winback_daily run by Airflow itself, day 1 then day 2, beside the stage sum.

    .venv/bin/python bench/bench_daily.py --size 100k            # stages, then the DAG both ways
    .venv/bin/python bench/bench_daily.py --size 10k --dag-only  # a smoke run of this part

`bench_daily.py` times the functions the DAG's tasks call, each in its own process; the
run a user waits for also pays Airflow: task start-up, scheduling between tasks, cosmos'
dbt tasks. This module runs the real `winback_daily` over the same shop and days, two ways:

- `dags-test`: `airflow dags test winback_daily <day>`, what `make demo` runs: one process,
  the tasks one after another, no scheduler.
- `scheduler`: a local Airflow (scheduler with the LocalExecutor, api-server,
  dag-processor, triggerer: `winback.local.airflow_ui`), a run triggered through the REST
  API for each day, one after the other; wall-clock from the trigger to the run's end.

Each way gets a fresh warehouse (`winback_bench_daily_<size>_dag`) and a fresh Airflow
metadata database and home (`winback_bench_daily_<size>_airflow`, `.winback/bench/`), so
neither touches the demo's state. The sync is a dry run, as in the stage benchmark.
Per day it records the DAG's wall-clock, each task's seconds, their sum for the dbt tasks
and for the rest, and the peak resident memory of the Airflow process tree (`dags-test`).
Results go to `.winback/bench/daily-<size>-dag.json`; `bench_daily.py` puts them beside
the stage sum in BENCHMARKS.md. With `WINBACK_DBT_EXECUTION_MODE=local` in the
environment the DAG runs dbt as before (one invocation per model and per model's tests)
and the results go to `daily-<size>-dag-local.json`, shown beside:

    WINBACK_DBT_EXECUTION_MODE=local .venv/bin/python bench/bench_daily.py --size 100k --dag-only
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from datetime import date
from pathlib import Path

import bench_dbt
import httpx
import psutil
import psycopg

from winback.local import airflow_env, airflow_ui, backfill
from winback.orchestration import progress
from winback.warehouse import db

WAYS = ("dags-test", "scheduler")
DAG_ID = "winback_daily"
WAREHOUSE = "winback_bench_daily_{size}_dag"
METADATA = "winback_bench_daily_{size}_airflow"
DBT_GROUPS = ("dbt_customers.", "dbt_features.")
# cosmos' execution mode the DAG runs dbt in (WINBACK_DBT_EXECUTION_MODE, default watcher);
# `local`, one dbt invocation per task, is the before of issue 19's item 4.
MODE_SUFFIX = {"watcher": "", "local": "-local"}


def dbt_mode() -> str:
    return os.environ.get("WINBACK_DBT_EXECUTION_MODE", "").strip().lower() or "watcher"


def _recreate_metadata_database(name: str) -> str:
    server = db.database_url()
    with psycopg.connect(db.with_database(server, "postgres"), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    return db.with_database(server, name).replace("postgresql://", "postgresql+psycopg2://", 1)


class _Isolated:
    """A fresh warehouse, Airflow database and home for one way; the environment restored
    afterwards."""

    KEYS = (
        "AIRFLOW_HOME",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "WINBACK_LANDING_DIR",
        "WINBACK_SEND_MODE",
    )

    def __init__(self, size: str, way: str, landing: Path):
        self.size, self.way, self.landing = size, way, landing
        self.home = bench_dbt.BENCH_DIR / f"daily-{size}-airflow-{way}"

    def __enter__(self) -> _Isolated:
        self.saved = {key: os.environ.get(key) for key in self.KEYS}
        warehouse = bench_dbt.fresh_database(WAREHOUSE.format(size=self.size))
        self.database = bench_dbt.using_database(warehouse)
        self.database.__enter__()
        metadata = _recreate_metadata_database(METADATA.format(size=self.size))
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "airflow.cfg").unlink(missing_ok=True)  # a fresh home: migrated below
        os.environ.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
                "WINBACK_LANDING_DIR": str(self.landing),
            }
        )
        os.environ.pop("WINBACK_SEND_MODE", None)  # the DAG's default: a dry run
        airflow_env.migrate_metadata_db()
        return self

    def __exit__(self, *exc_info) -> None:
        self.database.__exit__(*exc_info)
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def split_seconds(tasks: dict[str, float]) -> dict[str, float]:
    """The tasks' seconds summed: dbt (cosmos) tasks, the other tasks, all."""
    dbt = sum(s for task, s in tasks.items() if task.startswith(DBT_GROUPS))
    total = sum(tasks.values())
    return {"dbt_tasks": dbt, "other_tasks": total - dbt, "all_tasks": total}


def _sample_peak(process: subprocess.Popen, peak: list[int]) -> None:
    parent = psutil.Process(process.pid)
    while process.poll() is None:
        total = 0
        for member in [parent, *parent.children(recursive=True)]:
            try:
                total += member.memory_info().rss
            except psutil.Error:
                pass  # it ended between the listing and the reading
        peak[0] = max(peak[0], total)
        time.sleep(0.1)


def dags_test_day(day: date, log_path: Path) -> dict:
    """`airflow dags test winback_daily <day>`: wall-clock, per-task seconds, peak memory."""
    watch = progress.DagTestProgress(lambda text: None)
    peak = [0]
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(airflow_env.airflow_executable()), "dags", "test", DAG_ID, day.isoformat()],
            env=airflow_env.airflow_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        sampler = threading.Thread(target=_sample_peak, args=(process, peak), daemon=True)
        sampler.start()
        for line in process.stdout:
            log.write(line)
            watch.feed(line)
        process.wait()
        sampler.join(timeout=5)
    wall = time.monotonic() - started
    failed = sorted(task.task_id for task in watch.done if task.state != "success")
    if process.returncode != 0 or failed:
        raise SystemExit(f"winback_daily {day} failed {failed}; log: {log_path}")
    tasks = {task.task_id: task.seconds for task in watch.done}
    return {
        "wall_seconds": wall,
        "tasks": len(tasks),
        "task_seconds": tasks,
        **split_seconds(tasks),
        "peak_mb": peak[0] / 2**20,
    }


def _api(airflow, method: str, path: str, **kwargs) -> dict:
    response = httpx.request(
        method,
        f"{airflow.url}/api/v2/dags/{DAG_ID}{path}",
        headers={"Authorization": f"Bearer {airflow.api_token()}"},
        timeout=60,
        **kwargs,
    )
    response.raise_for_status()
    return response.json()


def scheduler_day(airflow, day: date, timeout: float) -> dict:
    """Trigger a run of `day` through the REST API and wait for its end."""
    started = time.monotonic()
    created = _api(
        airflow, "POST", "/dagRuns", json={"logical_date": f"{day.isoformat()}T00:00:00Z"}
    )
    run_id = created["dag_run_id"]
    deadline = started + timeout
    while True:
        run = _api(airflow, "GET", f"/dagRuns/{run_id}")
        if run["state"] in backfill.FINISHED:
            break
        if dead := airflow.dead():
            name = next(iter(dead))
            raise SystemExit(f"airflow {name} exited:\n{airflow.log_tail(name)}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{run_id} not finished after {timeout:.0f} s")
        time.sleep(1)
    wall = time.monotonic() - started
    instances = _api(airflow, "GET", f"/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
    tasks = {ti["task_id"]: ti.get("duration") or 0.0 for ti in instances["task_instances"]}
    failed = sorted(ti["task_id"] for ti in instances["task_instances"] if ti["state"] != "success")
    if run["state"] != "success" or failed:
        raise SystemExit(f"{run_id} ended {run['state']} ({failed}); logs: {airflow.log_dir}")
    return {
        "wall_seconds": wall,
        "tasks": len(tasks),
        "task_seconds": tasks,
        **split_seconds(tasks),
    }


def run(size: str, ways: tuple[str, ...] = WAYS, timeout: float = 3600) -> dict:
    """Both days of the benchmark shop through winback_daily, each way on a fresh start."""
    customers = bench_dbt.SIZES[size]
    landing = bench_dbt.ensure_shop(customers)
    mode = dbt_mode()
    logs = bench_dbt.BENCH_DIR / f"daily-{size}-dag{MODE_SUFFIX[mode]}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    days = {"day1": bench_dbt.DAY, "day2": bench_dbt.NEXT}
    load = {"start": os.getloadavg()}
    results: dict[str, dict] = {}
    for way in ways:
        per_day = results.setdefault(way, {})
        with _Isolated(size, way, landing) as isolated:
            if way == "dags-test":
                for label, day in days.items():
                    per_day[label] = dags_test_day(day, logs / f"{way}-{label}.log")
                    _say(way, label, per_day[label])
            else:
                airflow = airflow_ui.start_local_airflow(
                    0,
                    log_dir=isolated.home / "logs" / "local",
                    extra_env={"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"},
                )
                with airflow:
                    airflow.unpause()
                    for label, day in days.items():
                        per_day[label] = scheduler_day(airflow, day, timeout)
                        _say(way, label, per_day[label])
    load["end"] = os.getloadavg()
    path = bench_dbt.BENCH_DIR / f"daily-{size}-dag{MODE_SUFFIX[mode]}.json"
    if path.exists():
        # A run of one way keeps the other way's last figures (each says when it ran).
        earlier = json.loads(path.read_text())
        kept = earlier["ways"]
        for figures in kept.values():  # written before each way carried its own
            figures.setdefault("load_average", earlier.get("load_average"))
            figures.setdefault("measured_at", earlier.get("measured_at"))
        results = {**{way: kept[way] for way in kept if way not in results}, **results}
    for way in ways:
        results[way]["load_average"] = load
        results[way]["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result = {
        "size": size,
        "customers": customers,
        "dbt_execution_mode": mode,
        "ways": results,
    }
    path.write_text(json.dumps(result, indent=2, default=str))
    return result


def _say(way: str, label: str, day: dict) -> None:
    print(
        f"{label} {way:10} wall {day['wall_seconds']:7.1f} s: {day['tasks']} tasks,"
        f" dbt tasks {day['dbt_tasks']:.1f} s, other tasks {day['other_tasks']:.1f} s",
        flush=True,
    )


def markdown_section(stage_results: dict, bench_dir: Path = bench_dbt.BENCH_DIR) -> list[str]:
    """BENCHMARKS.md's table: the real DAG's wall-clock beside the stage sum, per size."""
    out = [
        "## The real DAG run beside the stage sum (`bench/bench_dag_run.py`)",
        "",
        "The same shop and days run by Airflow itself, on a fresh warehouse and Airflow",
        "database: `airflow dags test` (what `make demo` runs) and a local scheduler with the",
        "LocalExecutor (a run triggered per day). Airflow's overhead is the wall-clock minus",
        "the stage sum; the task columns add up the seconds Airflow recorded per task.",
        "",
    ]
    found = False
    for size, mode in [(size, mode) for size in ("10k", "100k", "1m") for mode in MODE_SUFFIX]:
        path = bench_dir / f"daily-{size}-dag{MODE_SUFFIX[mode]}.json"
        if not path.exists():
            continue
        found = True
        result = json.loads(path.read_text())
        stages = stage_results.get(size)
        out.append(f"{result['customers']:,} customers, dbt in cosmos' {mode} mode:")
        out.append("")
        for way, per_day in result["ways"].items():
            load = per_day.get("load_average") or result["load_average"]
            when = per_day.get("measured_at") or result["measured_at"]
            out.append(
                f"* {way}: measured {when}, load average (1 min)"
                f" {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end"
            )
        out += [
            "",
            "| day | way | stage sum | DAG wall-clock | Airflow overhead | tasks "
            "| dbt tasks | other tasks |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for way, per_way in result["ways"].items():
            for label in ("day1", "day2"):
                day = per_way[label]
                stage_sum = (
                    sum(s["seconds"] for s in stages["days"][label]["stages"]) if stages else None
                )
                stage_cell = f"{stage_sum:.1f} s" if stage_sum is not None else "not run"
                overhead = (
                    f"{day['wall_seconds'] - stage_sum:.1f} s" if stage_sum is not None else "-"
                )
                out.append(
                    f"| {label} | {way} | {stage_cell} | {day['wall_seconds']:.1f} s "
                    f"| {overhead} | {day['tasks']} | {day['dbt_tasks']:.1f} s "
                    f"| {day['other_tasks']:.1f} s |"
                )
        out.append("")
    if not found:
        out += ["Not measured yet: `.venv/bin/python bench/bench_daily.py --size 100k`.", ""]
    return out
