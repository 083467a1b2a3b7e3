"""Run dbt on the warehouse outside Airflow (CLI, set-up, tests), and let plain `dbt` do so.

Two profiles, one warehouse:

- `dbt_project/profiles/profiles.yml` (committed) reads the connection from WINBACK_PG_*
  variables, which winback sets from `WINBACK_DATABASE_URL` or the embedded cluster. Cosmos,
  `winback dbt` and the image use it, so no address is ever committed.
- `dbt_project/profiles.yml` (git-ignored) is written at set-up (`winback db-up`,
  `winback dbt-manifest`, `make demo`, `make test`) with the address winback itself uses.
  dbt looks for `profiles.yml` in the working folder first, so plain `dbt build`,
  `dbt debug` or an editor's dbt extension run in `dbt_project/` reach the same warehouse
  with nothing exported. A `DBT_PROFILES_DIR` of the user's own still wins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from winback import config
from winback.warehouse import db

COMMITTED_PROFILES_DIR = config.DBT_PROJECT_DIR / "profiles"
LOCAL_PROFILE = config.DBT_PROJECT_DIR / "profiles.yml"


def dbt_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(db.dbt_env())
    env.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
    return env


# dbt commands that run the project's on-run-start hook, which wants schema `winback`.
COMMANDS_WITH_HOOKS = frozenset(
    ("build", "compile", "docs", "retry", "run", "seed", "snapshot", "test")
)


def run_dbt(args: list[str], check: bool = False, **kwargs) -> int:
    """Run `dbt ARGS` against the project and the warehouse; returns dbt's exit code.

    Before a command that runs the project's hooks, the tables winback's Python stages own
    are created (`winback.warehouse.tables`): models join winback.customer_scores.
    """
    if args and args[0] in COMMANDS_WITH_HOOKS:
        from winback.warehouse import tables

        with db.connect() as conn:
            tables.ensure_schema(conn)
    executable = Path(sys.executable).with_name("dbt")
    command = [
        str(executable),
        *args,
        "--project-dir",
        str(config.DBT_PROJECT_DIR),
        "--profiles-dir",
        str(COMMITTED_PROFILES_DIR),
    ]
    result = subprocess.run(command, env=dbt_environment(), check=check, **kwargs)
    return result.returncode


def local_profile_text(url: str | None = None) -> str:
    """The plain-dbt profile for the warehouse at `url` (default: winback's own).

    A password in the URL is never written: it is read from WINBACK_PG_PASSWORD. The
    embedded cluster's, which its URL names by file, is copied in so plain dbt needs
    nothing exported; the profile is then as private as that file (0600, in a folder
    git ignores)."""
    settings = db.dbt_env(url)
    passfile = settings.get("PGPASSFILE")
    if passfile:
        stored = Path(passfile).read_text().strip().rsplit(":", 1)[-1]
        password = f"{json.dumps(stored)}  # the embedded cluster's, from {passfile}"
    elif settings["WINBACK_PG_PASSWORD"]:
        password = "\"{{ env_var('WINBACK_PG_PASSWORD') }}\"  # the URL has a password: export it"
    else:
        password = '""'
    return f"""\
# Written by winback at set-up for plain `dbt` in this folder; not committed (it names this
# machine's warehouse). Rewrite it with `winback db-up`. The committed profile, which
# reads WINBACK_PG_* variables, is profiles/profiles.yml.
winback:
  target: dev
  outputs:
    dev:
      type: postgres
      host: {json.dumps(settings["WINBACK_PG_HOST"])}
      port: {int(settings["WINBACK_PG_PORT"])}
      user: {json.dumps(settings["WINBACK_PG_USER"])}
      password: {password}
      dbname: {json.dumps(settings["WINBACK_PG_DBNAME"])}
      schema: analytics
      threads: 2
      connect_timeout: 10
"""


def write_local_profile(url: str | None = None) -> Path:
    """Write `dbt_project/profiles.yml` for plain dbt (0600: it names the warehouse, and
    may hold the embedded cluster's password)."""
    text = local_profile_text(url)
    fd = os.open(LOCAL_PROFILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # one written before may have been readable
        handle.write(text)
    return LOCAL_PROFILE


def write_manifest() -> Path:
    """`dbt parse`: the manifest cosmos renders the DAG from, so parsing never runs dbt ls.
    Also (re)writes the plain-dbt profile, so `dbt` in dbt_project/ finds this warehouse,
    and the campaigns' exposures, so the manifest's lineage reaches every campaign."""
    from winback.campaigns import exposures

    write_local_profile()
    exposures.write_campaign_exposures()
    # The profile and target as cosmos names them, so the DAG's first build reuses this
    # parse instead of parsing again (config.DBT_PROFILE_NAME).
    profile = ["--profile", config.DBT_PROFILE_NAME, "--target", config.DBT_TARGET_NAME]
    code = run_dbt(["parse", "--quiet", *profile])
    manifest = config.DBT_PROJECT_DIR / "target" / "manifest.json"
    if code != 0 or not manifest.exists():
        raise RuntimeError("dbt parse failed: the dbt project does not compile")
    return manifest
