"""Where a backfill day's time went (`winback.local.backfill.timings_of`), without Airflow.

The scheduler test and `bench/bench_backfill.py` read each run's task instances through
the REST API; these are hand-made in the same shape.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from winback.local import backfill

T0 = datetime(2026, 11, 21, 1, 30, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def task(task_id: str, queued: float, start: float, end: float | None) -> dict:
    return {
        "task_id": task_id,
        "queued_when": at(queued),
        "start_date": at(start),
        "end_date": at(end) if end is not None else None,
    }


def test_a_days_wall_clock_splits_into_task_time_and_time_no_task_ran():
    run = backfill.Run(
        "backfill__x", date(2026, 11, 20), "success", "backfill", T0, T0 + timedelta(seconds=100)
    )
    instances = [
        task("claim", 0, 1, 5),  # 1 s from the run's start to the first task
        task("load", 6, 8, 20),  # 3 s with no task running (5..8)
        task("dbt_a", 20, 21, 50),
        task("gate", 22, 30, 40),  # overlaps dbt_a: counted once in busy time
        task("sync", 50, 60, 90),  # 10 s idle (50..60), 10 s after the last task
        task("skipped", 0, 0, None),  # never ran to an end: not counted
    ]
    timings = backfill.timings_of(run, instances)
    assert timings.tasks == 5
    assert timings.wall_seconds == 100
    assert timings.busy_seconds == 4 + 12 + 29 + 30
    assert timings.idle_seconds == 100 - 75
    assert timings.queued_seconds == 1 + 2 + 1 + 8 + 10
    assert timings.task_seconds == 4 + 12 + 29 + 10 + 30
    assert timings.slowest[0] == ("sync", 30.0)
