"""Engagement feedback from the providers: events in, suppressions out.

Providers report what happened to a message (delivered, opened, clicked, bounced,
complained, unsubscribed) and forward replies (an SMS "STOP"). `ingest` stores each event
once in `winback.message_events`, keyed by the provider's event id so a duplicate webhook
or a re-polled page changes nothing, linked to the outbox row through the provider's
message id recorded in the send ledger. An unsubscribe, a complaint, a hard bounce or an
SMS stop word puts the address on `winback.suppressions` (by SHA-256 of the normalized
address, never the address itself), which the sync checks before every send; a live
sync collects feedback first, so it holds in the same run.

`collect` polls the provider's events endpoint (connection `winback_events`, the
sandbox's `/_sandbox/events`) from the last cursor it stored; `ingest` is also what a
webhook receiver calls with the posted events. The feed's credentials are the
connection's (login and password: HTTP Basic; a password alone: a bearer token), sent in
the Authorization header. A URL holding credentials (`user:pass@`, `?token=`) is refused:
it would be written to task logs, alerts and `winback.feedback_cursors`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx
import psycopg

from winback.delivery.providers import connection, is_configured
from winback.warehouse import tables

log = logging.getLogger(__name__)

EVENTS_CONN_ID = "winback_events"
EVENT_TYPES = (
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "soft_bounced",
    "complained",
    "unsubscribed",
    "resubscribed",
    "help_requested",
)
# Suppressions a customer lifts by texting START, YES or UNSTOP to the number.
LIFTED_BY_START = ("SMS stop word", "carrier opt-out")
# Twilio's default opt-out keywords (Advanced Opt-Out), compared trimmed and upper-cased.
STOP_WORDS = frozenset(
    ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT")
)
SUPPRESSING = {
    "bounced": "hard bounce",
    "complained": "spam complaint",
    "unsubscribed": "unsubscribed",
}
PAGE_SIZE = 1000
# The SQL twin of `address_hash`; `{}` is the address expression.
ADDRESS_HASH_SQL = "encode(sha256(convert_to(lower(btrim({})), 'UTF8')), 'hex')"


def ensure_schema(conn: psycopg.Connection) -> None:
    """The feedback tables, and every other table of winback's (one home: `tables`)."""
    tables.ensure_schema(conn)


def address_hash(address: str) -> str:
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


@dataclass
class IngestResult:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    suppressions_added: int = 0
    suppressions_lifted: int = 0
    ignored: int = 0


def _normalize(event: dict) -> dict | None:
    """One provider event as a message_events row (plus the address it is about, hashed at
    once, and a suppression reason); None to ignore.

    An event names its message by `message_id` (the provider's id, as the send ledger
    recorded it) and, when it is about an address rather than a message (an inbound STOP,
    a list unsubscribe), by `address`, which is hashed here and never stored in clear.
    """
    kind = event.get("type")
    provider = event.get("provider", "")
    channel = event.get("channel") or ("sms" if provider == "twilio" else "email")
    address = event.get("address")
    row = {
        "event_id": str(event["event_id"]),
        "provider": provider,
        "channel": channel,
        "provider_message_id": event.get("message_id"),
        "occurred_at": event.get("occurred_at") or datetime.now(UTC).isoformat(),
        "address_hash": address_hash(address) if address else None,
        "reason": event.get("reason"),
    }
    if kind == "inbound":  # the sandbox's polled feed: an SMS reply
        if (event.get("body") or "").strip().upper() not in STOP_WORDS:
            return None  # a reply that is not an opt-out: nothing to record
        return {
            **row,
            "event_type": "unsubscribed",
            "channel": "sms",
            "address_hash": address_hash(event.get("from") or ""),
            "reason": "SMS stop word",
        }
    if kind == "undelivered":
        kind = "bounced"
    if kind not in EVENT_TYPES:
        return None
    return {**row, "event_type": kind}


def ingest(conn: psycopg.Connection, events: list[dict], *, ensure: bool = True) -> IngestResult:
    """Store provider events once each and suppress addresses that opted out.

    `ensure=False` skips creating the tables: `winback serve` creates them once at start,
    and DDL on every one of many concurrent requests would make them collide."""
    if ensure:
        ensure_schema(conn)
    rows = [row for row in map(_normalize, events) if row is not None]
    result = store_events(conn, rows)
    result.received, result.ignored = len(events), len(events) - len(rows)
    return result


