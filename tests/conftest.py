"""Test session set-up: a throwaway warehouse database on the real PostgreSQL server.

The server is the user's (`WINBACK_DATABASE_URL`) or the embedded cluster, started on
demand. Each test session gets its own database, so tests never touch the demo warehouse
and concurrent sessions never see each other's tables; it is dropped at the end.
"""

from __future__ import annotations

import os

import psycopg
import pytest

from winback import config as winback_config
from winback import db

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
    db.export_dbt_env()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server_url is None:
        return
    admin = db.with_database(_server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{_SESSION_DB}" with (force)')


@pytest.fixture
def conn():
    """A connection to the session's warehouse database."""
    with db.connect() as connection:
        yield connection
