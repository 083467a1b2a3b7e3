"""The embedded PostgreSQL: idempotent start, restart after a stop, unprivileged account."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

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


def _server_binaries_or_skip() -> None:
    try:
        embedded_pg.pg_bin_dir()
    except embedded_pg.EmbeddedPostgresError:
        pytest.skip("no PostgreSQL server binaries on this machine")


@pytest.mark.integration  # starts a PostgreSQL cluster of its own
def test_a_clone_in_a_private_directory_starts_its_cluster(tmp_path_factory):
    """A checkout under a 0700 folder (/root, `mktemp -d`): as root the server account
    cannot enter it, so the data goes to a private folder the account owns; as an ordinary
    user the cluster lives in the checkout as usual. Either way `db-up` works."""
    _server_binaries_or_skip()
    private = tmp_path_factory.mktemp("private-home")
    private.chmod(0o700)
    clone = private / "winback"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(config.PROJECT_ROOT), str(clone)],
        check=True,
        capture_output=True,
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("WINBACK_") and key != "PGPASSWORD"
    }
    env["WINBACK_PROJECT_ROOT"] = str(clone)

    def winback(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            # -P: the code under test, not the clone's committed copy in the working folder
            [sys.executable, "-P", "-m", "winback.cli", *args],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    pg_root = clone / ".winback" / "pg"
    try:
        started = winback("db-up")
        assert started.returncode == 0, started.stderr[-3000:]
        url = winback("db-url").stdout.strip()
        with psycopg.connect(url) as conn:
            assert conn.execute("select current_database()").fetchone() == ("winback",)
        if os.geteuid() == 0:
            assert pg_root.is_symlink(), "the account cannot reach the clone: data moved out"
            data_home = pg_root.resolve()
            owner = pwd.getpwuid(data_home.stat().st_uid).pw_name
            assert owner in ("postgres", "nobody")
            assert data_home.stat().st_mode & 0o777 == 0o700, "the fallback folder is private"
            assert str(clone) not in data_home.name, "its name is random, not derived"
            assert data_home.parent == Path(embedded_pg.FALLBACK_PARENT)
        else:
            assert pg_root.is_dir() and not pg_root.is_symlink()
    finally:
        winback("db-stop")
        if pg_root.is_symlink():
            shutil.rmtree(pg_root.resolve(), ignore_errors=True)
