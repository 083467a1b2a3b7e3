"""The deployment's secrets checked before anything starts: Compose's `airflow-init` runs
`winback check-secrets`, and every other service waits for it.

Compose's `${VAR:?}` only checks that a value is set; `change-me` (the value in
deploy/.env.example) or a one-character password passes it. Here every secret must be set,
not a placeholder and at least 32 bytes long (`personalization.secret_problem`, the rule
live coupon codes follow); optional ones are checked only when set. Values are never
printed, only their names and what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from winback.campaigns.personalization import secret_problem

REQUIRED = (
    "AIRFLOW_DB_PASSWORD",
    "WAREHOUSE_DB_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "WINBACK_COUPON_SECRET",
)
OPTIONAL = ("WINBACK_MAILCHIMP_WEBHOOK_SECRET",)


def problems(env: Mapping[str, str] | None = None) -> list[str]:
    """One line per secret that cannot be used, naming the variable, never the value."""
    env = os.environ if env is None else env
    found = []
    for name in REQUIRED + OPTIONAL:
        value = env.get(name, "")
        if not value:
            if name in REQUIRED:
                found.append(f"{name} is not set")
            continue
        problem = secret_problem(value)
        if problem:
            found.append(f"{name} {problem}")
    return found
