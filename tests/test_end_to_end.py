"""End to end: `airflow dags test winback_daily` on a small simulated shop, run twice.

The run goes through Airflow, cosmos, dbt, lifetimes, great-expectations and the
warehouse for real (the `daily_dag_run` fixture in conftest.py runs it once per session).
The second run of the same day must change no outcome and send nothing new.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def counts(conn, day) -> dict:
    queries = {
        "raw_orders": "select count(*) from raw.orders",
        "quarantined": "select count(*) from raw.quarantine",
        "rfm": "select count(*) from marts.customer_rfm",
        "features": "select count(*) from marts.customer_features",
        "scores": "select count(*) from winback.customer_scores",
        "audience": f"select count(*) from winback.campaign_audiences where run_date = '{day}'",
        "outbox": "select count(*) from winback.outbox",
        "ledger": "select count(*) from winback.send_ledger",
    }
    return {name: conn.execute(query).fetchone()[0] for name, query in queries.items()}


def test_the_daily_dag_runs_end_to_end_and_a_rerun_sends_nothing(daily_dag_run, tmp_path):
    with daily_dag_run.connect() as conn:
        after_first = counts(conn, daily_dag_run.day)
        segments = conn.execute("select count(distinct rfm_segment) from marts.customer_rfm")
        assert segments.fetchone()[0] >= 5
        reconciled = conn.execute(
            "select bool_and(rows_read = rows_loaded + rows_quarantined) from raw.load_batches"
        ).fetchone()[0]
        task_runs = conn.execute(
            "select count(distinct task_id) from winback.task_runs where state = 'success'"
        ).fetchone()[0]
    assert reconciled
    assert after_first["quarantined"] > 0, "the dirty rows should have been quarantined"
    assert after_first["scores"] > 0 and after_first["features"] >= after_first["rfm"]
    assert after_first["audience"] > 0 and after_first["outbox"] > 0
    assert after_first["ledger"] == after_first["outbox"]
    assert task_runs >= 8, "the plugin's listener records every task run"

    second = daily_dag_run.run_again(tmp_path / "second.log")
    assert second.returncode == 0, (tmp_path / "second.log").read_text()[-6000:]
    with daily_dag_run.connect() as conn:
        after_second = counts(conn, daily_dag_run.day)
    assert after_second == after_first


def test_the_window_closing_on_the_run_date_is_measured_against_its_holdout(daily_dag_run):
    window = daily_dag_run.window
    with daily_dag_run.connect() as conn:
        rows = conn.execute(
            "select breakdown, breakdown_value, treatment_customers, holdout_customers,"
            " treatment_reactivated, holdout_reactivated"
            " from winback.campaign_results"
            " where campaign_id = %s and window_start = %s and window_end = %s",
            (window.campaign_id, window.window_start, window.window_end),
        ).fetchall()
        entered = conn.execute(
            "select assigned_group, count(*) from winback.campaign_audiences"
            " where campaign_id = %s and run_date = %s group by 1",
            (window.campaign_id, window.window_start),
        ).fetchall()
    by_breakdown = {(r[0], r[1]): r[2:] for r in rows}
    treated, held, treated_back, held_back = by_breakdown[("overall", "all")]
    # The cohort is everyone who entered on the window's first day, whatever their stage.
    assert 0 < treated == dict(entered)["treatment"]
    assert 0 < held == dict(entered)["holdout"]
    assert treated_back > 0, "the simulator's treatment customers came back"
    assert treated_back / treated > held_back / held
    assert ("channel", "email") in by_breakdown
