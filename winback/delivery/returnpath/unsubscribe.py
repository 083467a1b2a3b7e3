"""Opting out from a link in a message: by one click (RFC 8058) or on a small page.

Every email carries `List-Unsubscribe: <https://…/u/TOKEN>, <mailto:…>` and
`List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058; required of bulk senders by
Gmail and Yahoo since 2024). A `POST` to that URL unsubscribes the message's address at
once; `GET` shows a page that confirms and lets the customer choose email, SMS or both.

An opt-out is written where the sync looks before every send: the address (SHA-256, as
the provider feedback writes it) goes on `winback.suppressions`, so the next sync, the
same day, skips it; and the channel's consent is withdrawn for the customer in
`winback.consent_withdrawals`, so no campaign enrols them on it again. Unsubscribing
twice changes nothing. Each opt-out is also a `unsubscribed` event of the message, for
the funnel.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from winback.delivery import feedback

CHANNELS = ("email", "sms")


@dataclass(frozen=True)
class Message:
    idempotency_key: str
    customer_id: str
    campaign_id: str
    channel: str
    to: str | None


def find_message(conn: psycopg.Connection, reference: str) -> Message | None:
    row = conn.execute(
        "select idempotency_key, customer_id, campaign_id, channel, payload ->> 'to' "
        "from winback.outbox where idempotency_key = %s",
        (reference,),
    ).fetchone()
    return Message(*row) if row else None


def _address(conn: psycopg.Connection, message: Message, channel: str) -> str | None:
    """The customer's address on `channel`: the message's own, else their current one."""
    if channel == message.channel and message.to:
        return message.to
    column = "email" if channel == "email" else "phone"
    row = conn.execute(
        f"select {column} from marts.customer_features where customer_id = %s",
        (message.customer_id,),
    ).fetchone()
    return row[0] if row and row[0] else None


def unsubscribe(conn: psycopg.Connection, message: Message, channels: tuple[str, ...]) -> int:
    """Opt the message's customer out of `channels`; returns how many suppressions were new.

    The event and the suppression go through `feedback.store_events`, as a provider's
    opt-out does; the consent withdrawal is the link's own."""
    unknown = [channel for channel in channels if channel not in CHANNELS]
    if unknown:
        raise ValueError(f"unknown channel {unknown[0]!r}")
    occurred_at = datetime.now(UTC).isoformat()
    rows = []
    for channel in channels:
        address = _address(conn, message, channel)
        rows.append(
            {
                "event_id": f"unsubscribe:{message.idempotency_key}:{channel}",
                "provider": "winback",
                "event_type": "unsubscribed",
                "channel": channel,
                "provider_message_id": None,
                "occurred_at": occurred_at,
                "address_hash": feedback.address_hash(address) if address else None,
                "reason": "unsubscribed by link",
                "idempotency_key": message.idempotency_key,
                "customer_id": message.customer_id,
                "campaign_id": message.campaign_id,
            }
        )
        conn.execute(
            "insert into winback.consent_withdrawals "
            "(customer_id, channel, campaign_id, withdrawn_on) values (%s, %s, %s, current_date) "
            "on conflict (customer_id, channel) do nothing",
            (message.customer_id, channel, message.campaign_id),
        )
    return feedback.store_events(conn, rows).suppressions_added
