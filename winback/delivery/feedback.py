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
webhook receiver calls with the posted events.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime

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


def events_url() -> str | None:
    if not is_configured(EVENTS_CONN_ID):
        return None
    conn = connection(EVENTS_CONN_ID)
    return conn.extra.get("url") or conn.base_url


def collect(conn: psycopg.Connection, run_date: date | None = None, url: str | None = None) -> dict:
    """Poll the events endpoint from the stored cursor and ingest every page.

    Each page and the cursor after it commit together: a crash re-reads at most one page,
    and re-reading changes nothing.
    """
    url = url or events_url()
    if not url:
        log.info("no events source configured (%s): no feedback collected", EVENTS_CONN_ID)
        return {"source": None}
    tables.ensure_schema(conn)
    conn.commit()
    source = url.split("?")[0]
    total = IngestResult()
    with httpx.Client(timeout=30) as client:
        while True:
            row = conn.execute(
                "select position from winback.feedback_cursors where source = %s", (source,)
            ).fetchone()
            after = row[0] if row else 0
            response = client.get(url, params={"after": after, "limit": PAGE_SIZE})
            response.raise_for_status()
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
