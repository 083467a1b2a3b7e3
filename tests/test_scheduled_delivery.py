"""winback_daily through the real scheduler, meeting deliveries the way a shop makes them.

A local Airflow (api-server, scheduler with the LocalExecutor, dag-processor, triggerer)
on a metadata database of its own, so its scheduler can create runs without touching the
demo's. The deadline is short (`WINBACK_DELIVERY_WAIT=45s`, looked at every 2 s) and
failure alerts go to a webhook this test serves on 127.0.0.1.

1. Unpaused, winback_daily's scheduler creates the run for the last shop day that ended
   (logical date = that day). Its landing folder does not exist yet: `wait_for_delivery`
   defers. The files land, then, seconds later, the manifest; the run loads exactly that
   delivery and succeeds.
2. A run whose delivery's manifest does not match its files: `load_raw_files` refuses it
   in one line and nothing of that day is in the warehouse.
3. A run whose delivery never gets its manifest: at the deadline `wait_for_delivery` fails
   without a retry, and the alert names the delivery, the time waited and what was found.

The cases share one Airflow (max_active_runs=1 runs them one after the other) and run in
file order. Every process is stopped at the end; the whole module is bounded in time.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pendulum
import psycopg
import pytest
from conftest import create_database, using_database

from winback.ingest import manifest
from winback.local.airflow_ui import start_local_airflow
from winback.orchestration.schedule import ShopDayTimetable
from winback.simulation import simulator

DAG_ID = "winback_daily"
WAIT = "45s"
POKE = "2s"
MARKER_DELAY_SECONDS = 8

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class AlertInbox:
    """A webhook on 127.0.0.1 that keeps every alert posted to it."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                inbox.messages.append(body.get("text", ""))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Api:
    """The REST API of the test's Airflow."""

    def __init__(self, airflow) -> None:
        self.airflow = airflow
        self.token = airflow.api_token()

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = httpx.request(
            method,
            f"{self.airflow.url}/api/v2{path}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=90,  # one api-server worker on a busy two-core machine
            **kwargs,
        )
        response.raise_for_status()
        return response.json() if response.content else {}

    def runs(self) -> list[dict]:
        return self.call("GET", f"/dags/{DAG_ID}/dagRuns", params={"limit": 100})["dag_runs"]

    def run_for(self, day: date) -> dict | None:
        return next(
            (r for r in self.runs() if (r.get("logical_date") or "").startswith(day.isoformat())),
            None,
        )

    def task(self, run_id: str, task_id: str) -> dict:
        return self.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")

    def xcom(self, run_id: str, task_id: str):
        entry = self.call(
            "GET",
            f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
            params={"deserialize": True},
        )
        value = entry["value"]
        return json.loads(value) if isinstance(value, str) else value

    def trigger(self, day: date) -> dict:
        return self.call(
            "POST",
            f"/dags/{DAG_ID}/dagRuns",
            json={"logical_date": f"{day.isoformat()}T00:00:00Z", "conf": {}},
        )

    def unpause(self) -> None:
        """Let the scheduler run winback_daily (new DAGs start paused)."""
        self.call("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})

    def end_run(self, run_id: str) -> None:
        self.call("PATCH", f"/dags/{DAG_ID}/dagRuns/{run_id}", json={"state": "failed"})


def wait_for(what: str, check: Callable[[], object], timeout: float, airflow) -> object:
    """Poll `check` until it returns something truthy; fail with the scheduler's log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dead := airflow.dead():
            pytest.fail(f"Airflow died while waiting for {what}: {dead}")
        try:
            value = check()
        except httpx.TransportError:  # a slow answer is not an answer: ask again
            value = None
        except httpx.HTTPStatusError as error:  # a task instance not created yet
            if error.response.status_code != 404:
                raise
            value = None
        if value:
            return value
        time.sleep(2)
    pytest.fail(
        f"timed out after {timeout:.0f}s waiting for {what}\n"
        f"scheduler:\n{airflow.log_tail('scheduler')}\ntriggerer:\n{airflow.log_tail('triggerer')}"
    )


def task_log(home: Path, run_id: str, task_id: str) -> str:
    folder = home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob("attempt=*")))


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory, session_database):
    """A running local Airflow with its own metadata database, warehouse and landing."""
    from winback.local import dbt_runner

    dbt_runner.write_manifest()
    root = tmp_path_factory.mktemp("scheduled")
    landing, home = root / "landing", root / "airflow-home"
    landing.mkdir()
    alerts = AlertInbox()
    metadata_url = create_database("sched_airflow").replace(
        "postgresql://", "postgresql+psycopg2://", 1
    )
    settings = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "WINBACK_LANDING_DIR": str(landing),
        "WINBACK_SHOP_TIMEZONE": "UTC",
        "WINBACK_DELIVERY_DELAY": "1h30m",
        "WINBACK_DELIVERY_WAIT": WAIT,
        "WINBACK_DELIVERY_POKE_INTERVAL": POKE,
        "WINBACK_ALERT_WEBHOOK_URL": alerts.url,
        "WINBACK_SEND_MODE": "dry_run",
    }
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        with using_database(create_database("sched")) as warehouse:
            airflow = start_local_airflow(0, log_dir=root / "process-logs")
            try:
                yield {
                    "airflow": airflow,
                    "api": Api(airflow),
                    "landing": landing,
                    "home": home,
                    "alerts": alerts,
                    "warehouse": warehouse,
                    # The day the scheduler runs first: the last one whose start time passed.
                    "day": ShopDayTimetable("UTC", timedelta(hours=1, minutes=30)).latest_day(
                        pendulum.now("UTC")
                    ),
                }
            finally:
                airflow.stop()
    finally:
        alerts.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def shop(day: date, customers: int = 1000) -> dict:
    settings = simulator.SimulationConfig(customers=customers, seed=5, as_of=day)
    return simulator.simulate_shop(settings)


def load_batches(url: str, day: date) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        exists = conn.execute("select to_regclass('raw.load_batches') is not null").fetchone()[0]
        if not exists:
            return {}
        rows = conn.execute(
            "select source_file, rows_read from raw.load_batches where load_date = %s", (day,)
        ).fetchall()
    return {Path(source).name: count for source, count in rows}


@pytest.mark.timeout(3600)
def test_a_scheduled_run_waits_for_its_delivery_then_loads_exactly_it(scheduled):
    api, airflow, day = scheduled["api"], scheduled["airflow"], scheduled["day"]
    folder = scheduled["landing"] / day.isoformat()
    assert not folder.exists()

    wait_for("winback_daily to be parsed", lambda: api.call("GET", f"/dags/{DAG_ID}"), 300, airflow)
    api.unpause()
    run = wait_for(f"the scheduled run for {day}", lambda: api.run_for(day), 300, airflow)
    assert run["run_type"] == "scheduled", run
    run_id = run["dag_run_id"]
    wait_for(
        "wait_for_delivery to defer",
        lambda: api.task(run_id, "wait_for_delivery")["state"] == "deferred",
        300,
        airflow,
    )

    # The shop's export: the files first, the marker a few seconds later.
    simulator.write_landing_files(shop(day), folder, manifest=False)
    time.sleep(MARKER_DELAY_SECONDS)
    assert api.task(run_id, "wait_for_delivery")["state"] == "deferred", "went on without a marker"
    written = manifest.write_manifest(folder, day)

    wait_for(
        f"the delivery of {day} to be loaded",
        lambda: api.task(run_id, "load_raw_files")["state"] == "success",
        900,
        airflow,
    )
    waited = api.xcom(run_id, "wait_for_delivery")
    assert waited["status"] == "complete"
    assert waited["waited_seconds"] >= MARKER_DELAY_SECONDS
    # Exactly that delivery: every file of the manifest, its row count, nothing else.
    assert load_batches(scheduled["warehouse"], day) == {f.name: f.rows for f in written.files}

    finished = wait_for(
        f"the run for {day} to finish",
        lambda: (r := api.run_for(day)) and r["state"] in ("success", "failed") and r,
        3000,  # some 70 tasks, each its own process; minutes on a quiet machine
        airflow,
    )
    failed = [
        t["task_id"]
        for t in api.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
        if t["state"] != "success"
    ]
    assert finished["state"] == "success", f"{finished}\nnot successful: {failed}"


@pytest.mark.timeout(900)
def test_a_delivery_that_does_not_match_its_manifest_loads_nothing(scheduled):
    api, airflow = scheduled["api"], scheduled["airflow"]
    day = scheduled["day"] - timedelta(days=1)
    folder = scheduled["landing"] / day.isoformat()
    simulator.write_landing_files(shop(day, customers=300), folder)
    path = folder / "customers.csv"
    data = bytearray(path.read_bytes())
    data[-2] = ord("7") if data[-2] != ord("7") else ord("6")  # same size, other bytes
    path.write_bytes(bytes(data))

    api.unpause()  # already, when the first case ran
    run_id = api.trigger(day)["dag_run_id"]
    try:
        wait_for(
            "load_raw_files to refuse the delivery",
            lambda: api.task(run_id, "load_raw_files")["state"] in ("up_for_retry", "failed"),
            600,
            airflow,
        )
        log = task_log(scheduled["home"], run_id, "load_raw_files")
        assert f"delivery {day} ({folder}) refused, nothing loaded" in log, log[-3000:]
        assert "customers.csv: SHA-256 differs from the manifest's" in log
        assert load_batches(scheduled["warehouse"], day) == {}
        with psycopg.connect(scheduled["warehouse"]) as conn:
            loaded = (
                conn.execute(
                    "select count(*) from raw.customers where _load_date = %s", (day,)
                ).fetchone()[0]
                if conn.execute("select to_regclass('raw.customers') is not null").fetchone()[0]
                else 0
            )
        assert loaded == 0
    finally:
        api.end_run(run_id)  # frees the one active-run slot instead of waiting out the retries


@pytest.mark.timeout(900)
def test_a_delivery_without_its_manifest_fails_at_the_deadline_with_an_alert(scheduled):
    api, airflow = scheduled["api"], scheduled["airflow"]
    day = scheduled["day"] - timedelta(days=2)
    folder = scheduled["landing"] / day.isoformat()
    frames = shop(day, customers=100)
    simulator.write_landing_files(
        {name: frames[name] for name in ("customers", "orders")}, folder, manifest=False
    )

    api.unpause()
    run_id = api.trigger(day)["dag_run_id"]
    failed = wait_for(
        "wait_for_delivery to fail at its deadline",
        lambda: (t := api.task(run_id, "wait_for_delivery"))["state"] == "failed" and t,
        600,
        airflow,
    )
    assert failed["try_number"] == 1, "a missed deadline is not retried"
    alert = wait_for(
        "the alert",
        lambda: next((m for m in scheduled["alerts"].messages if str(day) in m), None),
        60,
        airflow,
    )
    lines = alert.splitlines()
    assert lines[0] == f"winback: {DAG_ID}.wait_for_delivery failed for {day}", alert
    assert lines[1].startswith(
        f"Error: DeliveryMissing: delivery {day} not complete at its deadline: waited "
    ), alert
    assert re.search(r"waited (4[5-9]|5\d) s ", lines[1]), alert  # 45 s and a poll or so
    assert f"{folder} holds customers.csv, orders.csv" in lines[1], alert
    assert "no _manifest.json" in lines[1], alert
    assert "nothing was sent" in alert
    assert load_batches(scheduled["warehouse"], day) == {}
