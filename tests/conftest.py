"""Test session set-up: a throwaway warehouse database on the real PostgreSQL server,
created only for the tests that need it.

The server is the user's (`WINBACK_DATABASE_URL`) or the embedded cluster, started on
demand. A test that needs the warehouse asks for the `session_database` fixture (directly,
or through `conn` or another fixture that does): the first one creates this session's own
database, so tests never touch the demo warehouse and concurrent sessions never see each
other's tables; it is dropped at the end. Every such test is marked `integration` at
collection, so `pytest -m "not integration"` runs the rest without starting PostgreSQL.
A test that reaches the warehouse without asking gets a clear error, not the demo's data.
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
_users_database_url: str | None = None
EMBEDDED_SERVER_FLAG = "WINBACK_TESTS_ON_EMBEDDED_SERVER"
# Where winback's processes look until a test asks for the database: nothing listens on
# port 9 of the loopback, so a stray connection fails at once instead of reaching the
# demo warehouse.
_NOT_REQUESTED_URL = "postgresql://no-database-requested@127.0.0.1:9/ask_for_session_database"
_find_database_url = db.database_url
# The test being set up, run or torn down: the database refuses a test not marked integration.
_current_test: pytest.Item | None = None


def _unrequested_database_url() -> str:
    if _server_url is None:
        raise RuntimeError(
            "this test reaches the warehouse without asking for it: request the "
            "`session_database` fixture (or `conn`), which also marks it integration"
        )
    return _find_database_url()


_unrequested_database_url.cache_clear = _find_database_url.cache_clear  # type: ignore[attr-defined]


def pytest_configure(config: pytest.Config) -> None:
    global _users_database_url
    _users_database_url = winback_config.configured_database_url()
    os.environ[winback_config.DATABASE_URL_ENV] = _NOT_REQUESTED_URL
    db.database_url = _unrequested_database_url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses the warehouse, however indirectly, is an integration test."""
    for item in items:
        if "session_database" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    global _current_test
    _current_test = item


def _start_session_database() -> str:
    """This session's database (created on first use) on the user's or the embedded server.

    Refused to a test not marked `integration`: a fixture that creates a database without
    asking for `session_database` would otherwise start PostgreSQL in the quick loop.
    """
    global _server_url
    if _current_test is not None and _current_test.get_closest_marker("integration") is None:
        raise RuntimeError(
            f"{_current_test.nodeid} creates a database without asking for it: the fixture "
            "that calls create_database must request `session_database`, which also marks "
            "its tests integration"
        )
    if _server_url is None:
        if _users_database_url is None:
            # The embedded-cluster tests run only when no server of the user's is in use.
            os.environ[EMBEDDED_SERVER_FLAG] = "1"
            os.environ.pop(winback_config.DATABASE_URL_ENV)
        else:
            os.environ[winback_config.DATABASE_URL_ENV] = _users_database_url
        _find_database_url.cache_clear()
        server_url = _find_database_url()
        admin = db.with_database(server_url, "postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{_SESSION_DB}" with (force)')
            conn.execute(f'create database "{_SESSION_DB}"')
        os.environ[winback_config.DATABASE_URL_ENV] = db.with_database(server_url, _SESSION_DB)
        _find_database_url.cache_clear()
        _server_url = server_url
    return os.environ[winback_config.DATABASE_URL_ENV]


@pytest.fixture(scope="session")
def session_database() -> str:
    """The URL of this session's own warehouse database, created on first use."""
    return _start_session_database()


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
    """A fresh database of this session (dropped at the end); returns its URL.

    Call it from a fixture that asks for `session_database`, so its tests are marked.
    """
    _start_session_database()
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
def conn(session_database):
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

    def copy(self, suffix: str) -> str:
        """A copy of this warehouse (a database of the session), so a test that changes
        it never changes what the other tests read; returns its URL."""
        url = create_database(suffix)
        name, source = db.database_name(url), db.database_name(self.url)
        with psycopg.connect(db.with_database(url, "postgres"), autocommit=True) as conn:
            conn.execute(f'drop database "{name}"')
            conn.execute(f'create database "{name}" template "{source}"')
        return url


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
def daily_dag_run(session_database, tmp_path_factory) -> DailyDagRun:
    """`airflow dags test winback_daily` over a campaign window of a small, dirty shop.

    As in the demo: the shop up to the start of the window that closes on `day`, a run for
    that day, the simulator's responses of that day's audience, the rest of the shop and
    a run for `day`, which measures the window.
    """
    from winback.campaigns import campaign_files as campaigns
    from winback.local import airflow_env, airflow_session, dbt_runner
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

    with using_database(create_database("daily_dag")) as url:
        dbt_runner.write_manifest()
        airflow_env.migrate_metadata_db()
        # Both days in one Airflow session, as `make demo` runs them; the rerun in
        # test_end_to_end is a cold `airflow dags test` of its own.
        session = airflow_session.AirflowSession({"WINBACK_LANDING_DIR": str(landing)})

        def run_daily(run_day: date) -> bool:
            log_path = logs / f"winback_daily_{run_day}.log"
            with open(log_path, "w") as handle:
                code = session.run(
                    ["dags", "test", "winback_daily", run_day.isoformat()], handle.write
                )
            text = log_path.read_text(errors="replace")
            assert code == 0, text[-6000:]
            assert "Marking task as FAILED" not in text, text[-6000:]
            return True

        with session:
            played = demo.play_campaign_window(
                settings, window, landing, run_daily, lambda: psycopg.connect(url)
            )
        assert played is not None, "a day of the campaign window failed"
    log_path = logs / f"winback_daily_{day}.log"
    return DailyDagRun(day, landing, log_path, url, window)
