"""Provider sync of the outbox, exactly once in effect.

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
and `winback.suppressions` (filled by `winback.delivery.feedback`, collected at the start of a live
run): a customer who withdrew consent after the audience was built is `skipped`, with the
reason. Each provider gets a token bucket and a cap on concurrent requests, and a
Retry-After pauses the whole provider.

Audience providers (Mailchimp tags, a Meta Custom Audience) mirror membership instead:
`winback.audience_members` remembers what each provider holds, and a run sends only the
difference: adds for customers who entered, removes for those who left.

In dry-run mode the intent is recorded as `would_send` and nothing is called.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import psycopg
from psycopg.rows import dict_row

from winback.campaigns.audiences import ensure_app_schema
from winback.delivery import feedback
from winback.delivery.providers import (
    AudienceProvider,
    Member,
    MemberChange,
    MessageProvider,
    Outcome,
    OutgoingMessage,
    SendResult,
    is_configured,
)
from winback.delivery.providers.ratelimit import Limiter
from winback.orchestration import progress

log = logging.getLogger(__name__)

PROVIDER_BY_CHANNEL = {"email": "smtp", "sms": "twilio", "popup": "popup_export"}
MODES = ("dry_run", "live")
# Calls per row within one run before it is left as `retry` for the next run, and calls in
# all runs before a row that never got through is given up as rejected.
ATTEMPTS_PER_RUN = 6
MAX_ATTEMPTS = 20
INTENT_CHUNK = 500
FLUSH_EVERY_ROWS = 500
FLUSH_EVERY_SECONDS = 0.5
AUDIENCE_SLICE = 100_000
# A row scheduled for later (send_at, e.g. moved out of SMS quiet hours) is sent by the
# first live run after its time, within this window; later than that, its time slot is
# gone (it might now fall in quiet hours), so it is skipped with the reason.
SEND_WINDOW_HOURS = 3

LEDGER_DDL = """
create table if not exists winback.send_ledger (
    idempotency_key text not null references winback.outbox (idempotency_key),
    mode text not null check (mode in ('dry_run', 'live')),
    status text not null,
    provider text not null,
    provider_message_id text,
    run_date date not null,
    intent_recorded_at timestamptz not null default now(),
    acknowledged_at timestamptz,
    error text,
    primary key (idempotency_key, mode)
);
alter table winback.send_ledger add column if not exists attempts integer not null default 0;
alter table winback.send_ledger add column if not exists updated_at timestamptz;
create index if not exists send_ledger_open_rows on winback.send_ledger (mode, status)
    where status in ('sending', 'retry', 'unclear');
create index if not exists send_ledger_provider_message_id
    on winback.send_ledger (provider_message_id);
comment on table winback.send_ledger is
    'Intent and acknowledgement of every send: sending (intent recorded, outcome not yet '
    'known), acknowledged (provider id), rejected (reason), retry, unclear, skipped '
    '(consent or suppression at send time); dry runs are recorded as would_send.';

create table if not exists winback.audience_members (
    provider text not null,
    audience text not null,
    customer_id text not null,
    is_member boolean not null default false,
    pending_action text check (pending_action in ('add', 'remove')),
    status text not null,
    error text,
    attempts integer not null default 0,
    updated_at timestamptz not null default now(),
    primary key (provider, audience, customer_id)
);
comment on table winback.audience_members is
    'What each audience provider holds (is_member, as acknowledged) and changes in flight.';
