"""The environment a local Airflow (demo, tests, `make airflow`) runs with.

Airflow's home, logs and metadata database live beside the embedded warehouse, so one
`.winback/` folder holds every piece of local state. A user with their own Airflow sets
`AIRFLOW__DATABASE__SQL_ALCHEMY_CONN` (and the rest) themselves; what is already set in
the environment is never overridden.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from winback import config
from winback.warehouse import db


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME", config.STATE_DIR / "airflow"))


def airflow_environment() -> dict[str, str]:
    url = db.database_url()
    defaults = {
        "AIRFLOW_HOME": str(airflow_home()),
        "AIRFLOW__CORE__DAGS_FOLDER": str(config.DAGS_DIR),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(config.PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # winback's DAGs are meant to run once deployed: a paused DAG leaves a backfill's
        # runs queued forever, with nothing saying why (`make airflow` also unpauses them).
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db.airflow_database_url(),
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        # cosmos keeps dbt's partial-parse file between tasks; in /tmp (its default) every
        # checkout on the machine would share one and re-parse the project on each switch.
        "AIRFLOW__COSMOS__CACHE_DIR": str(config.STATE_DIR / "cosmos"),
        # cosmos' watcher build copies its node results to an Airflow Variable on every
        # result (the whole, growing set, compiled SQL included: quadratic in the nodes)
        # so a retried build can restore them. winback's builds are never retried (see
        # cosmos_config.dbt_task_group); with this off, cosmos still writes the Variable
        # once when a build fails, and a cleared build falls back to one task per model.
        "AIRFLOW__COSMOS__ENABLE_WATCHER_RELIABLE_RETRY": "False",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
        "DO_NOT_TRACK": "1",
        # Airflow connections can come from the environment; the warehouse is one.
        "AIRFLOW_CONN_WINBACK_WAREHOUSE": url,
    }
    env = dict(os.environ)
    for key, value in defaults.items():
        env.setdefault(key, value)
    # One source of truth for the warehouse: dbt's settings always follow the URL the
    # Python stages use, never a stale WINBACK_PG_* left in the environment.
    env[config.DATABASE_URL_ENV] = url
    env.update(db.dbt_env(url))
    return env


def airflow_executable() -> Path:
    return Path(sys.executable).with_name("airflow")


def run_airflow(args: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    config.private_folder(airflow_home())
    return subprocess.run(
        [str(airflow_executable()), *args],
        env=airflow_environment(),
        check=check,
        text=True,
        **kwargs,
    )


def migrate_metadata_db() -> None:
    """Create or upgrade Airflow's metadata database (idempotent) and the DAG's pools."""
    db.ensure_airflow_database()
    run_airflow(["db", "migrate"], capture_output=True)
    run_airflow(
        [
            "pools",
            "set",
            config.WAREHOUSE_WRITES_POOL,
            "1",
            "dbt builds and provider syncs never overlap",
        ],
        capture_output=True,
    )
