"""Tracked short links: `GET /r/{code}` answers 302 to the landing page stored for the code.

The target only ever comes from `winback.tracked_links`, never from the request, so the
service cannot be used as an open redirect; a stored target that is not http(s) is not
followed either. A code that is malformed, unknown or older than the link lifetime
(`WINBACK_LINK_TTL_DAYS`, default 180) gets a 404 page.

A tap records one `clicked` event for the message (event id `click:<code>`): repeated taps
count once, because the funnel counts customers who clicked, not taps. `HEAD` answers
the same redirect and records nothing: mail scanners and link previewers probe with it,
and a probe is not a customer's click.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import psycopg

from winback.campaigns import journeys

CODE_PATTERN = re.compile(r"^[0-9a-z]{10}$")
LINK_TTL_ENV = "WINBACK_LINK_TTL_DAYS"
DEFAULT_LINK_TTL_DAYS = 180


@dataclass(frozen=True)
class Redirect:
    target_url: str
    idempotency_key: str
    campaign_id: str
    customer_id: str
    channel: str


def link_ttl_days() -> int:
    return int(os.environ.get(LINK_TTL_ENV, DEFAULT_LINK_TTL_DAYS))


def resolve(conn: psycopg.Connection, code: str) -> Redirect | None:
    """Where `code` leads, or None for a malformed, unknown or expired code."""
    code = code.lower()
    if not CODE_PATTERN.match(code):
        return None
    row = conn.execute(
        "select target_url, campaign_id, step_id, customer_id, channel "
        "from winback.tracked_links "
        "where code = %s and created_at > now() - make_interval(days => %s)",
        (code, link_ttl_days()),
    ).fetchone()
    if row is None:
        return None
    target, campaign_id, step_id, customer_id, channel = row
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    key = journeys.idempotency_key(campaign_id, step_id, customer_id, channel)
    return Redirect(target, key, campaign_id, customer_id, channel)


def record_click(conn: psycopg.Connection, code: str, redirect: Redirect) -> bool:
    """Record the message's `clicked` event once; True when this tap was the first."""
    row = conn.execute(
        "insert into winback.message_events (event_id, provider, event_type, channel, "
        " idempotency_key, customer_id, campaign_id, provider_message_id, occurred_at) "
        "values (%s, 'winback', 'clicked', %s, %s, %s, %s, null, now()) "
        "on conflict (event_id) do nothing returning 1",
        (
            f"click:{code.lower()}",
            redirect.channel,
            redirect.idempotency_key,
            redirect.customer_id,
            redirect.campaign_id,
        ),
    ).fetchone()
    return row is not None