def store_events(conn: psycopg.Connection, rows: list[dict]) -> IngestResult:
    """Store normalized events once each; suppress the addresses of those that opt out.

    Every opt-out goes through here: the providers' events (from `ingest`) and the ones
    winback receives itself (`returnpath.unsubscribe`). A provider's event finds its
    message through the send ledger; winback's own rows name it (`idempotency_key`,
    `customer_id`, `campaign_id`), which `_normalize` never takes from a provider. A
    provider's event suppresses only when it is new, so a STOP delivered again after a
    START does not undo the START; winback's own opt-out (never lifted by a START)
    suppresses its address whenever it is recorded, even if its event was stored before.
    """
    result = IngestResult(received=len(rows))
    if not rows:
        return result
    # The events travel as one JSON parameter: one statement, no temporary table, so a
    # single webhook costs one round trip and no catalog churn (a polled page of a
    # thousand events is a few hundred kilobytes of parameter).
    incoming_json = json.dumps(rows)
    with conn.transaction():
        stored = conn.execute(
            f"""
            with incoming as (
                select distinct on (data ->> 'event_id') data
                from jsonb_array_elements(%(incoming)s::jsonb) as events (data)
            ), linked as (
                select i.data,
                       coalesce(i.data ->> 'idempotency_key', by_id.idempotency_key,
                                by_sender.idempotency_key) as idempotency_key,
                       coalesce(i.data ->> 'customer_id', by_id.customer_id,
                                by_sender.customer_id) as customer_id,
                       coalesce(i.data ->> 'campaign_id', by_id.campaign_id,
                                by_sender.campaign_id) as campaign_id,
                       coalesce(i.data ->> 'address_hash',
                                {ADDRESS_HASH_SQL.format("by_id.payload ->> 'to'")})
                           as target_hash
                from incoming i
                left join lateral (
                    select o.idempotency_key, o.customer_id, o.campaign_id, o.payload
                    from winback.send_ledger l
                    join winback.outbox o on o.idempotency_key = l.idempotency_key
                    where l.provider_message_id = i.data ->> 'provider_message_id'
                      and l.mode = 'live'
                    limit 1
                ) by_id on true
                left join lateral (
                    select o.idempotency_key, o.customer_id, o.campaign_id
                    from winback.outbox o
                    join winback.send_ledger l
                      on l.idempotency_key = o.idempotency_key and l.mode = 'live'
                    where by_id.idempotency_key is null
                      and i.data ->> 'idempotency_key' is null
                      and i.data ->> 'address_hash' is not null
                      and o.channel = i.data ->> 'channel'
                      and {ADDRESS_HASH_SQL.format("o.payload ->> 'to'")}
                          = i.data ->> 'address_hash'
                    order by l.acknowledged_at desc nulls last
                    limit 1
                ) by_sender on true
            ), inserted as (
                insert into winback.message_events
                    (event_id, provider, event_type, channel, idempotency_key, customer_id,
                     campaign_id, provider_message_id, occurred_at)
                select data ->> 'event_id', data ->> 'provider', data ->> 'event_type',
                       data ->> 'channel', idempotency_key, customer_id, campaign_id,
                       data ->> 'provider_message_id', (data ->> 'occurred_at')::timestamptz
                from linked
                on conflict (event_id) do nothing
                returning event_id
            ), suppress as (
                insert into winback.suppressions
                    (channel, address_hash, reason, customer_id, source_event_id)
                select distinct on (data ->> 'channel', target_hash)
                       data ->> 'channel', target_hash,
                       coalesce(data ->> 'reason',
                                case when data ->> 'event_type' = 'bounced' then 'hard bounce'
                                     when data ->> 'event_type' = 'complained'
                                         then 'spam complaint'
                                     else 'unsubscribed' end),
                       customer_id, data ->> 'event_id'
                from linked
                where (data ->> 'event_id' in (select event_id from inserted)
                       or data ->> 'idempotency_key' is not null)
                  and target_hash is not null
                  and (data ->> 'event_type' in ('complained', 'unsubscribed')
                       or (data ->> 'event_type' = 'bounced' and data ->> 'channel' = 'email'))
                on conflict (channel, address_hash) do nothing
                returning 1
            )
            select (select count(*) from inserted), (select count(*) from suppress)
            """,
            {"incoming": incoming_json},
        ).fetchone()
        # START after STOP: the customer opted back in to texts from us. Only the
        # stop-word and carrier opt-outs older than the START are lifted; consent still
        # comes from the shop, so a number without SMS consent stays unreachable.
        lifted = conn.execute(
            """
            delete from winback.suppressions s
            using jsonb_array_elements(%(incoming)s::jsonb) as i (data)
            where i.data ->> 'event_type' = 'resubscribed'
              and s.channel = 'sms' and s.address_hash = i.data ->> 'address_hash'
              and s.reason = any(%(lifted)s)
              and s.suppressed_at <= (i.data ->> 'occurred_at')::timestamptz
            """,
            {"incoming": incoming_json, "lifted": list(LIFTED_BY_START)},
        ).rowcount
    result.stored, result.suppressions_added = stored
    result.suppressions_lifted = lifted
    result.duplicates = len(rows) - result.stored
    return result


