"""Days in order, one at a time (`winback.orchestration.run_order`), on the real PostgreSQL.

What Airflow knows (the previous run, a run's state) is given as plain values, the way
winback_daily's first task passes them; the claim itself lives in the warehouse. The last
tests run two overlapping "runs" through `winback.pipeline` and show that only the one
holding the warehouse advances journeys.
"""

from __future__ import annotations

import shutil
import threading
from datetime import date, timedelta

import pytest
from test_audiences import Shop

from winback import config, pipeline
from winback.campaigns import journeys
from winback.orchestration import run_order
from winback.orchestration.run_order import PreviousRun, RunOrderError
from winback.warehouse import db

DAY = date(2026, 10, 9)


def drop_claims() -> None:
    with db.connect() as conn:
        conn.execute("drop table if exists winback.warehouse_claim, winback.daily_runs")


@pytest.fixture
def fresh(conn):
    """No claim before the test, and none left after it for the session's other tests."""
    drop_claims()
    yield conn
    conn.rollback()
    drop_claims()


def states(**by_run_id):
    return lambda run_id: by_run_id.get(run_id)


def test_one_run_holds_the_warehouse_and_the_next_waits_until_it_is_given_back(fresh):
    assert run_order.claim(fresh, DAY, "backfill__09", "backfill")
    # The same run asking again (a reschedule, a retry) still holds it.
    assert run_order.claim(fresh, DAY, "backfill__09", "backfill")
    scheduled = states(backfill__09="running")
    assert not run_order.claim(
        fresh, date(2026, 11, 21), "scheduled__21", "scheduled", None, scheduled
    )
    assert run_order.current_holder(fresh).run_id == "backfill__09"
    assert run_order.release(fresh, "backfill__09")
    assert run_order.claim(fresh, date(2026, 11, 21), "scheduled__21", "scheduled", None, scheduled)
    finished = fresh.execute(
        "select run_id, finished_at is not null from winback.daily_runs order by run_id"
    ).fetchall()
    assert finished == [("backfill__09", True), ("scheduled__21", False)]


def test_a_day_that_failed_holding_the_warehouse_refuses_every_later_run(fresh):
    assert run_order.claim(fresh, DAY, "backfill__09", "backfill")
    with pytest.raises(
        RunOrderError, match=r"failed while holding the warehouse.*Rerun day 2026-10-09"
    ):
        run_order.claim(
            fresh,
            DAY + timedelta(days=1),
            "manual__10",
            "manual",
            None,
            states(backfill__09="failed"),
        )
    # Its own rerun (a cleared run keeps its run id) takes the claim back and finishes.
    assert run_order.claim(fresh, DAY, "backfill__09", "backfill", None, states())
    assert run_order.release(fresh, "backfill__09")


def test_a_claim_left_by_a_run_marked_successful_or_deleted_is_taken_over(fresh):
    assert run_order.claim(fresh, DAY, "manual__09", "manual")
    assert run_order.claim(fresh, DAY, "manual__10", "manual", None, states(manual__09="success"))
    assert run_order.claim(fresh, DAY, "manual__11", "manual", None, states())  # gone from Airflow
    assert run_order.current_holder(fresh).run_id == "manual__11"


def test_scheduled_and_backfill_days_wait_for_the_day_before_and_refuse_after_it_failed(fresh):
    unfinished = PreviousRun("backfill__09", DAY, "queued")
    failed = PreviousRun("backfill__09", DAY, "failed")
    succeeded = PreviousRun("backfill__09", DAY, "success")
    later = DAY + timedelta(days=1)
    assert not run_order.claim(fresh, later, "backfill__10", "backfill", unfinished)
    assert run_order.current_holder(fresh) is None, "a waiting run holds nothing"
    with pytest.raises(RunOrderError, match=r"the day before it, 2026-10-09 .* failed"):
        run_order.claim(fresh, later, "scheduled__10", "scheduled", failed)
    # A manual run is a deliberate act on one day: it does not look at the day before.
    assert run_order.claim(fresh, later, "manual__10", "manual", failed)
    assert run_order.release(fresh, "manual__10")
    assert run_order.claim(fresh, later, "backfill__10", "backfill", succeeded)


