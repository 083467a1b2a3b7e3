"""An embedded PostgreSQL cluster for demos, tests and laptops.

`ensure_running()` is idempotent: it initialises the cluster the first time, restarts a
stopped one, and otherwise returns the running one's URL. The cluster lives in
`.winback/pg` (git-ignored) and listens on 127.0.0.1 only, on a free port chosen once and
kept while it stays free.

`initdb` refuses to run as root, and CI and many users run as root, so when we are root
the server runs as an unprivileged account (`postgres` if the machine has one, else
`nobody`). Should that account be unable to reach the project folder (a checkout under a
private home directory such as /root, or any folder made by `mktemp -d`), the data lives in
a private folder with an unpredictable name under /var/tmp, owned by that account and
mode 0700, and `.winback/pg` is a link to it. The account is only ever handed resolved
paths and `/` as its working directory: it cannot walk through the checkout.

Root never follows a link inside a folder the account owns: the files it writes or reads
there (the log, the port, postgresql.conf) are opened with O_NOFOLLOW.

Nobody else on the machine may read the customers' data: the cluster accepts only
`scram-sha-256` password logins over 127.0.0.1 (no unix socket), for a password generated
at the first start and kept in `.winback/pgpass` (libpq's password-file format, 0600). The
URL names that file (`?passfile=`), never the password, so every client (psycopg, Airflow's
SQLAlchemy, dbt through PGPASSFILE) reads it from there and it never appears in a URL, a
log line or a process's arguments. A cluster made before this, with `trust`, is given the
password and the new rules on its next start (`winback db-up`). `.winback/` is 0700.

Point `WINBACK_DATABASE_URL` at a real server for anything else; none of this applies then.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from winback import config
from winback.local import ports

log = logging.getLogger(__name__)

SUPERUSER = "winback"

# Text compares byte by byte. For UTF-8 that is the code-point order C.UTF-8 sorts in
# (glibc 2.35 and later), so results do not change, but PostgreSQL before 17 only takes
# its fast paths (memcmp, abbreviated sort keys) for "C": the per-customer models sort
# millions of text ids (bench/bench_dbt.py: the order statistics' sort 4.9 s -> 1.3 s at
# 100k customers).
COLLATION = "C"

# Settings for a 2-core, few-GB developer machine running batch analytics; durability
# matters less than throughput for a rebuildable local warehouse.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "100",
    "shared_buffers": "1GB",
    # The per-customer models sort and hash ~10M orders (~25M lines) at a million
    # customers: with 64MB their sorts and hash aggregates spilled to disk (measured in
    # bench/bench_dbt.py: int_customer_order_stats 33 s -> 9 s at 100k customers).
    "work_mem": "256MB",
    "hash_mem_multiplier": "2",
    "maintenance_work_mem": "512MB",
    "effective_cache_size": "4GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "synchronous_commit": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "jit": "off",
    "max_parallel_workers_per_gather": "2",
    "random_page_cost": "1.1",
    "logging_collector": "off",
    "timezone": "'UTC'",
}


# Settings a running cluster takes on reload: applied with ALTER SYSTEM to clusters that
# were initialised with older values, so a tuning change needs no new cluster.
RELOADABLE_SETTINGS = (
    "work_mem",
    "hash_mem_multiplier",
    "maintenance_work_mem",
    "effective_cache_size",
    "max_wal_size",
    "checkpoint_timeout",
    "synchronous_commit",
    "jit",
    "max_parallel_workers_per_gather",
    "random_page_cost",
)


# Who may log in: the superuser and every role, with a password, over the loopback only.
# There is no unix socket (unix_socket_directories is empty), so no `local` line.
HBA_RULES = """\
# winback embedded cluster (winback/local/embedded_pg.py): password logins over the
# loopback only; the password is in .winback/pgpass.
host all all 127.0.0.1/32 scram-sha-256
"""


class EmbeddedPostgresError(RuntimeError):
    pass


def password_file() -> Path:
    """`.winback/pgpass`: the superuser's password, in libpq's password-file format (0600)."""
    return config.STATE_DIR / "pgpass"


def _read_password() -> str | None:
    """The stored password, or None when there is none yet. The file must be a private
    regular file: libpq ignores one that others can read, and so do we."""
    text = _read_no_follow(password_file())
    if text is None:
        return None
    mode = password_file().lstat().st_mode
    if not stat.S_ISREG(mode) or mode & 0o077:
        raise EmbeddedPostgresError(
            f"{password_file()} must be a regular file readable by its owner only (chmod 600)"
        )
    fields = text.strip().split(":")
    if len(fields) != 5 or not fields[4]:
        raise EmbeddedPostgresError(f"{password_file()} is not a libpq password file")
    return fields[4]


def _create_password() -> str:
    """Generate the superuser's password and store it (created exclusively, 0600, links
    never followed). URL-safe characters need no escaping in a password file."""
    password = secrets.token_urlsafe(32)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(password_file(), flags, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"127.0.0.1:*:*:{SUPERUSER}:{password}\n")
    return password


def _secure_state_dir() -> None:
    """`.winback/` 0700, so no other account reaches anything in it.

    One exception: as root, a cluster made before the data moved out of the checkout
    (`.winback/pg` a real folder the server account owns) needs the account to pass
    through `.winback/`, which is then 0711: others may pass but not list it, and every
    entry in it is private. Moving that cluster out (`make db-stop`, delete `.winback/pg`)
    makes it 0700.
    """
    state = config.private_folder(config.STATE_DIR)
    root = state / "pg"
    legacy = _server_account() is not None and root.is_dir() and not root.is_symlink()
    wanted = 0o711 if legacy else 0o700
    if state.stat().st_uid == os.geteuid() and state.stat().st_mode & 0o777 != wanted:
        state.chmod(wanted)
    if legacy:
        # `.winback/` is root's and nobody else may write in it, so `pg` cannot be swapped
        # for a link between the check above and this.
        root.chmod(0o700)
        log.warning(
            "%s holds a cluster the PostgreSQL account reaches through it, so it stays 0711; "
            "`make db-stop` and deleting %s moves the cluster to a private folder",
            state,
            root,
        )


@dataclass(frozen=True)
class Cluster:
    root: Path  # .winback/pg (or the link to the private fallback location)

    @property
    def server_root(self) -> Path:
        """`root` with every link resolved: the path the server account is given, which
        never passes through the (possibly private) checkout."""
        return self.root.resolve()

    @property
    def data_dir(self) -> Path:
        return self.server_root / "data"

    @property
    def log_file(self) -> Path:
        return self.server_root / "server.log"

    @property
    def port_file(self) -> Path:
        return self.server_root / "port"

    def url(self, database: str = config.WAREHOUSE_DB_NAME) -> str:
        """The cluster's URL: it names the password file, never the password."""
        passfile = quote(str(password_file()), safe="/")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port()}/{database}?passfile={passfile}"

    def port(self) -> int:
        pid_file = self.data_dir / "postmaster.pid"
        # Line 4 of postmaster.pid is the port the running server listens on.
        pid_text = _read_no_follow(pid_file)
        if pid_text is not None:
            lines = pid_text.splitlines()
            if len(lines) >= 4 and lines[3].strip().isdigit():
                return int(lines[3])
        stored = _read_no_follow(self.port_file)
        if stored is not None and stored.strip().isdigit():
            return int(stored.strip())
        raise EmbeddedPostgresError("the embedded cluster has no port yet; run `winback db-up`")