# Query parameters that carry a credential (`?token=`, `?api_key=`, `?sig=`, ...): refused.
CREDENTIAL_PARAMETER = re.compile(
    r"token|key|secret|pass|pwd|auth|sig|credential|session|bearer", re.IGNORECASE
)
# A URL with user information (`scheme://user:password@host`), as a SQL pattern.
USERINFO_SQL_PATTERN = "^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@"


class FeedConfigurationError(ValueError):
    """The events feed is configured in a way that would leak or lose a credential."""


@dataclass(frozen=True)
class EventsFeed:
    """Where and how to poll: `url` and `params` hold no credential, `headers` do."""

    source: str  # scheme://host[:port]/path: the cursor's key and what logs name
    params: dict[str, str]  # the URL's own (non-secret) query parameters
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    auth: tuple[str, str] | None = field(default=None, repr=False)


def events_feed(url: str | None = None) -> EventsFeed | None:
    """The feed to poll: `url` or the connection's, with the connection's credentials.

    Refuses a URL with credentials in it, naming where they are but never their value.
    """
    conn = connection(EVENTS_CONN_ID) if is_configured(EVENTS_CONN_ID) else None
    url = url or (conn and (conn.extra.get("url") or conn.base_url))
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FeedConfigurationError(
            f"{EVENTS_CONN_ID}: the events feed must be an http(s) URL with a host"
        )
    if "@" in parts.netloc:
        raise FeedConfigurationError(
            f"{EVENTS_CONN_ID}: the events feed URL holds credentials (user:password@host); "
            "put them in the connection's login and password, not in the URL"
        )
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    secret_names = sorted(name for name in params if CREDENTIAL_PARAMETER.search(name))
    if secret_names:
        raise FeedConfigurationError(
            f"{EVENTS_CONN_ID}: the events feed URL holds a credential in its query "
            f"({', '.join(secret_names)}); put it in the connection's password, which is "
            "sent in the Authorization header, not in the URL"
        )
    source = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    headers: dict[str, str] = {}
    auth = None
    if conn is not None and conn.password:
        if conn.login:
            auth = (conn.login, conn.password)
        else:
            headers["Authorization"] = f"Bearer {conn.password}"
    return EventsFeed(source, params, headers, auth)


def _forget_credentials_in_cursors(conn: psycopg.Connection) -> None:
    """Cursors an older winback keyed by a URL with user:password@ keep their position
    under the same URL without them."""
    conn.execute(
        "delete from winback.feedback_cursors old where old.source ~ %(p)s and exists ("
        " select 1 from winback.feedback_cursors kept"
        " where kept.source = regexp_replace(old.source, %(p)s, '\\1'))",
        {"p": USERINFO_SQL_PATTERN},
    )
    conn.execute(
        "update winback.feedback_cursors set source = regexp_replace(source, %(p)s, '\\1') "
        "where source ~ %(p)s",
        {"p": USERINFO_SQL_PATTERN},
    )


def collect(conn: psycopg.Connection, run_date: date | None = None, url: str | None = None) -> dict:
    """Poll the events endpoint from the stored cursor and ingest every page.

    Each page and the cursor after it commit together: a crash re-reads at most one page,
    and re-reading changes nothing.
    """
    feed = events_feed(url)
    if feed is None:
        log.info("no events source configured (%s): no feedback collected", EVENTS_CONN_ID)
        return {"source": None}
    tables.ensure_schema(conn)
    _forget_credentials_in_cursors(conn)
    conn.commit()
    source = feed.source
    total = IngestResult()
    with httpx.Client(timeout=30, headers=feed.headers, auth=feed.auth) as client:
        while True:
            row = conn.execute(
                "select position from winback.feedback_cursors where source = %s", (source,)
            ).fetchone()
            after = row[0] if row else 0
            params = {**feed.params, "after": after, "limit": PAGE_SIZE}
            response = client.get(source, params=params)
            if response.is_error:  # httpx's own error quotes the whole URL
                raise RuntimeError(f"events feed {source}: HTTP {response.status_code}")
            page = response.json()
            events = page.get("events", [])
            if not events:
                break
            part = ingest(conn, events)
            conn.execute(
                "insert into winback.feedback_cursors (source, position) values (%s, %s) "
                "on conflict (source) do update set position = excluded.position, "
                "updated_at = now()",
                (source, page["next"]),
            )
            conn.commit()
            for name in (
                "received",
                "stored",
                "duplicates",
                "suppressions_added",
                "suppressions_lifted",
                "ignored",
            ):
                setattr(total, name, getattr(total, name) + getattr(part, name))
    log.info("feedback for %s: %s", run_date, asdict(total))
    return {"source": source, **asdict(total)}
