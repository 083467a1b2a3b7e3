"""The embedded PostgreSQL: idempotent start, restart after a stop, unprivileged account."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from winback import config
from winback.local import dbt_runner, embedded_pg
from winback.warehouse import db


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


# --------------------------------------------------------------------------- locked down


def _winback_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`winback ARGS` in a fresh interpreter with exactly `env`."""
    return subprocess.run(
        [sys.executable, "-m", "winback.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _connect_without_the_password_file(cluster, **settings) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1",
        port=cluster.port(),
        user=embedded_pg.SUPERUSER,
        dbname="postgres",
        passfile=os.devnull,
        connect_timeout=10,
        **settings,
    )


def test_a_connection_without_the_password_is_refused(cluster):
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        _connect_without_the_password_file(cluster)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect_without_the_password_file(cluster, password="not-the-password")
    with psycopg.connect(cluster.url("postgres")) as conn:
        rules = conn.execute("select type, address, auth_method from pg_hba_file_rules").fetchall()
        stored = conn.execute(
            "select rolpassword from pg_authid where rolname = %s", (embedded_pg.SUPERUSER,)
        ).fetchone()[0]
        socket_dirs = conn.execute("show unix_socket_directories").fetchone()[0]
    assert rules == [("host", "127.0.0.1", "scram-sha-256")], "password logins on loopback only"
    assert stored.startswith("SCRAM-SHA-256$"), "the server keeps a verifier, not the password"
    assert socket_dirs == "", "no unix socket"


def test_the_url_names_the_password_file_and_never_the_password(cluster):
    password = embedded_pg._read_password()
    url = cluster.url()
    assert password and password not in url
    assert f"passfile={embedded_pg.password_file()}" in url
    env = db.dbt_env(url)
    assert env["PGPASSFILE"] == str(embedded_pg.password_file())
    assert password not in "".join(env.values()), "dbt reads it from the file, not the env"


def _mode(path: Path) -> int:
    return path.lstat().st_mode & 0o777


def test_local_state_is_private(cluster):
    state = config.STATE_DIR
    legacy = os.geteuid() == 0 and (state / "pg").is_dir() and not (state / "pg").is_symlink()
    assert _mode(state) == (0o711 if legacy else 0o700)
    assert _mode(embedded_pg.password_file()) == 0o600
    assert _mode(state / "pg.lock") == 0o600
    assert _mode(cluster.server_root) == 0o700
    assert _mode(cluster.data_dir) == 0o700
    for name in ("port", "server.log"):
        assert _mode(cluster.server_root / name) == 0o600, name
    profile = dbt_runner.write_local_profile(cluster.url())
    assert _mode(profile) == 0o600, "the plain-dbt profile holds the password"


def test_the_password_is_in_no_process_arguments_nor_the_server_log(cluster):
    password = embedded_pg._read_password()
    with psycopg.connect(cluster.url()) as conn:  # a backend of ours is among the processes
        conn.execute("select 1")
        seen = 0
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                assert password not in cmdline.read_bytes().decode(errors="replace")
                seen += 1
    assert seen > 1
    assert password not in (cluster.log_file.read_text(errors="replace"))


@pytest.fixture(params=["private", "in_the_checkout"])
def state_folder(request, tmp_path):
    """A `.winback/` of its own. `in_the_checkout`: as root, the layout an older winback
    made in a checkout the server account could reach, the cluster in `.winback/pg`
    itself (not moved out): it must keep working, with `.winback/` 0711."""
    if request.param == "private":
        yield tmp_path / "state"
        return
    account = embedded_pg._server_account()
    if account is None:
        pytest.skip("the layout only root made")
    base = Path(tempfile.mkdtemp(prefix="winback-test-", dir=embedded_pg.FALLBACK_PARENT))
    try:
        base.chmod(0o755)
        (base / "state" / "pg").mkdir(parents=True, mode=0o755)
        os.chown(base / "state" / "pg", account.pw_uid, account.pw_gid)
        yield base / "state"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.integration  # starts a PostgreSQL cluster of its own
def test_a_cluster_made_with_trust_is_given_the_password_on_its_next_start(state_folder):
    """An older checkout's cluster trusted every local connection: the next start gives
    the superuser a new password, replaces the login rules and says so, without the
    password showing in anything it prints or logs."""
    _server_binaries_or_skip()
    state = state_folder
    legacy = (state / "pg").is_dir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("WINBACK_") and key not in ("PGPASSWORD", "PGPASSFILE")
    }
    env["WINBACK_STATE_DIR"] = str(state)

    def winback(*args: str) -> subprocess.CompletedProcess:
        return _winback_cli(env, *args)

    pg_root = state / "pg"
    try:
        made = winback("db-url")
        assert made.returncode == 0, made.stderr[-3000:]
        url = made.stdout.strip()
        hba = pg_root.resolve() / "data" / "pg_hba.conf"
        # Make it what an older winback made: trust, a superuser without a password.
        with psycopg.connect(db.with_database(url, "postgres"), autocommit=True) as conn:
            conn.execute(f"alter role {embedded_pg.SUPERUSER} password null")
            hba.write_text("host all all 127.0.0.1/32 trust\n")
            conn.execute("select pg_reload_conf()")
        assert winback("db-stop").returncode == 0
        (state / "pgpass").unlink()

        upgraded = winback("db-url")
        assert upgraded.returncode == 0, upgraded.stderr[-3000:]
        assert "now takes password logins only" in upgraded.stderr
        assert upgraded.stdout.strip() == url, "same cluster, same port, same URL"
        assert hba.read_text() == embedded_pg.HBA_RULES
        password = (state / "pgpass").read_text().strip().rsplit(":", 1)[-1]
        assert _mode(state / "pgpass") == 0o600
        assert _mode(state) == (0o711 if legacy else 0o700)
        # As root the data moves out of a private `.winback/`; otherwise it stays in it.
        assert pg_root.is_symlink() == (os.geteuid() == 0 and not legacy)
        assert _mode(pg_root.resolve()) == 0o700
        port = int(urlsplit(url).port)
        with pytest.raises(psycopg.OperationalError, match="no password supplied"):
            psycopg.connect(
                host="127.0.0.1", port=port, user="winback", dbname="postgres", passfile=os.devnull
            )
        with psycopg.connect(url) as conn:
            assert conn.execute("select current_user").fetchone() == ("winback",)
        server_log = (pg_root.resolve() / "server.log").read_text(errors="replace")
        for text in (made.stdout, made.stderr, upgraded.stdout, upgraded.stderr, server_log):
            assert password not in text
    finally:
        winback("db-stop")
        if pg_root.is_symlink():
            shutil.rmtree(pg_root.resolve(), ignore_errors=True)


@pytest.mark.integration  # starts a PostgreSQL cluster of its own
def test_a_missing_password_file_is_reported_not_replaced(tmp_path):
    """A cluster that takes password logins, whose password file is gone: the start fails
    with a message saying what to do, and no new password is made that cannot work."""
    _server_binaries_or_skip()
    state = tmp_path / "state"
    env = {key: value for key, value in os.environ.items() if not key.startswith("WINBACK_")}
    env["WINBACK_STATE_DIR"] = str(state)

    def winback(*args: str) -> subprocess.CompletedProcess:
        return _winback_cli(env, *args)

    try:
        assert winback("db-url").returncode == 0
        (state / "pgpass").unlink()
        again = winback("db-url")
        assert again.returncode != 0
        assert "pgpass is missing; restore it, or remove the cluster" in again.stderr
        assert "Traceback" not in again.stderr
        assert not (state / "pgpass").exists()
    finally:
        winback("db-stop")
        if (state / "pg").is_symlink():
            shutil.rmtree((state / "pg").resolve(), ignore_errors=True)
