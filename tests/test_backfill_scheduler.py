"""A backfill of winback_daily through the real scheduler, the way a data engineer runs it.

The local Airflow (`start_local_airflow`: api-server, scheduler with the LocalExecutor,
dag-processor; no triggerer, which a backfill never needs, and the settings of
`backfill.LOCAL_BACKFILL_SETTINGS`) runs on a metadata database and an AIRFLOW_HOME of
this test's own, over a copy of the warehouse the `daily_dag_run` fixture built (a small
shop through a campaign window: its first day and its closing day ran). The backfill is
created with the README's command (`winback.local.backfill.backfill_command`) for the
three days ending on the window's closing day: the two days before it had no delivery,
the closing day's files were already loaded, so every day is rebuilt from the warehouse.

Checked: the DAG was created unpaused; every run succeeded, one at a time in date order;
each day was rebuilt from the warehouse and said so; nothing was sent; the lifecycle
history has each day; the window was measured again (`campaign_results`). The scheduler
creates no scheduled run (`use_job_schedule=False`), and every process is stopped.
Where each day's time went (`backfill.day_timings`) is printed (`pytest -s` shows it).
"""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import psycopg
import pytest
from conftest import create_database, using_database

from winback.ingest import day_source
from winback.local import airflow_ui, backfill

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.backfill_scheduler]

BACKFILL_DAYS = 3
# Three days of 70 tasks each, one task at a time: about 5.5 min a day on a quiet 2-core
# machine, 13.5 min at a load average of 4 to 7.
BACKFILL_TIMEOUT_SECONDS = 60 * 60


@pytest.fixture
def warehouse(daily_dag_run):
    """A copy of the fixture's warehouse, so the backfill never changes what others read."""
    return daily_dag_run.copy("backfill_scheduler")


@pytest.fixture
def local_airflow(warehouse, daily_dag_run, tmp_path, monkeypatch):
    """Airflow on its own metadata database and home, pointed at the copied warehouse."""
    metadata = create_database("backfill_airflow")
    monkeypatch.setenv(
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        metadata.replace("postgresql://", "postgresql+psycopg2://", 1),
    )
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("WINBACK_LANDING_DIR", str(daily_dag_run.landing))
    monkeypatch.delenv("WINBACK_SEND_MODE", raising=False)
    with using_database(warehouse):
        airflow = airflow_ui.start_local_airflow(
            0,
            log_dir=tmp_path / "airflow-logs",
            triggerer=False,
            extra_env=backfill.LOCAL_BACKFILL_SETTINGS,
        )
        with airflow:
            yield airflow
    assert not any(p.poll() is None for p in airflow.processes.values()), "a process outlived"


def dag_is_paused(airflow, dag_id: str, timeout: float = 180) -> bool:
    """Whether the DAG is paused, once the dag-processor has parsed it."""
    headers = {"Authorization": f"Bearer {airflow.api_token()}"}
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{airflow.url}/api/v2/dags/{dag_id}", headers=headers, timeout=30)
        if response.status_code == 200:
            return response.json()["is_paused"]
        assert time.monotonic() < deadline, f"{dag_id} never parsed"
        time.sleep(2)


def test_a_backfill_runs_its_days_in_order_through_the_scheduler(
    daily_dag_run, warehouse, local_airflow
):
    end = daily_dag_run.day
    start = end - timedelta(days=BACKFILL_DAYS - 1)
    window = daily_dag_run.window
    # Ready to run without a manual step: created unpaused, and `make airflow`'s unpause
    # (for an older metadata database) finds both DAGs.
    assert dag_is_paused(local_airflow, "winback_daily") is False
    assert local_airflow.unpause() == {"winback_daily": False, "winback_campaign_report": False}
    with psycopg.connect(warehouse) as conn:
        conn.execute(
            "delete from winback.campaign_results where campaign_id = %s and window_start = %s",
            (window.campaign_id, window.window_start),
        )
        live_before = conn.execute(
            "select count(*) from winback.send_ledger where mode = 'live'"
        ).fetchone()[0]

    with using_database(warehouse):
        backfill.create_backfill(start, end)
        runs = backfill.wait_for_backfill(local_airflow, start, end, BACKFILL_TIMEOUT_SECONDS)

    for run in runs:  # where each day's time went, for whoever reads a slow run
        print(backfill.day_timings(local_airflow, run))
    days = [start + timedelta(days=n) for n in range(BACKFILL_DAYS)]
    assert [r.logical_date for r in runs] == days
    assert [(r.run_type, r.state) for r in runs] == [("backfill", "success")] * BACKFILL_DAYS, runs
    # One at a time, in date order: each day started after the day before had ended.
    for before, after in zip(runs, runs[1:], strict=False):
        assert after.start_date >= before.end_date, (before, after)

    for run in runs:
        loaded = backfill.xcom(local_airflow, run.run_id, "load_raw_files")
        assert loaded["source"] == day_source.REBUILT, loaded
        sync = backfill.xcom(local_airflow, run.run_id, "sync_outbox")
        assert sync["send_decision"]["mode"] == "dry_run", sync
    reasons = [backfill.xcom(local_airflow, r.run_id, "load_raw_files")["reason"] for r in runs]
    assert "nothing was delivered for that date" in reasons[0]
    assert "was already loaded" in reasons[-1]

    with psycopg.connect(warehouse) as conn:
        live_after = conn.execute(
            "select count(*) from winback.send_ledger where mode = 'live'"
        ).fetchone()[0]
        history = conn.execute(
            "select as_of_date, count(*) from marts.customer_lifecycle_by_day"
            " where as_of_date between %s and %s group by 1 order by 1",
            (start, end),
        ).fetchall()
        results = conn.execute(
            "select count(*) from winback.campaign_results"
            " where campaign_id = %s and window_start = %s and window_end = %s",
            (window.campaign_id, window.window_start, window.window_end),
        ).fetchone()[0]
        holder = conn.execute("select count(*) from winback.warehouse_claim").fetchone()[0]
    assert live_after == live_before, "a backfill sent live"
    assert [day for day, count in history if count > 0] == days
    assert results > 0, "the window closing inside the backfill was not measured"
    assert holder == 0, "the last day gave the warehouse back"
