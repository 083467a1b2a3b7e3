"""The Airflow UI for real: `make airflow`'s processes, a login, and winback_daily's last run.

`winback.local.airflow_ui.start_local_airflow` starts the api-server, scheduler and
dag-processor on the metadata database the `daily_dag_run` fixture ran winback_daily in.
Headless Chromium (Debian's `chromium`, driven by Playwright without Playwright's own
browser build) signs in as `admin`, opens the DAG list, the DAG and its Runs tab, and
saves a screenshot to `.winback/reports/airflow-ui.png`.

The test's scheduler creates no runs (`use_job_schedule=False`): it shares the metadata
database with `make airflow` and `make demo`, and must not start a day of its own.
Quick tests of the login, port and health rules (no Airflow, no browser) close the file.
"""

from __future__ import annotations

import os
import socket
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import using_database

from winback import config
from winback.local import airflow_ui
from winback.local.airflow_ui import start_local_airflow

CHROMIUM = Path(os.environ.get("WINBACK_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = config.REPORTS_DIR / "airflow-ui.png"
UI_TIMEOUT_MS = 30_000


@pytest.fixture
def browser_driver():
    """Playwright's sync API and the system Chromium it drives, or a skip saying what's missing."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the `playwright` package drives the browser"
    )
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: `make browser` installs Debian's chromium")
    return sync_api


@pytest.fixture
def local_airflow(daily_dag_run, tmp_path):
    with using_database(daily_dag_run.url):
        airflow = start_local_airflow(
            0,
            log_dir=tmp_path / "airflow-logs",
            extra_env={"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"},
        )
    with airflow:
        yield airflow


def last_run(airflow, day) -> dict:
    """winback_daily's newest run of the fixture's day, from the REST API."""
    response = httpx.get(
        f"{airflow.url}/api/v2/dags/winback_daily/dagRuns",
        params={"order_by": "-run_after", "limit": 100},
        headers={"Authorization": f"Bearer {airflow.api_token()}"},
        timeout=30,
    )
    response.raise_for_status()
    runs = [
        run
        for run in response.json()["dag_runs"]
        if (run.get("logical_date") or "").startswith(day.isoformat())
    ]
    assert runs, f"the API lists no winback_daily run for {day}: {response.json()}"
    return runs[0]


@pytest.mark.integration
@pytest.mark.slow
def test_the_ui_shows_winback_daily_and_its_last_run(
    daily_dag_run, browser_driver, local_airflow, tmp_path
):
    sync_api = browser_driver
    expect = sync_api.expect
    run = last_run(local_airflow, daily_dag_run.day)
    assert run["state"] == "success", run
    run_id = run["dag_run_id"]
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    logs = local_airflow.log_dir

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 900},
        )
        page = browser.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            # Any page sends a signed-out visitor to SimpleAuthManager's login.
            page.goto(f"{local_airflow.url}/dags")
            page.wait_for_url("**/auth/login**")
            page.get_by_label("Username").fill(local_airflow.login.username)
            page.get_by_label("Password").fill(local_airflow.login.password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url("**/dags")

            dag_link = page.get_by_role("link", name="winback_daily", exact=True)
            expect(dag_link).to_be_visible()
            dag_link.click()
            page.wait_for_url("**/dags/winback_daily")
            expect(page.get_by_role("heading", name="winback_daily")).to_be_visible()

            page.get_by_role("link", name="Runs", exact=True).click()
            page.wait_for_url("**/dags/winback_daily/runs")
            row = page.get_by_role("row").filter(has_text=run_id)
            expect(row).to_be_visible()
            expect(row).to_contain_text("Success")
            page.screenshot(path=str(SCREENSHOT))
        except (AssertionError, sync_api.Error) as error:
            page.screenshot(path=str(SCREENSHOT))
            raise AssertionError(
                f"the Airflow UI does not show winback_daily's run {run_id}: {error}\n"
                f"screenshot: {SCREENSHOT}\nAirflow logs: {logs}"
            ) from error
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000, f"blank screenshot? {SCREENSHOT}"


# --------------------------------------------------------------------------- settings


def test_the_admin_password_is_generated_once_and_kept_private(tmp_path, monkeypatch):
    monkeypatch.delenv(airflow_ui.PASSWORD_ENV, raising=False)
    first = airflow_ui.admin_login(tmp_path)
    again = airflow_ui.admin_login(tmp_path)
    assert first.generated and not again.generated
    assert again.password == first.password and len(first.password) >= 16
    assert first.passwords_file == tmp_path / airflow_ui.GENERATED_PASSWORDS_FILE
    assert stat.S_IMODE(first.passwords_file.stat().st_mode) == 0o600
    assert first.password not in repr(first)


def test_the_admin_password_from_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.delenv(airflow_ui.PASSWORD_ENV, raising=False)
    generated = airflow_ui.admin_login(tmp_path)
    monkeypatch.setenv(airflow_ui.PASSWORD_ENV, "chosen-by-me")
    login = airflow_ui.admin_login(tmp_path)
    assert (login.password, login.generated) == ("chosen-by-me", False)
    assert login.passwords_file != generated.passwords_file
    # The generated password stays for when the variable is unset again.
    monkeypatch.delenv(airflow_ui.PASSWORD_ENV)
    assert airflow_ui.admin_login(tmp_path).password == generated.password


def test_ports_come_from_the_argument_the_environment_or_any_free_one(monkeypatch):
    monkeypatch.setenv(airflow_ui.PORT_ENV, "0")
    assert airflow_ui.choose_port() > 0
    with socket.socket() as busy:
        busy.bind((airflow_ui.HOST, 0))
        busy.listen()
        taken = busy.getsockname()[1]
        monkeypatch.setenv(airflow_ui.PORT_ENV, str(taken))
        with pytest.raises(RuntimeError, match=f"port {taken} is in use"):
            airflow_ui.choose_port()
        assert airflow_ui.choose_port(0) != taken


def test_health_needs_fresh_heartbeats_from_each_component():
    started = datetime.now(UTC)
    fresh, stale = started.isoformat(), (started - timedelta(hours=1)).isoformat()

    def status(scheduler_beat):
        return {
            "metadatabase": {"status": "healthy"},
            "scheduler": {"status": "healthy", "latest_scheduler_heartbeat": scheduler_beat},
            "dag_processor": {"status": "healthy", "latest_dag_processor_heartbeat": fresh},
        }

    components = ["api-server", "scheduler", "dag-processor"]
    assert airflow_ui._healthy(status(fresh), components, started)
    assert not airflow_ui._healthy(status(stale), components, started)
    assert not airflow_ui._healthy(status(None), components, started)


def test_the_local_airflow_creates_winback_dags_ready_to_run(session_database, monkeypatch):
    """A paused DAG leaves backfill runs queued forever (the scheduler-driven backfill test
    checks the DAG really is unpaused, and `make airflow`'s unpause step)."""
    from winback.local import airflow_env

    monkeypatch.delenv("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", raising=False)
    assert (
        airflow_env.airflow_environment()["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    )
    assert set(airflow_ui.WINBACK_DAGS) == {"winback_daily", "winback_campaign_report"}
