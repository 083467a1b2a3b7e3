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
import re
from datetime import timedelta
from pathlib import Path

PROJECT_ROOT = Path(os.environ.get("WINBACK_PROJECT_ROOT", Path(__file__).resolve().parent.parent))
STATE_DIR = Path(os.environ.get("WINBACK_STATE_DIR", PROJECT_ROOT / ".winback"))
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
DAGS_DIR = PROJECT_ROOT / "dags"
INCLUDE_DIR = PROJECT_ROOT / "include"
CAMPAIGNS_DIR = INCLUDE_DIR / "campaigns"
# Where the shop's deliveries land: a local folder (the embedded default) or an object
# store URL (s3://bucket/prefix, gs://..., abfs://...) read through the Airflow connection
# WINBACK_LANDING_CONN_ID. LANDING_DIR is the local default the demo and simulator write to.
LANDING_LOCATION = os.environ.get("WINBACK_LANDING_DIR", "").strip() or str(STATE_DIR / "landing")
LANDING_DIR = STATE_DIR / "landing" if "://" in LANDING_LOCATION else Path(LANDING_LOCATION)
REPORTS_DIR = Path(os.environ.get("WINBACK_REPORTS_DIR", STATE_DIR / "reports"))

DATABASE_URL_ENV = "WINBACK_DATABASE_URL"
WAREHOUSE_DB_NAME = "winback"
AIRFLOW_DB_NAME = "winback_airflow"

# Schemas in the warehouse. dbt owns staging/intermediate/marts; the Python stages own
# `winback` (scores, audiences, outbox, send ledger); the loader owns `raw`.
RAW_SCHEMA = "raw"
APP_SCHEMA = "winback"
MARTS_SCHEMA = "marts"


def private_folder(path: Path) -> Path:
    """`path` as a folder only this account can enter (0700), created with its missing
    parents so: local state, landing files, exports and reports hold customer data.

    An existing folder is tightened when it is winback's own (inside `.winback/`); one the
    user chose elsewhere keeps its mode, as they may share it on purpose. `.winback/`
    itself is `winback.local.embedded_pg`'s to set.
    """
    path = Path(path)
    for folder in reversed([path, *path.parents]):
        if not folder.exists() and not folder.is_symlink():
            folder.mkdir(mode=0o700, exist_ok=True)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder")
    status = path.stat()
    if STATE_DIR in path.parents and status.st_uid == os.geteuid() and status.st_mode & 0o077:
        path.chmod(0o700)
    return path


def _private_opener(path: str, flags: int) -> int:
    fd = os.open(path, flags | os.O_NOFOLLOW, 0o600)
    if os.fstat(fd).st_uid == os.geteuid():
        os.fchmod(fd, 0o600)  # one written before this may have been readable
    return fd


def open_private(path: Path, mode: str = "w", **kwargs):
    """`open()` for a file only this account can read (0600), never through a link."""
    return open(path, mode, opener=_private_opener, **kwargs)  # noqa: SIM115 - the caller's


def configured_database_url() -> str | None:
    """The user's own warehouse URL, or None when the embedded cluster should be used."""
    url = os.environ.get(DATABASE_URL_ENV, "").strip()
    return url or None


# dbt's profile and target, as dbt_project/profiles/profiles.yml names them. Cosmos names
# both on every dbt command, and so does `winback dbt-manifest`: dbt parses the whole
# project again when they differ from the last parse's, so the set-up's parse is then the
# one the DAG's first builds reuse.
DBT_PROFILE_NAME = "winback"
DBT_TARGET_NAME = "dev"

# Airflow: the warehouse connection id, and the pool that keeps dbt builds and provider
# syncs from overlapping (one slot).
WAREHOUSE_CONN_ID = "winback_warehouse"
WAREHOUSE_WRITES_POOL = "winback_warehouse_writes"


# The delivery contract (README "Deployment"): landing/D/ holds the shop's day D in its own
# time zone, complete once its _manifest.json is written. The run for D starts when D has
# ended there plus the delivery delay, and waits for the manifest up to the delivery wait.
SHOP_TIMEZONE_ENV = "WINBACK_SHOP_TIMEZONE"
LANDING_CONN_ID_ENV = "WINBACK_LANDING_CONN_ID"
DELIVERY_DELAY_ENV = "WINBACK_DELIVERY_DELAY"
DELIVERY_WAIT_ENV = "WINBACK_DELIVERY_WAIT"
DELIVERY_POKE_ENV = "WINBACK_DELIVERY_POKE_INTERVAL"
REQUIRE_MANIFEST_ENV = "WINBACK_REQUIRE_MANIFEST"


def shop_timezone() -> str:
    """The IANA time zone the shop's days are cut in (default UTC)."""
    return os.environ.get(SHOP_TIMEZONE_ENV, "").strip() or "UTC"


def landing_conn_id() -> str | None:
    """The Airflow connection an object-store landing is read through (None: ambient ones)."""
    return os.environ.get(LANDING_CONN_ID_ENV, "").strip() or None


def delivery_delay() -> timedelta:
    """How long after the shop's midnight the run for the day that just ended starts."""
    return parse_duration(os.environ.get(DELIVERY_DELAY_ENV, "") or "1h30m", DELIVERY_DELAY_ENV)


def delivery_wait() -> timedelta:
    """How long the first task waits for a complete delivery before failing with an alert."""
    return parse_duration(os.environ.get(DELIVERY_WAIT_ENV, "") or "6h", DELIVERY_WAIT_ENV)


def delivery_poke_interval() -> timedelta:
    """How often the wait looks for the delivery's manifest."""
    return parse_duration(os.environ.get(DELIVERY_POKE_ENV, "") or "1m", DELIVERY_POKE_ENV)


def require_manifest() -> bool:
    """Whether the daily load refuses a folder without _manifest.json (default: it does)."""
    value = os.environ.get(REQUIRE_MANIFEST_ENV, "").strip().lower()
    return value not in ("0", "false", "no", "off")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


def parse_duration(text: str, name: str = "duration") -> timedelta:
    """`1h30m`, `90m`, `6h`, `45s` (units h, m, s) as a timedelta; anything else is an error."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(f"{n}{u}" for n, u in parts) != compact:
        raise ValueError(f"{name}: {text!r} is not a duration like 1h30m, 90m, 6h or 45s")
    seconds = {"h": 3600, "m": 60, "s": 1}
    return timedelta(seconds=sum(float(n) * seconds[u] for n, u in parts))


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