"""


def ensure_schema(conn: psycopg.Connection) -> None:
    ensure_app_schema(conn)
    conn.execute(LEDGER_DDL)
    feedback.ensure_schema(conn)


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

    def count(self, provider: str, status: str, n: int = 1) -> None:
        self.by_provider.setdefault(provider, {}).setdefault(status, 0)
        self.by_provider[provider][status] += n


# --------------------------------------------------------------------------- dry run


def dry_run(conn: psycopg.Connection, run_date: date) -> SyncResult:
    """Record, for every outbox row of `run_date` not yet in the ledger, what would be sent.

    Keyed by the outbox's idempotency key, so a rerun records nothing new.
    """
    ensure_schema(conn)
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
    result = SyncResult("dry_run", run_date, len(rows), by_provider)
    for provider, n in by_provider.items():
        result.count(provider, "would_send", n)
    return result


# --------------------------------------------------------------------------- providers


def message_providers() -> dict[str, MessageProvider]:
    """channel -> provider, from the configured Airflow connections."""
    from winback.delivery.providers import popup, smtp, twilio

    providers: dict[str, MessageProvider] = {"popup": popup.from_connection()}
    if is_configured(smtp.CONN_ID):
        providers["email"] = smtp.SmtpEmail.from_connection()
    if is_configured(twilio.CONN_ID):
        providers["sms"] = twilio.TwilioSms.from_connection()
    return providers


def audience_providers() -> dict[str, AudienceProvider]:
    from winback.delivery.providers import mailchimp, meta

    providers: dict[str, AudienceProvider] = {}
    if is_configured(mailchimp.CONN_ID):
        providers["mailchimp"] = mailchimp.MailchimpAudience.from_connection()
    if is_configured(meta.CONN_ID):
        providers["meta"] = meta.MetaCustomAudienceFile.from_connection()
    return providers


# --------------------------------------------------------------------------- live run


def run(
    conn: psycopg.Connection,
    run_date: date,
    mode: str = "dry_run",
    providers: dict[str, MessageProvider] | None = None,
    audiences: dict[str, AudienceProvider] | None = None,
    collect_feedback: bool = True,
) -> SyncResult:
    """Sync `run_date`'s outbox (and retries of earlier days) and the audiences.

    `providers` maps a channel to its message provider and `audiences` names the audience
    providers; both default to the configured connections. A channel without a provider
    is left untouched (its rows wait in the outbox, and are logged).
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: use one of {MODES}")
    if mode == "dry_run":
        result = dry_run(conn, run_date)
        for name, changes in audience_diff_counts(conn, run_date, audiences).items():
            for action, n in changes.items():
                result.count(name, f"would_{action}", n)
        return result
    ensure_schema(conn)
    conn.commit()
    result = SyncResult("live", run_date, 0, {})
    if collect_feedback:
        result.feedback = feedback.collect(conn, run_date)
    providers = message_providers() if providers is None else providers
    candidates = _candidates(conn, run_date)
    conn.commit()
    by_channel: dict[str, list[dict]] = defaultdict(list)
    for row in candidates:
        by_channel[row["channel"]].append(row)
    progress.log_send_capacity(progress.send_plans(providers, by_channel), SEND_WINDOW_HOURS)
    for channel, rows in sorted(by_channel.items()):
        provider = providers.get(channel)
        if provider is None:
            log.warning("no provider configured for %s: %d rows wait", channel, len(rows))
            result.count(f"unconfigured:{channel}", "waiting", len(rows))
            continue
        result.by_channel[channel] = len(rows)
        asyncio.run(_sync_channel(conn, provider, rows, run_date, result))
    result.deferred = _deferred(conn, run_date)
    audiences = audience_providers() if audiences is None else audiences
    for name, provider in audiences.items():
        asyncio.run(_sync_audience(conn, name, provider, run_date, result))
    log.info("live sync for %s: %s", run_date, result.by_provider)
    return result


