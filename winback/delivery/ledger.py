"""The send ledger: what was sent, exactly once in effect.

The send ledger (`winback.send_ledger`, one row per outbox row and mode) is the single
source of truth of what was sent:

1. before a provider is called, the row's intent is committed (`sending`);
2. the provider's answer decides the row: `acknowledged` with the provider's message id
   (the only status that means sent), `rejected` with the provider's reason (never
   resent), `retry` (certainly not accepted: 429, 4xx SMTP reply, connection refused;
   sent again, in this run after a back-off and in later runs) or, for a provider that
   cannot look a message up, `unclear` (left for an operator);
3. an answer that leaves it open whether the provider acted (timeout, 5xx, lost
   connection) is reconciled with the provider (a lookup by our idempotency key or its
   trace) before anything is resent; so is every row a killed run left in `sending`.

Consent and suppression are checked again at send time against `marts.customer_features`
and `winback.suppressions` (filled by `winback.delivery.feedback`, collected at the start
of a live run): `candidates` says why a row may no longer be sent, and such a row is
`skipped`, with the reason. In dry-run mode the intent is recorded as `would_send` and
nothing is called.

The send loop that drives these transitions is `winback.delivery.send`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime

import psycopg
from psycopg.rows import dict_row

from winback.delivery import feedback
from winback.warehouse import tables

log = logging.getLogger(__name__)

PROVIDER_BY_CHANNEL = {"email": "smtp", "sms": "twilio", "popup": "popup_export"}
FLUSH_EVERY_ROWS = 500
FLUSH_EVERY_SECONDS = 0.5
# A row scheduled for later (send_at, e.g. moved out of SMS quiet hours) is sent by the
# first live run after its time, within this window; later than that, its time slot is
# gone (it might now fall in quiet hours), so it is skipped with the reason.
SEND_WINDOW_HOURS = 3


@contextmanager
def committed(conn: psycopg.Connection) -> Iterator[None]:
    """A transaction of its own, committed when the block ends.

    psycopg opens a transaction implicitly on a connection's first statement; a
    `conn.transaction()` block inside it is only a savepoint, undone by the caller's
    rollback (or lost with the process). What the sync writes must survive a crash the
    moment it is written, so an open implicit transaction (reads only, in the sync) is
    committed first.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.commit()
    with conn.transaction():
        yield


def ensure_schema(conn: psycopg.Connection) -> None:
    """The outbox, the ledger, audience state and feedback: every table of winback's,
    from their one home (`winback.warehouse.tables`)."""
    tables.ensure_schema(conn)


@dataclass
class SyncResult:
    mode: str
    run_date: date
    recorded: int
    by_channel: dict[str, int]
    # provider -> ledger status (or audience outcome) -> rows, for this run's decisions
    by_provider: dict[str, dict[str, int]] = field(default_factory=dict)
    deferred: int = 0
    feedback: dict | None = None
    # provider -> why it was paused for this run (credentials, account, sender queue)
    paused: dict[str, str] = field(default_factory=dict)

    def count(self, provider: str, status: str, n: int = 1) -> None:
        self.by_provider.setdefault(provider, {}).setdefault(status, 0)
        self.by_provider[provider][status] += n


# --------------------------------------------------------------------------- dry run


def dry_run(conn: psycopg.Connection, run_date: date) -> SyncResult:
    """Record, for every outbox row of `run_date` not yet in the ledger, what would be sent.

    Keyed by the outbox's idempotency key, so a rerun records nothing new.
    """
    ensure_schema(conn)
    with committed(conn):
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
    result = SyncResult("dry_run", run_date, len(rows), by_provider)
    for provider, n in by_provider.items():
        result.count(provider, "would_send", n)
    return result