def test_two_runs_claiming_at_the_same_moment_get_one_claim(fresh):
    barrier = threading.Barrier(8)
    results: dict[str, bool] = {}

    def claim(run_id: str) -> None:
        with db.connect() as conn:
            barrier.wait()
            results[run_id] = run_order.claim(
                conn, DAY, run_id, "backfill", None, lambda _: "running"
            )

    threads = [threading.Thread(target=claim, args=(f"run_{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results.values()) == [False] * 7 + [True]
    with db.connect() as conn:
        winner = run_order.current_holder(conn).run_id
    assert results[winner]


# --------------------------------------------------------------------------- journeys


@pytest.fixture
def shop(fresh, tmp_path):
    shop = Shop(fresh)
    conn = fresh
    shop.add_many(30, prefix="quiet", rfm_segment="At risk")
    conn.commit()
    folder = tmp_path / "campaigns"
    folder.mkdir()
    shutil.copy(config.CAMPAIGNS_DIR / "we_miss_you.yaml", folder)
    shop.campaigns_dir = str(folder)
    return shop


def journey_days(conn) -> dict:
    """How many journeys were advanced through each day (as the engine reads it)."""
    advanced_through = journeys.advanced_through_sql("j").as_string(conn)
    rows = conn.execute(
        f"select {advanced_through}, count(*) from winback.journey_state j group by 1"
    ).fetchall()
    return dict(rows)


def test_two_overlapping_runs_cannot_both_advance_journeys(shop):
    """Run A (day D) and run B (day D+1) overlap: both start their first task at once.

    Only one gets the warehouse. The other, even if it went on to build audiences anyway
    (a run without the DAG's first task, a process started by hand), is refused before
    it reads or writes a journey; the holder advances every journey for its own day.
    """
    conn = shop.conn
    runs = {"run_a": date(2026, 10, 8), "run_b": date(2026, 10, 9)}
    barrier = threading.Barrier(2)
    claimed: dict[str, bool] = {}

    def first_task(run_id: str) -> None:
        barrier.wait()
        claimed[run_id] = pipeline.wait_for_earlier_days(
            runs[run_id].isoformat(), run_id, "backfill", None, lambda _: "running"
        )

    threads = [threading.Thread(target=first_task, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(claimed.values()) == [False, True]
    holder = next(run_id for run_id, won in claimed.items() if won)
    other = next(run_id for run_id in runs if run_id != holder)

    with pytest.raises(RunOrderError, match=f"{holder} .* holds the warehouse"):
        pipeline.build_audiences(runs[other].isoformat(), shop.campaigns_dir, run_id=other)
    exists = conn.execute("select to_regclass('winback.journey_state') is not null").fetchone()
    assert not exists[0] or journey_days(conn) == {}, "the refused run touched no journey"
    # Neither may a process with no run id while a run holds the warehouse.
    with pytest.raises(RunOrderError, match="holds the warehouse"):
        pipeline.build_audiences(runs[other].isoformat(), shop.campaigns_dir)

    result = pipeline.build_audiences(runs[holder].isoformat(), shop.campaigns_dir, run_id=holder)
    entered = {c["campaign_id"]: c for c in result["campaigns"]}["we_miss_you"]
    assert entered["entered"] > 0
    conn.rollback()
    assert journey_days(conn) == {runs[holder]: entered["entered"]}

    # Once the holder finishes, the other run claims the warehouse and advances its day.
    pipeline.release_warehouse(runs[holder].isoformat(), holder)
    assert pipeline.wait_for_earlier_days(
        runs[other].isoformat(), other, "backfill", None, lambda _: "success"
    )
    pipeline.build_audiences(runs[other].isoformat(), shop.campaigns_dir, run_id=other)
    conn.rollback()
    # Whichever went first, every journey ends advanced through the later day, once.
    assert journey_days(conn) == {max(runs.values()): entered["entered"]}
