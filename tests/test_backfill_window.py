"""A 30-day backfill never sends and measures the windows that closed inside it (issue 20).

Stage by stage, the way winback_daily's tasks call `winback.pipeline` for a backfill
run, over a copy of the warehouse the `daily_dag_run` fixture built (a small shop through
a campaign window closing on its last day): for each of the 30 days ending on that day,
in date order, the run claims the warehouse, rebuilds the day from the warehouse (no new
files), builds the audiences and syncs the outbox asking for `live` sends, measures the
windows that closed that day and gives the warehouse back. dbt, scoring and the gates
run as on any day and decide neither sends nor measurement; they are left out so the
test costs seconds per day (`test_backfill_scheduler` runs the whole DAG through the
scheduler, over three days).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from conftest import using_database

from winback import pipeline
from winback.campaigns import campaign_files as campaigns
from winback.ingest import day_source
from winback.measurement import windows as measurement

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BACKFILL_DAYS = 30


def test_a_30_day_backfill_never_sends_and_measures_the_windows_that_closed_inside_it(
    daily_dag_run, monkeypatch
):
    warehouse = daily_dag_run.copy("backfill_window")
    end = daily_dag_run.day
    days = [end - timedelta(days=n) for n in reversed(range(BACKFILL_DAYS))]
    valid, _refused = campaigns.load_valid_campaigns()
    closing = {
        day: {
            (w.campaign_id, w.window_start, w.window_end)
            for w in measurement.campaign_windows_closing_on(valid, day)
        }
        for day in days
    }
    expected = set().union(*closing.values())
    assert daily_dag_run.window.campaign_id in {campaign for campaign, _, _ in expected}
    # The deployment asks for live sends: a backfill must not honour it.
    monkeypatch.setenv("WINBACK_SEND_MODE", "live")
    monkeypatch.setenv("WINBACK_LANDING_DIR", str(daily_dag_run.landing))
    with psycopg.connect(warehouse) as conn:
        # Measured again by the backfill, not left over from the fixture's closing day.
        conn.execute("delete from winback.campaign_results")
        live_before = conn.execute(
            "select count(*) from winback.send_ledger where mode = 'live'"
        ).fetchone()[0]
    started = datetime.now(UTC)

    measured_on = {}
    with using_database(warehouse):
        previous = None
        for day in days:
            ds, run_id = day.isoformat(), f"backfill__{day.isoformat()}"
            assert pipeline.wait_for_earlier_days(ds, run_id, "backfill", previous, None)
            loaded = pipeline.load_raw_files(ds, run_type="backfill", run_id=run_id)
            assert loaded["source"] == day_source.REBUILT, (day, loaded)
            pipeline.build_audiences(ds, mode="live", run_type="backfill", run_id=run_id)
            sync = pipeline.sync_outbox(ds, mode="live", run_type="backfill")
            assert sync["send_decision"]["mode"] == "dry_run", (day, sync)
            measured_on[day] = pipeline.measure_closed_windows(ds)["measured"]
            assert pipeline.release_warehouse(ds, run_id)["released"]
            previous = {"run_id": run_id, "logical_date": ds, "state": "success"}

    # Measured on the days their windows closed, and on no other day.
    assert [day for day, measured in measured_on.items() if measured] == [
        day for day in days if closing[day]
    ]
    with psycopg.connect(warehouse) as conn:
        results = set(
            conn.execute(
                "select campaign_id, window_start, window_end from winback.campaign_results"
                " where computed_at >= %s and breakdown = 'overall'",
                (started,),
            ).fetchall()
        )
        live_after = conn.execute(
            "select count(*) from winback.send_ledger where mode = 'live'"
        ).fetchone()[0]
        dry_run_days = conn.execute(
            "select count(distinct run_date) from winback.send_ledger"
            " where mode = 'dry_run' and run_date between %s and %s",
            (days[0], end),
        ).fetchone()[0]
        claims = conn.execute("select count(*) from winback.warehouse_claim").fetchone()[0]
    assert expected <= results, f"windows not measured: {expected - results}"
    assert live_after == live_before, "a backfill sent live"
    assert dry_run_days > 0, "the backfill's outbox was not recorded as a dry run"
    assert claims == 0, "the last day gave the warehouse back"
