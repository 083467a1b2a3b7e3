"""A backfill of winback_daily through the real scheduler: create it, wait for it, read it.

Used by the scheduler-driven test and `bench/bench_backfill.py`, against a local Airflow
(`winback.local.airflow_ui.start_local_airflow`). The backfill is created with the same
`airflow backfill create` command the README documents, so the test runs what a data
engineer types; its runs are read back through the REST API.

Every flag of that command is there for a reason:

* `--max-active-runs 1`: a backfill's own limit defaults to 10 runs at once, whatever the
  DAG's `max_active_runs` says; winback's days go one at a time;
* `--reprocess-behavior completed`: a day that already ran is run again (Airflow also
  insists on it for a DAG whose tasks depend on the past);
* `--dag-run-conf '{"send_mode": "dry_run"}'`: a reprocessed run keeps its old conf
  unless the backfill gives one, so a day first run live (the demo's days) would ask to
  send live again; the send policy still refuses a backfill, this says it twice.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from datetime import date, datetime

import httpx

from winback.local import airflow_env

DAG_ID = "winback_daily"
DRY_RUN_CONF = {"send_mode": "dry_run"}
FINISHED = ("success", "failed")
# What a local Airflow that runs one backfill (the scheduler test, the benchmark) is
# started with, beside winback's own settings (`airflow_env`): no scheduled run beside
# the backfill, and DAG files, which do not change during it, parsed at start-up and then
# every 10 minutes rather than every 30 s. Each parse of winback_daily (cosmos reading the
# dbt manifest) takes a core for seconds, which a small machine's tasks would wait for.
# Such an Airflow needs no triggerer: a backfill day never waits for its delivery.
LOCAL_BACKFILL_SETTINGS = {
    "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
}


def backfill_command(
    start: date,
    end: date,
    dag_id: str = DAG_ID,
    max_active_runs: int = 1,
    reprocess_behavior: str = "completed",
    conf: dict | None = None,
) -> list[str]:
    """The `airflow backfill create` arguments the README documents."""
    return [
        "backfill",
        "create",
        "--dag-id",
        dag_id,
        "--from-date",
        start.isoformat(),
        "--to-date",
        end.isoformat(),
        "--reprocess-behavior",
        reprocess_behavior,
        "--max-active-runs",
        str(max_active_runs),
        "--dag-run-conf",
        json.dumps(DRY_RUN_CONF if conf is None else conf),
    ]


def create_backfill(start: date, end: date, **options) -> subprocess.CompletedProcess:
    """Run `airflow backfill create` in winback's environment; raises when it fails."""
    result = airflow_env.run_airflow(
        backfill_command(start, end, **options), check=False, capture_output=True
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"airflow backfill create failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@dataclass(frozen=True)
class Run:
    run_id: str
    logical_date: date
    state: str
    run_type: str
    start_date: datetime | None
    end_date: datetime | None

    @property
    def seconds(self) -> float | None:
        if self.start_date and self.end_date:
            return (self.end_date - self.start_date).total_seconds()
        return None


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def runs(airflow, start: date, end: date, dag_id: str = DAG_ID) -> list[Run]:
    """The DAG's runs with a logical date in [start, end], in logical-date order."""
    response = httpx.get(
        f"{airflow.url}/api/v2/dags/{dag_id}/dagRuns",
        params={
            "logical_date_gte": f"{start.isoformat()}T00:00:00Z",
            "logical_date_lte": f"{end.isoformat()}T23:59:59Z",
            "order_by": "logical_date",
            "limit": 1000,
        },
        headers={"Authorization": f"Bearer {airflow.api_token()}"},
        timeout=30,
    )
    response.raise_for_status()
    return [
        Run(
            run_id=item["dag_run_id"],
            logical_date=date.fromisoformat(item["logical_date"][:10]),
            state=item["state"],
            run_type=item["run_type"],
            start_date=_when(item.get("start_date")),
            end_date=_when(item.get("end_date")),
        )
        for item in response.json()["dag_runs"]
    ]


def wait_for_backfill(
    airflow, start: date, end: date, timeout: float, poll: float = 10.0, dag_id: str = DAG_ID
) -> list[Run]:
    """Block until every day in [start, end] has a finished run; TimeoutError after `timeout`.

    Raises early when an Airflow process died or a day failed.
    """
    expected = (end - start).days + 1
    deadline = time.monotonic() + timeout
    found: list[Run] = []
    while time.monotonic() < deadline:
        if dead := airflow.dead():
            name = next(iter(dead))
            raise RuntimeError(f"airflow {name} exited ({dead[name]}):\n{airflow.log_tail(name)}")
        try:
            found = runs(airflow, start, end, dag_id)
        except httpx.TransportError:
            # A busy api-server answers late; the next poll asks again.
            time.sleep(poll)
            continue
        if len(found) >= expected and all(r.state in FINISHED for r in found):
            return found
        if failed := [r for r in found if r.state == "failed"]:
            # Later days wait on this one (depends_on_past): they would never finish.
            raise RuntimeError(
                f"backfill day {failed[0].logical_date} failed; later days wait on it "
                f"({', '.join(f'{r.logical_date} {r.state}' for r in found)})"
            )
        time.sleep(poll)
    states = ", ".join(f"{r.logical_date} {r.state}" for r in found) or "no runs"
    raise TimeoutError(
        f"backfill {start}..{end} not finished after {timeout:.0f}s ({states}); "
        f"scheduler log {airflow.log_path('scheduler')}:\n{airflow.log_tail('scheduler')}"
    )


def xcom(airflow, run_id: str, task_id: str, dag_id: str = DAG_ID):
    """A task's return value (its `return_value` XCom) through the REST API."""
    response = httpx.get(
        f"{airflow.url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        "/xcomEntries/return_value",
        params={"deserialize": True},
        headers={"Authorization": f"Bearer {airflow.api_token()}"},
        timeout=30,
    )
    response.raise_for_status()
    value = response.json()["value"]
    return json.loads(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class DayTimings:
    """Where one run's wall-clock went, from its task instances.

    `busy_seconds`: some task was running; `idle_seconds`: the run was open and no task
    ran (the scheduler deciding, a task waiting for a slot or a process); `queued_seconds`:
    summed from each task being queued to its start; `task_seconds`: summed task durations
    (each includes its process start-up and the DAG file's parse).
    """

    run_id: str
    tasks: int
    wall_seconds: float
    busy_seconds: float
    idle_seconds: float
    queued_seconds: float
    task_seconds: float
    slowest: tuple[tuple[str, float], ...]


def task_instances(airflow, run_id: str, dag_id: str = DAG_ID) -> list[dict]:
    """The run's task instances through the REST API, as Airflow returns them."""
    response = httpx.get(
        f"{airflow.url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
        params={"limit": 1000},
        headers={"Authorization": f"Bearer {airflow.api_token()}"},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()["task_instances"]


def day_timings(airflow, run: Run, dag_id: str = DAG_ID) -> DayTimings:
    """Split a finished run's wall-clock into task time and time no task ran."""
    return timings_of(run, task_instances(airflow, run.run_id, dag_id))


def timings_of(run: Run, instances: list[dict]) -> DayTimings:
    """`day_timings` from the run's task instances (REST API fields)."""
    spans, queued, durations = [], 0.0, []
    for ti in instances:
        start, end = _when(ti.get("start_date")), _when(ti.get("end_date"))
        if not (start and end):
            continue
        spans.append((start, end))
        durations.append((ti["task_id"], (end - start).total_seconds()))
        if ti.get("queued_when"):
            queued += max(0.0, (start - _when(ti["queued_when"])).total_seconds())
    busy, covered_until = 0.0, None
    for start, end in sorted(spans):
        if covered_until is not None and start < covered_until:
            start = covered_until
        if end > start:
            busy += (end - start).total_seconds()
        covered_until = max(covered_until or end, end)
    wall = run.seconds or 0.0
    return DayTimings(
        run_id=run.run_id,
        tasks=len(spans),
        wall_seconds=round(wall, 1),
        busy_seconds=round(busy, 1),
        idle_seconds=round(max(0.0, wall - busy), 1),
        queued_seconds=round(queued, 1),
        task_seconds=round(sum(seconds for _, seconds in durations), 1),
        slowest=tuple(sorted(durations, key=lambda item: -item[1])[:5]),
    )
