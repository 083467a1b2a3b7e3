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
    """Opt the message's customer out of `channels`; returns how many were new."""
    added = 0
    for channel in channels:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}")
        address = _address(conn, message, channel)
        if address:
            added += conn.execute(
                "insert into winback.suppressions "
                "(channel, address_hash, reason, customer_id, source_event_id) "
                "values (%s, %s, 'unsubscribed by link', %s, %s) "
                "on conflict (channel, address_hash) do nothing",
                (
                    channel,
                    feedback.address_hash(address),
                    message.customer_id,
                    f"unsubscribe:{message.idempotency_key}:{channel}",
                ),
            ).rowcount
        conn.execute(
            "insert into winback.consent_withdrawals "
            "(customer_id, channel, campaign_id, withdrawn_on) values (%s, %s, %s, current_date) "
            "on conflict (customer_id, channel) do nothing",
            (message.customer_id, channel, message.campaign_id),
        )
        conn.execute(
            "insert into winback.message_events (event_id, provider, event_type, channel, "
            " idempotency_key, customer_id, campaign_id, occurred_at) "
            "values (%s, 'winback', 'unsubscribed', %s, %s, %s, %s, now()) "
            "on conflict (event_id) do nothing",
            (
                f"unsubscribe:{message.idempotency_key}:{channel}",
                channel,
                message.idempotency_key,
                message.customer_id,
                message.campaign_id,
            ),
        )
    return added
