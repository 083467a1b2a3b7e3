"""Run dbt on the warehouse outside Airflow (CLI, set-up, tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from winback import config
from winback.warehouse import db


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
        str(config.DBT_PROJECT_DIR),
    ]
    result = subprocess.run(command, env=dbt_environment(), check=check, **kwargs)
    return result.returncode


def write_manifest() -> Path:
    """`dbt parse`: the manifest cosmos renders the DAG from, so parsing never runs dbt ls."""
    code = run_dbt(["parse", "--quiet"])
    manifest = config.DBT_PROJECT_DIR / "target" / "manifest.json"
    if code != 0 or not manifest.exists():
        raise RuntimeError("dbt parse failed: the dbt project does not compile")
    return manifest