def _candidates(conn: psycopg.Connection, run_date: date) -> list[dict]:
    """Rows to act on: the day's new outbox rows that are due, and earlier rows still open
    (`sending` to reconcile, `retry` to send again), each with why it may not be sent."""
    # `send_at` (the campaigns stage's schedule, e.g. out of SMS quiet hours) is a column
    # of every outbox: audiences.ensure_app_schema adds it.
    _schedule_later_rows(conn, run_date)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""
            with open_rows as (
                select o.*, l.status as ledger_status, l.intent_recorded_at, l.attempts
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
                   r.payload, r.ledger_status, r.intent_recorded_at,
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
    with conn.transaction():
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


def _deferred(conn, run_date: date) -> int:
    return conn.execute(
        "select count(*) from winback.outbox o join winback.send_ledger l"
        " on l.idempotency_key = o.idempotency_key and l.mode = 'live'"
        " where l.status = 'scheduled' and l.run_date <= %s and o.send_at > now()",
        (run_date,),
    ).fetchone()[0]


def _message(row: dict) -> OutgoingMessage:
    payload = row["payload"] or {}
    return OutgoingMessage(
        idempotency_key=row["idempotency_key"],
        customer_id=row["customer_id"],
        campaign_id=row["campaign_id"],
        channel=row["channel"],
        to=payload.get("to"),
        subject=payload.get("subject"),
        body=payload.get("body") or "",
    )


class LedgerWriter:
    """Intent before the call, outcomes after, written in batches.

    Outcomes are buffered and flushed every `FLUSH_EVERY_ROWS` rows or
    `FLUSH_EVERY_SECONDS`; a row whose outcome was lost to a crash stays `sending` and is
    reconciled by the next run, so batching never loses or repeats a message.
    """

    def __init__(self, conn: psycopg.Connection, provider: str, run_date: date):
        self.conn, self.provider, self.run_date = conn, provider, run_date
        self._pending: list[tuple[str, str, str | None, str | None, int]] = []
        self._last_flush = time.monotonic()

    def record_intent(self, keys: list[str]) -> None:
        with self.conn.transaction():
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

    def record(self, key: str, status: str, message_id=None, error=None, attempts: int = 0) -> None:
        self._pending.append((key, status, message_id, error, attempts))
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
        keys, statuses, ids, errors, attempts = (list(column) for column in zip(*rows, strict=True))
        with self.conn.transaction():
            self.conn.execute(
                """
                update winback.send_ledger l set
                    status = v.status,
                    provider_message_id = coalesce(v.message_id, l.provider_message_id),
                    acknowledged_at = case when v.status = 'acknowledged' then now()
                                           else l.acknowledged_at end,
                    error = v.error,
                    attempts = l.attempts + v.attempts,
                    updated_at = now()
                from unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int[])
                    as v(key, status, message_id, error, attempts)
                where l.idempotency_key = v.key and l.mode = 'live'
                  and l.status not in ('acknowledged', 'rejected', 'skipped')
                """,
                (keys, statuses, ids, errors, attempts),
            )


async def _sync_channel(
    conn: psycopg.Connection,
    provider: MessageProvider,
    rows: list[dict],
    run_date: date,
    result: SyncResult,
) -> None:
    ledger = LedgerWriter(conn, provider.name, run_date)
    limiter = Limiter(provider.limits)
    # Not sendable any more: record why. A row left `sending` may already be at the
    # provider, so it is reconciled first and only skipped if the provider lacks it.
    sendable, skipped = [], []
    for row in rows:
        if row["not_sendable_because"] and row["ledger_status"] != "sending":
            skipped.append(row)
        else:
            sendable.append(row)
    _record_skipped(conn, provider.name, run_date, skipped)
    if skipped:
        result.count(provider.name, "skipped", len(skipped))
    queue: asyncio.Queue = asyncio.Queue(maxsize=INTENT_CHUNK * 2)
    workers = max(1, provider.limits.max_concurrency)
    watch = progress.SendProgress.of(provider, rows, total=len(sendable))

    async def produce() -> None:
        for start in range(0, len(sendable), INTENT_CHUNK):
            chunk = sendable[start : start + INTENT_CHUNK]
            ledger.record_intent([row["idempotency_key"] for row in chunk])
            for row in chunk:
                await queue.put(row)
        for _ in range(workers):
            await queue.put(None)

    async def work() -> None:
        while (row := await queue.get()) is not None:
            status, outcome, attempts = await _deliver(provider, limiter, row)
            if status == "skipped":
                ledger.record(row["idempotency_key"], "skipped", None, row["not_sendable_because"])
            elif row["attempts"] + attempts >= MAX_ATTEMPTS and status == "retry":
                status = "rejected"
                reason = f"gave up after {MAX_ATTEMPTS} attempts: {outcome.reason}"
                ledger.record(row["idempotency_key"], status, None, reason, attempts)
            else:
                ledger.record(
                    row["idempotency_key"],
                    status,
                    outcome.provider_message_id if outcome else None,
                    outcome.reason if outcome and status != "acknowledged" else None,
                    attempts,
                )
            result.count(provider.name, status)
            watch.record(status)

    try:
        await asyncio.gather(produce(), *(work() for _ in range(workers)))
    finally:
        ledger.flush()
        await provider.aclose()
    watch.finish()


def _record_skipped(conn, provider: str, run_date: date, rows: list[dict]) -> None:
    if not rows:
        return
    with conn.transaction():
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


async def _with_backoff(attempt: int) -> None:
    await asyncio.sleep(min(2.0, 0.05 * 2**attempt))


async def _lookup(
    provider: MessageProvider, limiter: Limiter, message: OutgoingMessage, since: datetime
) -> tuple[bool, SendResult | None]:
    """(settled, found): settled is False when the provider could not be asked."""
    for attempt in range(ATTEMPTS_PER_RUN):
        try:
            async with limiter:
                return True, await provider.lookup(message, since)
        except Exception as error:  # noqa: BLE001  any failure of the lookup: ask again
            log.debug("lookup failed (%s), attempt %d", type(error).__name__, attempt + 1)
            await _with_backoff(attempt)
    return False, None


async def _deliver(
    provider: MessageProvider, limiter: Limiter, row: dict
) -> tuple[str, SendResult | None, int]:
    """(ledger status, last outcome, calls made) for one row whose intent is recorded."""
    message = _message(row)
    since = row["intent_recorded_at"] or datetime.now(UTC)
    calls = 0
    if row["ledger_status"] == "sending":  # a previous run may have sent it
        if not provider.can_lookup:
            return "unclear", SendResult(Outcome.UNCLEAR, reason="left sending by a run"), 0
        settled, found = await _lookup(provider, limiter, message, since)
        if not settled:
            return "sending", None, 0
        if found:
            return "acknowledged", found, 0
        if row["not_sendable_because"]:
            return "skipped", None, 0
    last: SendResult | None = None
    for attempt in range(ATTEMPTS_PER_RUN):
        async with limiter:
            last = await provider.send(message)
        calls += 1
        if last.outcome is Outcome.ACCEPTED:
            return "acknowledged", last, calls
        if last.outcome is Outcome.REJECTED:
            return "rejected", last, calls
        if last.outcome is Outcome.RETRY:
            if last.retry_after is not None:
                limiter.bucket.pause(last.retry_after)
            else:
                await _with_backoff(attempt)
            continue
        # Unclear: the provider may have it. Never send again before asking.
        if not provider.can_lookup:
            return "unclear", last, calls
        settled, found = await _lookup(provider, limiter, message, since)
        if not settled:
            return "sending", last, calls
        if found:
            return "acknowledged", found, calls
        await _with_backoff(attempt)
    return "retry", last, calls


# --------------------------------------------------------------------------- audiences


def _desired_members(conn, run_date: date) -> dict[tuple[str, str], Member]:
    """(audience, customer) -> member: each email campaign's latest treatment group up to
    `run_date`, with consent and suppression as they are now."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""
            with latest as (
                select campaign_id, max(run_date) as run_date
                from winback.campaign_audiences
                where run_date <= %(run_date)s and channel = 'email'
                group by campaign_id
            )
            select 'winback:' || a.campaign_id as audience, a.customer_id, f.email, f.phone,
                   f.is_email_subscribed
            from winback.campaign_audiences a
            join latest using (campaign_id, run_date)
            join marts.customer_features f on f.customer_id = a.customer_id
            left join winback.suppressions s
              on s.channel = 'email'
             and s.address_hash = {feedback.ADDRESS_HASH_SQL.format("f.email")}
            where a.assigned_group = 'treatment' and a.channel = 'email'
              and f.is_email_subscribed and not f.is_email_suppressed
              and s.address_hash is null and f.email is not null
            """,
            {"run_date": run_date, "window": SEND_WINDOW_HOURS},
        ).fetchall()
    return {
        (r["audience"], r["customer_id"]): Member(
            r["customer_id"], r["email"], r["phone"], bool(r["is_email_subscribed"])
        )
        for r in rows
    }


