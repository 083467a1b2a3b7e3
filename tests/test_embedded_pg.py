"""The embedded PostgreSQL: idempotent start, restart after a stop, unprivileged account."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

import psycopg
import pytest

from winback import config
from winback.local import embedded_pg


@pytest.fixture
def cluster(session_database):
    if os.environ.get("WINBACK_TESTS_ON_EMBEDDED_SERVER") != "1":
        pytest.skip("WINBACK_DATABASE_URL points at the user's server; no embedded cluster")
    return embedded_pg.ensure_running()


def test_ensure_running_is_idempotent(cluster):
    again = embedded_pg.ensure_running()
    assert again.url() == cluster.url()
    assert cluster.url().startswith("postgresql://winback@127.0.0.1:")


def test_a_stopped_cluster_is_restarted(cluster):
    assert embedded_pg.stop()
    assert not embedded_pg.is_running(cluster)
    restarted = embedded_pg.ensure_running()
    assert restarted.url() == cluster.url(), "a restart keeps the port, so URLs stay valid"
    with psycopg.connect(restarted.url()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_both_databases_exist(cluster):
    with psycopg.connect(cluster.url("postgres")) as conn:
        names = {r[0] for r in conn.execute("select datname from pg_database")}
    assert {config.WAREHOUSE_DB_NAME, config.AIRFLOW_DB_NAME} <= names


def test_listens_on_loopback_only(cluster):
    with psycopg.connect(cluster.url()) as conn:
        assert conn.execute("show listen_addresses").fetchone() == ("127.0.0.1",)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs an unprivileged server account")
def test_the_server_does_not_run_as_root(cluster):
    owner = (cluster.data_dir / "PG_VERSION").stat().st_uid
    assert owner != 0
    assert pwd.getpwuid(owner).pw_name in ("postgres", "nobody")


def test_cli_prints_the_url(session_database):
    result = subprocess.run(
        [sys.executable, "-m", "winback.cli", "db-url"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().startswith("postgresql://")


def test_the_traversal_check_follows_permission_bits(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    inner = private / "project"
    inner.mkdir()
    nobody = pwd.getpwnam("nobody")
    assert not embedded_pg._can_traverse(inner, nobody)
    private.chmod(0o755)
    assert embedded_pg._can_traverse(inner, nobody) == embedded_pg._can_traverse(tmp_path, nobody)


def test_new_databases_sort_text_in_byte_order(cluster):
    """The per-customer models sort millions of text ids; "C" takes PostgreSQL's fast path."""
    name = "winback_collation_check"
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(f"drop database if exists {name}")
        conn.execute(embedded_pg.create_database_statement(name))
        try:
            collation = conn.execute(
                "select datcollate from pg_database where datname = %s", (name,)
            ).fetchone()
            with psycopg.connect(cluster.url(name)) as db:
                ordered = db.execute(
                    "select array_agg(v order by v) from unnest(array['b', 'B', 'a', 'é']) v"
                ).fetchone()[0]
        finally:
            conn.execute(f"drop database {name}")
    assert collation == (embedded_pg.COLLATION,)
    assert ordered == ["B", "a", "b", "é"]
