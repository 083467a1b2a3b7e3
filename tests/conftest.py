"""Test session set-up: a throwaway warehouse database on the real PostgreSQL server.

The server is the user's (`WINBACK_DATABASE_URL`) or the embedded cluster, started on
demand. Each test session gets its own database, so tests never touch the demo warehouse
and concurrent sessions never see each other's tables; it is dropped at the end.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import psycopg
import pytest

from winback import config as winback_config
from winback.warehouse import db

_SESSION_DB = f"winback_test_{os.getpid()}"
_server_url: str | None = None
EMBEDDED_SERVER_FLAG = "WINBACK_TESTS_ON_EMBEDDED_SERVER"


def pytest_configure(config: pytest.Config) -> None:
    global _server_url
    if winback_config.configured_database_url() is None:
        # Remembered before the variable below is set, for the embedded-cluster tests.
        os.environ[EMBEDDED_SERVER_FLAG] = "1"
    _server_url = db.database_url()
    admin = db.with_database(_server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{_SESSION_DB}" with (force)')
        conn.execute(f'create database "{_SESSION_DB}"')
    os.environ[winback_config.DATABASE_URL_ENV] = db.with_database(_server_url, _SESSION_DB)
    db.database_url.cache_clear()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server_url is None:
        return
    admin = db.with_database(_server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        names = conn.execute(
            "select datname from pg_database where datname like %s", (f"{_SESSION_DB}%",)
        ).fetchall()
        for (name,) in names:
            conn.execute(f'drop database if exists "{name}" with (force)')


def create_database(suffix: str) -> str:
    """A fresh database of this session (dropped at the end); returns its URL."""
    name = f"{_SESSION_DB}_{suffix}"
    admin = db.with_database(_server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    return db.with_database(_server_url, name)


@contextmanager
def using_database(url: str):
    """Point winback (and the dbt/Airflow processes it starts) at another database."""
    saved = os.environ[winback_config.DATABASE_URL_ENV]
    os.environ[winback_config.DATABASE_URL_ENV] = url
    db.database_url.cache_clear()
    try:
        yield url
    finally:
        os.environ[winback_config.DATABASE_URL_ENV] = saved
        db.database_url.cache_clear()


@pytest.fixture
def conn():
    """A connection to the session's warehouse database."""
    with db.connect() as connection:
        yield connection


@dataclass
class DailyDagRun:
    """A finished `airflow dags test winback_daily` on its own warehouse database."""

    day: date
    landing: Path
    log_path: Path
    url: str
    window: object  # winback.measurement.windows.CampaignWindow closing on `day`

    def run_again(self, log_path: Path) -> subprocess.CompletedProcess:
        with using_database(self.url):
            return run_daily_dag(self.landing, self.day, log_path)

    def connect(self):
        return psycopg.connect(self.url)


def run_daily_dag(landing: Path, day: date, log_path: Path) -> subprocess.CompletedProcess:
    from winback.local import airflow_env

    env = airflow_env.airflow_environment()
    env["WINBACK_LANDING_DIR"] = str(landing)
    command = [str(airflow_env.airflow_executable()), "dags", "test", "winback_daily"]
    with open(log_path, "w") as handle:
        return subprocess.run(
            [*command, day.isoformat()],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=1800,
        )


@pytest.fixture(scope="session")
def daily_dag_run(tmp_path_factory) -> DailyDagRun:
    """`airflow dags test winback_daily` over a campaign window of a small, dirty shop.

    As in the demo: the shop up to the start of the window that closes on `day`, a run for
    that day, the simulator's responses of that day's audience, the rest of the shop and
    a run for `day`, which measures the window.
    """
    from winback.campaigns import campaign_files as campaigns
    from winback.local import airflow_env, dbt_runner
    from winback.measurement import windows as measurement
    from winback.simulation import demo, simulator

    day = date(2026, 11, 20)
    landing = tmp_path_factory.mktemp("landing")
    settings = simulator.SimulationConfig(customers=1500, seed=7, as_of=day, dirty_rate=0.01)
    windows = measurement.campaign_windows_closing_on(campaigns.load_campaigns(), day)
    # The shipped campaigns share a window closing on `day`; we_miss_you has the cohort
    # big enough to measure at this size.
    window = next((w for w in windows if w.campaign_id == "we_miss_you"), None)
    assert window, f"we_miss_you should have a window closing on {day}"
    logs = tmp_path_factory.mktemp("logs")

    def run_daily(run_day: date) -> bool:
        log_path = logs / f"winback_daily_{run_day}.log"
        result = run_daily_dag(landing, run_day, log_path)
        text = log_path.read_text(errors="replace")
        assert result.returncode == 0, text[-6000:]
        assert "Marking task as FAILED" not in text, text[-6000:]
        return True

    with using_database(create_database("daily_dag")) as url:
        dbt_runner.write_manifest()
        airflow_env.migrate_metadata_db()
        assert demo.play_campaign_window(
            settings, window, landing, run_daily, lambda: psycopg.connect(url)
        )
    log_path = logs / f"winback_daily_{day}.log"
    return DailyDagRun(day, landing, log_path, url, window)