def pg_bin_dir() -> Path:
    """Directory with initdb/pg_ctl: $WINBACK_PG_BIN, else the newest Debian-style install."""
    explicit = os.environ.get("WINBACK_PG_BIN")
    if explicit:
        return Path(explicit)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for candidate in reversed(candidates):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise EmbeddedPostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found. Install PostgreSQL "
        "(Debian: apt-get install postgresql), set WINBACK_PG_BIN to their folder, or set "
        f"{config.DATABASE_URL_ENV} to use an existing server."
    )


def _server_account() -> pwd.struct_passwd | None:
    """The account that runs the server when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise EmbeddedPostgresError("running as root and no unprivileged account to run PostgreSQL")


def _can_traverse(path: Path, account: pwd.struct_passwd) -> bool:
    """Whether `account` can reach `path` through every parent directory."""
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        mode = st.st_mode
        if st.st_uid == account.pw_uid:
            ok = mode & stat.S_IXUSR
        elif st.st_gid == account.pw_gid:
            ok = mode & stat.S_IXGRP
        else:
            ok = mode & stat.S_IXOTH
        if not ok:
            return False
    return True


def cluster_root() -> Path:
    """`.winback/pg`: the cluster's folder, or a link to its private fallback folder."""
    _secure_state_dir()
    root = config.STATE_DIR / "pg"
    account = _server_account()
    if account is None or root.is_symlink() or _can_traverse(config.STATE_DIR, account):
        return root
    if root.exists():
        raise EmbeddedPostgresError(
            f"{root} exists but the PostgreSQL account {account.pw_name!r} cannot reach it "
            "(a parent folder is private); remove it (`make db-stop`, then delete it) so the "
            "cluster can be created in a private folder under /var/tmp"
        )
    # The account cannot reach the checkout: keep the data in a folder only it can enter,
    # under a name nobody can predict (mkdtemp: random, created exclusively, mode 0700),
    # and link it from the git-ignored folder, so `.winback/pg` still finds it.
    fallback = Path(tempfile.mkdtemp(prefix="winback-pg-", dir=FALLBACK_PARENT))
    os.chown(fallback, account.pw_uid, account.pw_gid)
    root.symlink_to(fallback, target_is_directory=True)
    log.info("%s is private to this account; cluster data in %s", config.STATE_DIR, fallback)
    return root