def candidates(conn: psycopg.Connection, run_date: date) -> list[dict]:
    """Rows to act on: the day's new outbox rows that are due, and earlier rows still open
    (`sending` to reconcile, `retry` to send again), each with why it may not be sent."""
    # `send_at` (the campaigns stage's schedule, e.g. out of SMS quiet hours) is a column
    # of every outbox (winback.warehouse.tables).
    _schedule_later_rows(conn, run_date)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""
            with open_rows as (
                select o.*, l.status as ledger_status, l.intent_recorded_at, l.attempts,
                       l.unclear_since
                from winback.outbox o
                left join winback.send_ledger l
                  on l.idempotency_key = o.idempotency_key and l.mode = 'live'
                where (l.idempotency_key is null and o.run_date = %(run_date)s
                       and (o.send_at is null or o.send_at <= now()))
                   or (l.status in ('sending', 'retry') and l.run_date <= %(run_date)s)
                   or (l.status = 'scheduled' and o.send_at <= now()
                       and l.run_date <= %(run_date)s)
            )
            select r.idempotency_key, r.customer_id, r.campaign_id, r.channel,
                   r.payload, r.ledger_status, r.intent_recorded_at, r.unclear_since,
                   coalesce(r.attempts, 0) as attempts,
                   case
                       when r.ledger_status = 'scheduled'
                            and r.send_at < now() - make_interval(hours => %(window)s)
                           then 'send window missed: it was scheduled for '
                           || to_char(r.send_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI "UTC"')
                       when r.channel not in ('email', 'sms') then null
                       when f.customer_id is null then 'customer no longer in customer_features'
                       when r.channel = 'email' and not f.is_email_subscribed
                           then 'email consent withdrawn before send'
                       when r.channel = 'email' and f.is_email_suppressed
                           then 'email suppressed before send'
                       when r.channel = 'sms' and not f.is_sms_subscribed
                           then 'SMS consent withdrawn before send'
                       when r.channel = 'sms' and f.is_sms_suppressed
                           then 'SMS suppressed before send'
                       when s.address_hash is not null
                           then 'on the suppression list: ' || s.reason
                   end as not_sendable_because
            from open_rows r
            left join marts.customer_features f on f.customer_id = r.customer_id
            left join winback.suppressions s
              on s.channel = r.channel
             and s.address_hash = {feedback.ADDRESS_HASH_SQL.format("r.payload ->> 'to'")}
            order by r.idempotency_key
            """,
            {"run_date": run_date, "window": SEND_WINDOW_HOURS},
        ).fetchall()


def _schedule_later_rows(conn, run_date: date) -> None:
    """The day's rows due later: recorded `scheduled` by this live run, for a later one."""
    with committed(conn):
        conn.execute(
            """
            insert into winback.send_ledger
                (idempotency_key, mode, status, provider, run_date, updated_at)
            select o.idempotency_key, 'live', 'scheduled',
                   case o.channel when 'email' then %(email)s when 'sms' then %(sms)s
                        else %(popup)s end,
                   o.run_date, now()
            from winback.outbox o
            where o.run_date = %(run_date)s and o.send_at > now()
            on conflict (idempotency_key, mode) do nothing
            """,
            {"run_date": run_date, **PROVIDER_BY_CHANNEL},
        )


def deferred(conn, run_date: date) -> int:
    return conn.execute(
        "select count(*) from winback.outbox o join winback.send_ledger l"
        " on l.idempotency_key = o.idempotency_key and l.mode = 'live'"
        " where l.status = 'scheduled' and l.run_date <= %s and o.send_at > now()",
        (run_date,),
    ).fetchone()[0]


class LedgerWriter:
    """Intent before the call, outcomes after, written in batches.

    Outcomes are buffered and flushed every `FLUSH_EVERY_ROWS` rows or
    `FLUSH_EVERY_SECONDS`; a row whose outcome was lost to a crash stays `sending` and is
    reconciled by the next run, so batching never loses or repeats a message.
    """

    def __init__(self, conn: psycopg.Connection, provider: str, run_date: date):
        self.conn, self.provider, self.run_date = conn, provider, run_date
        self._pending: list[tuple[str, str, str | None, str | None, int, datetime | None]] = []
        self._last_flush = time.monotonic()

    def record_intent(self, keys: list[str]) -> None:
        with committed(self.conn):
            self.conn.execute(
                """
                insert into winback.send_ledger
                    (idempotency_key, mode, status, provider, run_date, updated_at)
                select key, 'live', 'sending', %s, %s, now() from unnest(%s::text[]) key
                on conflict (idempotency_key, mode) do update
                    set status = 'sending', updated_at = now()
                    where send_ledger.status in ('retry', 'sending', 'scheduled')
                """,
                (self.provider, self.run_date, keys),
            )

    def record(
        self,
        key: str,
        status: str,
        message_id=None,
        error=None,
        attempts: int = 0,
        unclear_since: datetime | None = None,
    ) -> None:
        """Buffer an outcome. A row kept `sending` (the provider may have it, and could not
        yet be trusted to say it has not) keeps `unclear_since`: the given time, else the
        one already recorded, else now."""
        self._pending.append((key, status, message_id, error, attempts, unclear_since))
        if (
            len(self._pending) >= FLUSH_EVERY_ROWS
            or time.monotonic() - self._last_flush > FLUSH_EVERY_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        # One update per key: a row recorded twice in a buffer (kept `sending`, then settled
        # by a recheck in the same run) ends as its last record, with its calls summed;
        # two source rows for one target would let PostgreSQL pick either.
        merged: dict[str, tuple] = {}
        for key, status, message_id, error, calls, since in rows:
            earlier = merged.get(key)
            if earlier is not None:
                calls += earlier[4]
                since = since or earlier[5]
            merged[key] = (key, status, message_id, error, calls, since)
        keys, statuses, ids, errors, attempts, unclear = (
            list(column) for column in zip(*merged.values(), strict=True)
        )
        with committed(self.conn):
            self.conn.execute(
                """
                update winback.send_ledger l set
                    status = v.status,
                    provider_message_id = coalesce(v.message_id, l.provider_message_id),
                    acknowledged_at = case when v.status = 'acknowledged' then now()
                                           else l.acknowledged_at end,
                    error = v.error,
                    attempts = l.attempts + v.attempts,
                    unclear_since = case when v.status = 'sending'
                        then coalesce(v.unclear_since, l.unclear_since, now())
                        else l.unclear_since end,
                    updated_at = now()
                from unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int[],
                            %s::timestamptz[])
                    as v(key, status, message_id, error, attempts, unclear_since)
                where l.idempotency_key = v.key and l.mode = 'live'
                  and l.status not in ('acknowledged', 'rejected', 'skipped')
                """,
                (keys, statuses, ids, errors, attempts, unclear),
            )


def record_skipped(conn, provider: str, run_date: date, rows: list[dict]) -> None:
    if not rows:
        return
    with committed(conn):
        conn.execute(
            """
            insert into winback.send_ledger
                (idempotency_key, mode, status, provider, run_date, error, updated_at)
            select key, 'live', 'skipped', %s, %s, why, now()
            from unnest(%s::text[], %s::text[]) as v(key, why)
            on conflict (idempotency_key, mode) do update
                set status = 'skipped', error = excluded.error, updated_at = now()
                where send_ledger.status in ('retry', 'scheduled')
            """,
            (
                provider,
                run_date,
                [r["idempotency_key"] for r in rows],
                [r["not_sendable_because"] for r in rows],
            ),
        )