def _audience_changes(
    conn, name: str, run_date: date
) -> tuple[list[MemberChange], list[MemberChange]]:
    """(changes to make, changes left `sending` by an earlier run, to reconcile first)."""
    desired = _desired_members(conn, run_date)
    with conn.cursor(row_factory=dict_row) as cur:
        current = {
            (r["audience"], r["customer_id"]): r
            for r in cur.execute(
                "select m.*, f.email, f.phone from winback.audience_members m "
                "left join marts.customer_features f using (customer_id) where m.provider = %s",
                (name,),
            )
        }
    changes, unsettled = [], []
    for key, member in desired.items():
        state = current.get(key)
        if state and state["is_member"]:
            continue
        if state and state["status"] == "rejected" and state["pending_action"] == "add":
            continue  # the provider refused this contact for good
        change = MemberChange(key[0], member, "add")
        (unsettled if state and state["status"] == "sending" else changes).append(change)
    for key, state in current.items():
        if state["is_member"] and key not in desired:
            member = Member(key[1], state["email"], state["phone"])
            change = MemberChange(key[0], member, "remove")
            (unsettled if state["status"] == "sending" else changes).append(change)
    return changes, unsettled


def audience_diff_counts(conn, run_date: date, audiences=None) -> dict[str, dict[str, int]]:
    """What a live run would change per audience provider (dry run: nothing recorded)."""
    ensure_schema(conn)
    names = list(audience_providers()) if audiences is None else list(audiences)
    counts = {}
    for name in names:
        changes, unsettled = _audience_changes(conn, name, run_date)
        counts[name] = {
            "add": sum(1 for c in changes + unsettled if c.action == "add"),
            "remove": sum(1 for c in changes + unsettled if c.action == "remove"),
        }
    return counts