# Where a private fallback folder is made: a sticky, world-writable folder that survives
# reboots, in which mkdtemp's exclusive creation is safe.
FALLBACK_PARENT = "/var/tmp"


def _read_no_follow(path: Path) -> str | None:
    """The text of `path`, or None when it does not exist; never follows a final link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None
    with os.fdopen(fd, errors="replace") as handle:
        return handle.read()


def _write_no_follow(path: Path, text: str, *, append: bool = False) -> None:
    """Write `path` (created 0600, owned by the server account when we are root) without
    following a final link: the folder may belong to the server account."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as handle:
        # The mode above applies only to a new file: one an older winback made 0644 is
        # made private too.
        os.fchmod(handle.fileno(), 0o600)
        account = _server_account()
        if account is not None:
            os.fchown(handle.fileno(), account.pw_uid, account.pw_gid)
        handle.write(text)


def _run_as_server_account(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    account = _server_account()
    preexec = None
    if account is not None:

        def preexec() -> None:  # runs in the child between fork and exec
            os.setgid(account.pw_gid)
            os.setgroups([])
            os.setuid(account.pw_uid)

        env = dict(kwargs.pop("env", os.environ))
        env["HOME"] = "/tmp"
        kwargs["env"] = env
    # initdb and pg_ctl look up their working directory; the caller's may be a private
    # checkout the account cannot enter.
    kwargs.setdefault("cwd", "/")
    return subprocess.run(args, preexec_fn=preexec, check=False, text=True, **kwargs)


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """Serialise set-up between concurrent `make` targets or test workers."""
    fd = os.open(config.STATE_DIR / "pg.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # also when an older winback created it 0644
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _initdb(cluster: Cluster, password: str) -> None:
    account = _server_account()
    cluster.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if account is not None:
        os.chown(cluster.server_root, account.pw_uid, account.pw_gid)
    # initdb reads the superuser's password from a file, never from its arguments: one
    # made exclusively (no link followed) in the cluster's private folder, removed at once.
    pwfile = cluster.server_root / f".initdb-password-{secrets.token_hex(8)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with os.fdopen(os.open(pwfile, flags, 0o600), "w") as handle:
        if account is not None:
            os.fchown(handle.fileno(), account.pw_uid, account.pw_gid)
        handle.write(password + "\n")
    try:
        result = _run_as_server_account(
            [
                str(pg_bin_dir() / "initdb"),
                "-D",
                str(cluster.data_dir),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                f"--lc-collate={COLLATION}",
            ],
            capture_output=True,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise EmbeddedPostgresError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
    settings = "\n".join(f"{k} = {v}" for k, v in SERVER_SETTINGS.items())
    conf = cluster.data_dir / "postgresql.conf"
    _write_no_follow(conf, f"\n# winback embedded cluster\n{settings}\n", append=True)
    _write_no_follow(cluster.data_dir / "pg_hba.conf", HBA_RULES)
    log.info("initialised embedded PostgreSQL in %s", cluster.data_dir)


def _requires_password(cluster: Cluster) -> bool:
    """Whether the cluster's login rules are winback's: password logins on the loopback."""
    return _read_no_follow(cluster.data_dir / "pg_hba.conf") == HBA_RULES


def _require_password(cluster: Cluster, password: str) -> None:
    """Upgrade a running cluster made with `trust`: give the superuser the password (sent
    as a SCRAM verifier, so the server never sees it, nor logs it), replace the login
    rules and reload them."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(cluster.url("postgres"), autocommit=True, connect_timeout=10) as conn:
        verifier = conn.pgconn.encrypt_password(
            password.encode(), SUPERUSER.encode(), b"scram-sha-256"
        ).decode()
        conn.execute(
            sql.SQL("alter role {} password {}").format(
                sql.Identifier(SUPERUSER), sql.Literal(verifier)
            )
        )
        _write_no_follow(cluster.data_dir / "pg_hba.conf", HBA_RULES)
        conn.execute("select pg_reload_conf()")
    log.warning(
        "the embedded cluster trusted every local connection; it now takes password logins "
        "only (the password is in %s)",
        password_file(),
    )


def is_running(cluster: Cluster) -> bool:
    if not (cluster.data_dir / "PG_VERSION").exists():
        return False
    result = _run_as_server_account(
        [str(pg_bin_dir() / "pg_ctl"), "status", "-D", str(cluster.data_dir)],
        capture_output=True,
    )
    return result.returncode == 0


def _start(cluster: Cluster) -> None:
    port = None
    stored = _read_no_follow(cluster.port_file)
    # The stored port again if it is free, so every stored URL stays valid; PostgreSQL
    # binds with SO_REUSEADDR, so connections lingering in TIME_WAIT do not hold it.
    if (
        stored is not None
        and stored.strip().isdigit()
        and ports.port_is_free(int(stored), reuse_address=True)
    ):
        port = int(stored)
    port = port or ports.free_port()
    _write_no_follow(cluster.log_file, "", append=True)
    result = _run_as_server_account(
        [
            str(pg_bin_dir() / "pg_ctl"),
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(cluster.data_dir),
            "-l",
            str(cluster.log_file),
            "-o",
            f"-p {port}",
        ],
        capture_output=True,
    )
    if result.returncode != 0:
        tail = (_read_no_follow(cluster.log_file) or "")[-2000:]
        raise EmbeddedPostgresError(f"pg_ctl start failed:\n{result.stderr}\n{tail}")
    _write_no_follow(cluster.port_file, str(port))
    log.info("embedded PostgreSQL listening on 127.0.0.1:%s", port)


def _wait_accepting(cluster: Cluster, timeout_s: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with psycopg.connect(cluster.url("postgres"), connect_timeout=2):
                return
        except psycopg.OperationalError as error:
            if "password authentication failed" in str(error):
                raise EmbeddedPostgresError(
                    f"the embedded cluster refuses the password in {password_file()}; "
                    "restore the file it was created with, or remove the cluster "
                    "(`make db-stop`, delete .winback/pg: its data is lost)"
                ) from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def create_database_statement(name: str):
    """CREATE DATABASE `name` in the byte-order collation (COLLATION), whatever the
    cluster's default: template0 is the one template a new collation may be copied from."""
    from psycopg import sql

    return sql.SQL("create database {} template template0 lc_collate {}").format(
        sql.Identifier(name), sql.Literal(COLLATION)
    )


def ensure_databases(admin_url: str, names: list[str]) -> None:
    """Create the named databases when missing (CREATE DATABASE cannot run in a transaction)."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        existing = {row[0] for row in conn.execute("select datname from pg_database")}
        for name in names:
            if name not in existing:
                conn.execute(create_database_statement(name))
                log.info("created database %s", name)


def ensure_running() -> Cluster:
    """Initialise and start the embedded cluster as needed; return it, ready for connections."""
    root = cluster_root()
    cluster = Cluster(root)
    with _lock(root):
        initialised = (cluster.data_dir / "PG_VERSION").exists()
        password = _read_password()
        if password is None:
            if initialised and _requires_password(cluster):
                raise EmbeddedPostgresError(
                    f"the embedded cluster takes password logins but {password_file()} "
                    "is missing; restore it, or remove the cluster (`make db-stop`, delete "
                    ".winback/pg: its data is lost)"
                )
            password = _create_password()
        if not initialised:
            _initdb(cluster, password)
        if not is_running(cluster):
            _start(cluster)
        if not _requires_password(cluster):
            _wait_accepting(cluster)
            _require_password(cluster, password)
        _wait_accepting(cluster)
        databases = [config.WAREHOUSE_DB_NAME, config.AIRFLOW_DB_NAME]
        ensure_databases(cluster.url("postgres"), databases)
        apply_reloadable_settings(cluster.url("postgres"))
    return cluster


def apply_reloadable_settings(admin_url: str) -> list[str]:
    """Bring a running cluster's reloadable settings to SERVER_SETTINGS (ALTER SYSTEM and a
    reload); returns the names changed, none on a cluster initialised with these values."""
    import psycopg
    from psycopg import sql

    changed = []
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in RELOADABLE_SETTINGS:
            wanted = SERVER_SETTINGS[name].strip("'")
            if conn.execute("select current_setting(%s)", (name,)).fetchone()[0] != wanted:
                conn.execute(
                    sql.SQL("alter system set {} = {}").format(
                        sql.Identifier(name), sql.Literal(wanted)
                    )
                )
                changed.append(name)
        if changed:
            conn.execute("select pg_reload_conf()")
            log.info("applied settings to the running cluster: %s", ", ".join(changed))
    return changed


def stop() -> bool:
    cluster = Cluster(cluster_root())
    if not is_running(cluster):
        return False
    _run_as_server_account(
        [str(pg_bin_dir() / "pg_ctl"), "stop", "-m", "fast", "-D", str(cluster.data_dir)],
        capture_output=True,
    )
    return True
