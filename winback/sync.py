"""Provider sync of the outbox.

This module holds the part every provider shares: which outbox rows still need sending,
and the send ledger that records the intent before a provider is called and its
acknowledgement after. In dry-run mode the intent is recorded as `would_send` and no
provider is called: the ledger then says exactly what a live run would have sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

import psycopg

from winback.audiences import ensure_app_schema

log = logging.getLogger(__name__)

PROVIDER_BY_CHANNEL = {"email": "smtp", "sms": "twilio", "popup": "popup_export"}


@dataclass
class SyncResult:
    mode: str
    run_date: date
    recorded: int
    by_channel: dict[str, int]


def dry_run(conn: psycopg.Connection, run_date: date) -> SyncResult:
    """Record, for every outbox row of `run_date` not yet in the ledger, what would be sent.

    Keyed by the outbox's idempotency key, so a rerun records nothing new.
    """
    ensure_app_schema(conn)
    with conn.transaction():
        rows = conn.execute(
            """
            insert into winback.send_ledger
                (idempotency_key, mode, status, provider, run_date)
            select o.idempotency_key, 'dry_run', 'would_send',
                   case o.channel when 'email' then %(email)s when 'sms' then %(sms)s
                        else %(popup)s end,
                   o.run_date
            from winback.outbox o
            where o.run_date = %(run_date)s
            on conflict (idempotency_key, mode) do nothing
            returning provider
            """,
            {
                "run_date": run_date,
                "email": PROVIDER_BY_CHANNEL["email"],
                "sms": PROVIDER_BY_CHANNEL["sms"],
                "popup": PROVIDER_BY_CHANNEL["popup"],
            },
        ).fetchall()
    by_provider: dict[str, int] = {}
    for (provider,) in rows:
        by_provider[provider] = by_provider.get(provider, 0) + 1
    log.info(
        "dry run for %s: %d messages recorded as would_send %s", run_date, len(rows), by_provider
    )
    return SyncResult("dry_run", run_date, len(rows), by_provider)
