"""Deterministic assignment: one hash decides holdout places, A/B variants (and any later
split, such as a global control group).

Every split hashes the same way: MD5 of its key parts joined by ":" (campaign, then step,
then customer...). The first 32 bits of the digest are the customer's place; the same on
every machine, in Python and in SQL, on every run, so a rerun or a backfill never moves
anyone. MD5 serves as a well-mixed, stable hash here, not as security: nobody gains by
predicting their own group.

- Holdout: within each stratum, today's entrants sorted by `hash_sql` fill the holdout up
  to its share (`winback.campaigns.audiences`); `holdout_threshold` is the cut-off when a
  simulation assigns by hash alone.
- A/B variant: `unit_hash` places the customer in [0, 1) and `pick_by_weight` walks the
  variants' weights (`winback.campaigns.journeys.choose_variant`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from psycopg import sql

HASH_BITS = 32
SEPARATOR = ":"


def assignment_hash(*parts: str) -> int:
    """The 32-bit place of `parts` (e.g. campaign and customer): the MD5 digest's first
    8 hex digits, which is also the prefix `hash_sql` sorts by."""
    digest = hashlib.md5(SEPARATOR.join(parts).encode()).hexdigest()
    return int(digest[: HASH_BITS // 4], 16)


def unit_hash(*parts: str) -> float:
    """The place of `parts` as a number in [0, 1)."""
    return assignment_hash(*parts) / 2**HASH_BITS


def holdout_threshold(share: float) -> int:
    """Hash values below this (of 2**32) form a `share` holdout when assigned by hash alone,
    without strata; measurement validation simulates campaigns that way."""
    return int(share * 2**HASH_BITS)


def pick_by_weight(options: Sequence[tuple[str, float]], *parts: str) -> str:
    """The option (id, weight) whose share of the total weight holds `parts`' place."""
    point = unit_hash(*parts) * sum(weight for _, weight in options)
    for option, weight in options:
        point -= weight
        if point < 0:
            return option
    return options[-1][0]


def hash_sql(*parts: sql.Composable) -> sql.Composable:
    """The SQL twin of the hash: `md5(part || ':' || part ...)`, a hex text that sorts as
    `assignment_hash` does (byte order; ties broken by the caller)."""
    joined = sql.SQL(f" || '{SEPARATOR}' || ").join(parts)
    return sql.SQL("md5({})").format(joined)
