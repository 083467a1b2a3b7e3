"""Settings read from the environment, and the project's paths.

One place decides where the warehouse is:

1. `WINBACK_DATABASE_URL`, when set, points at a PostgreSQL the user runs; winback never
   starts a server then.
2. Otherwise the embedded cluster under `.winback/pg` (see `winback.local.embedded_pg`) is used,
   started on demand.

Secrets only ever come from the environment (or Airflow connections in a deployment);
nothing here reads a committed file for a password.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(os.environ.get("WINBACK_PROJECT_ROOT", Path(__file__).resolve().parent.parent))
STATE_DIR = Path(os.environ.get("WINBACK_STATE_DIR", PROJECT_ROOT / ".winback"))
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
DAGS_DIR = PROJECT_ROOT / "dags"
INCLUDE_DIR = PROJECT_ROOT / "include"
CAMPAIGNS_DIR = INCLUDE_DIR / "campaigns"
LANDING_DIR = Path(os.environ.get("WINBACK_LANDING_DIR", STATE_DIR / "landing"))
REPORTS_DIR = Path(os.environ.get("WINBACK_REPORTS_DIR", STATE_DIR / "reports"))

DATABASE_URL_ENV = "WINBACK_DATABASE_URL"
WAREHOUSE_DB_NAME = "winback"
AIRFLOW_DB_NAME = "winback_airflow"

# Schemas in the warehouse. dbt owns staging/intermediate/marts; the Python stages own
# `winback` (scores, audiences, outbox, send ledger); the loader owns `raw`.
RAW_SCHEMA = "raw"
APP_SCHEMA = "winback"
MARTS_SCHEMA = "marts"


def configured_database_url() -> str | None:
    """The user's own warehouse URL, or None when the embedded cluster should be used."""
    url = os.environ.get(DATABASE_URL_ENV, "").strip()
    return url or None


# Airflow: the warehouse connection id, and the pool that keeps dbt builds and provider
# syncs from overlapping (one slot).
WAREHOUSE_CONN_ID = "winback_warehouse"
WAREHOUSE_WRITES_POOL = "winback_warehouse_writes"


# The global control group: this share of all customers receives no winback message at
# all, so the program's total effect can be measured against it. Shares above a half would
# leave the program the smaller group.
GLOBAL_CONTROL_SHARE_ENV = "WINBACK_GLOBAL_CONTROL_SHARE"
DEFAULT_GLOBAL_CONTROL_SHARE = 0.05


def global_control_share() -> float:
    """The configured global control share, checked: 0 (no control group) to 0.5."""
    text = os.environ.get(GLOBAL_CONTROL_SHARE_ENV, "").strip()
    if not text:
        return DEFAULT_GLOBAL_CONTROL_SHARE
    try:
        share = float(text)
    except ValueError:
        raise ValueError(f"{GLOBAL_CONTROL_SHARE_ENV}={text!r} is not a number") from None
    if not 0 <= share <= 0.5:
        raise ValueError(f"{GLOBAL_CONTROL_SHARE_ENV}={text} must be between 0 and 0.5")
    return share