def _record_audience(conn, name: str, changes: list[MemberChange], **columns) -> None:
    if not changes:
        return
    with conn.transaction():
        conn.execute(
            """
            insert into winback.audience_members
                (provider, audience, customer_id, is_member, pending_action, status, error,
                 attempts, updated_at)
            select %(provider)s, v.audience, v.customer_id,
                   case when %(status)s = 'synced' then v.action = 'add'
                        else v.action = 'remove' end,
                   v.action, %(status)s, v.error, 0, now()
            from unnest(%(audiences)s::text[], %(customers)s::text[], %(actions)s::text[],
                        %(errors)s::text[]) as v(audience, customer_id, action, error)
            on conflict (provider, audience, customer_id) do update set
                is_member = case when %(status)s = 'synced'
                                 then excluded.pending_action = 'add'
                                 else audience_members.is_member end,
                pending_action = case when %(status)s = 'synced' then null
                                      else excluded.pending_action end,
                status = %(status)s,
                error = excluded.error,
                attempts = audience_members.attempts
                           + case when %(status)s = 'sending' then 1 else 0 end,
                updated_at = now()
            """,
            {
                "provider": name,
                "status": columns["status"],
                "audiences": [c.audience for c in changes],
                "customers": [c.member.customer_id for c in changes],
                "actions": [c.action for c in changes],
                "errors": columns.get("errors") or [None] * len(changes),
            },
        )


async def _sync_audience(
    conn, name: str, provider: AudienceProvider, run_date: date, result: SyncResult
) -> None:
    try:
        changes, unsettled = _audience_changes(conn, name, run_date)
        progress.log_audience_changes(name, len(changes) + len(unsettled), provider.limits)
        if unsettled:
            done = await provider.reconcile(unsettled)
            _record_audience(conn, name, [c for c in unsettled if c in done], status="synced")
            if done:
                result.count(name, "reconciled", len(done))
            changes.extend(c for c in unsettled if c not in done)
        for start in range(0, len(changes), AUDIENCE_SLICE):
            pending = changes[start : start + AUDIENCE_SLICE]
            _record_audience(conn, name, pending, status="sending")
            for attempt in range(ATTEMPTS_PER_RUN):
                outcome = await provider.apply(pending)
                _record_audience(conn, name, outcome.accepted, status="synced")
                _record_audience(
                    conn,
                    name,
                    [c for c, _ in outcome.rejected],
                    status="rejected",
                    errors=[e for _, e in outcome.rejected],
                )
                for change in outcome.accepted:
                    result.count(name, "added" if change.action == "add" else "removed")
                if outcome.rejected:
                    result.count(name, "rejected", len(outcome.rejected))
                pending = [c for c, _ in outcome.retry]
                if not pending:
                    break
                await _with_backoff(attempt)
            if pending:  # left for the next run
                _record_audience(
                    conn, name, pending, status="retry", errors=[e for _, e in outcome.retry]
                )
                result.count(name, "retry", len(pending))
    finally:
        await provider.aclose()
