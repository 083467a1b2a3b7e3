"""End to end: `airflow dags test winback_daily` on a small simulated shop, run twice.

The run goes through Airflow, cosmos, dbt, lifetimes, great-expectations and the
warehouse for real. The second run of the same day must change no outcome and send
nothing new.
"""

from __future__ import annotations

import subprocess
from datetime import date

import pytest

from winback import airflow_env, db, dbt_runner, simulator

pytestmark = pytest.mark.slow

DAY = date(2026, 11, 20)


def dags_test(landing, log_path) -> subprocess.CompletedProcess:
    env = airflow_env.airflow_environment()
    env["WINBACK_LANDING_DIR"] = str(landing)
    with open(log_path, "w") as handle:
        return subprocess.run(
            [
                str(airflow_env.airflow_executable()),
                "dags",
                "test",
                "winback_daily",
                DAY.isoformat(),
            ],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=1200,
        )


def counts(conn) -> dict:
    queries = {
        "raw_orders": "select count(*) from raw.orders",
        "quarantined": "select count(*) from raw.quarantine",
        "rfm": "select count(*) from marts.customer_rfm",
        "features": "select count(*) from marts.customer_features",
        "scores": "select count(*) from winback.customer_scores",
        "audience": f"select count(*) from winback.campaign_audiences where run_date = '{DAY}'",
        "outbox": "select count(*) from winback.outbox",
        "ledger": "select count(*) from winback.send_ledger",
    }
    return {name: conn.execute(query).fetchone()[0] for name, query in queries.items()}


@pytest.fixture(scope="module")
def simulated_landing(tmp_path_factory):
    landing = tmp_path_factory.mktemp("landing")
    shop = simulator.simulate_shop(
        simulator.SimulationConfig(customers=1500, seed=7, as_of=DAY, dirty_rate=0.01)
    )
    simulator.write_landing_files(shop, landing / DAY.isoformat())
    dbt_runner.write_manifest()
    airflow_env.migrate_metadata_db()
    return landing


def test_the_daily_dag_runs_end_to_end_and_a_rerun_sends_nothing(simulated_landing, tmp_path):
    first = dags_test(simulated_landing, tmp_path / "first.log")
    log_text = (tmp_path / "first.log").read_text(errors="replace")
    assert first.returncode == 0, log_text[-6000:]
    assert "Marking task as FAILED" not in log_text, log_text[-6000:]

    with db.connect() as conn:
        after_first = counts(conn)
        segments = conn.execute("select count(distinct rfm_segment) from marts.customer_rfm")
        assert segments.fetchone()[0] >= 5
        reconciled = conn.execute(
            "select bool_and(rows_read = rows_loaded + rows_quarantined) from raw.load_batches"
        ).fetchone()[0]
    assert reconciled
    assert after_first["quarantined"] > 0, "the dirty rows should have been quarantined"
    assert after_first["scores"] > 0 and after_first["features"] >= after_first["rfm"]
    assert after_first["audience"] > 0 and after_first["outbox"] > 0
    assert after_first["ledger"] == after_first["outbox"]

    second = dags_test(simulated_landing, tmp_path / "second.log")
    assert second.returncode == 0, (tmp_path / "second.log").read_text()[-6000:]
    with db.connect() as conn:
        after_second = counts(conn)
    assert after_second == after_first
