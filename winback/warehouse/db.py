"""Connections to the warehouse, wherever it is."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import psycopg
from psycopg.rows import tuple_row

from winback import config


@functools.cache
def database_url() -> str:
    """The warehouse URL: the user's `WINBACK_DATABASE_URL`, else the embedded cluster's.

    The embedded cluster is started (or restarted) on first use.
    """
    configured = config.configured_database_url()
    if configured:
        return _normalise_scheme(configured)
    from winback.local import embedded_pg

    return embedded_pg.ensure_running().url(config.WAREHOUSE_DB_NAME)


def airflow_database_url() -> str:
    """SQLAlchemy URL of Airflow's metadata database: a sibling database on the same server."""
    explicit = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    if explicit:
        return explicit
    url = with_database(database_url(), config.AIRFLOW_DB_NAME)
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def database_name(url: str) -> str:
    """The database a URL names: its path, never the text after its last "/" (the query's
    `passfile=` holds a path of its own). Empty when the URL names none."""
    return urlsplit(url).path.lstrip("/")


def ensure_airflow_database() -> None:
    from winback.local.embedded_pg import ensure_databases

    ensure_databases(with_database(database_url(), "postgres"), [config.AIRFLOW_DB_NAME])


def _normalise_scheme(url: str) -> str:
    for prefix in ("postgres://", "postgresql+psycopg://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def redacted(url: str) -> str:
    """The URL with its password hidden, safe for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def password_file(url: str) -> str | None:
    """The libpq password file a URL names (`?passfile=`, as the embedded cluster's do)."""
    found = parse_qs(urlsplit(url).query).get("passfile")
    return found[-1] if found else None


def dbt_env(url: str | None = None) -> dict[str, str]:
    """Environment variables read by `dbt_project/profiles/profiles.yml`.

    dbt takes no password file, so when the URL names one it is handed to libpq as
    PGPASSFILE, and the password itself stays out of the environment.
    """
    url = url or database_url()
    parts = urlsplit(url)
    env = {
        "WINBACK_PG_HOST": parts.hostname or "127.0.0.1",
        "WINBACK_PG_PORT": str(parts.port or 5432),
        "WINBACK_PG_USER": unquote(parts.username or "postgres"),
        "WINBACK_PG_PASSWORD": unquote(parts.password or ""),
        "WINBACK_PG_DBNAME": database_name(url) or config.WAREHOUSE_DB_NAME,
    }
    passfile = password_file(url)
    if passfile:
        env["PGPASSFILE"] = passfile
    return env


def export_dbt_env(url: str | None = None) -> None:
    """Put the dbt connection settings in this process's environment for dbt subprocesses."""
    os.environ.update(dbt_env(url))


def relation_exists(conn: psycopg.Connection, relation: str) -> bool:
    """Whether a table or view (`schema.name`) exists, whatever the connection's row factory."""
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute("select to_regclass(%s) is not null", (relation,)).fetchone()[0]


@contextmanager
def connect(autocommit: bool = False) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url(), autocommit=autocommit) as conn:
        yield conn
