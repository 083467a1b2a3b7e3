"""The send loop: each open ledger row delivered through its provider, exactly once.

For one channel: rows no longer sendable are recorded `skipped`; the others get their
intent recorded in chunks (`sending`), then a pool of workers, within the provider's
limits, sends each and records the outcome. Each provider gets a token bucket and a cap
on concurrent requests, and a Retry-After pauses the whole provider.

An answer that leaves it open whether the provider acted (timeout, 5xx, an unreadable
2xx, a run killed mid-call) is looked up before anything is resent, and a lookup that
does not find the message is believed only once the provider can be trusted to list it:
`provider.negative_lookup_trusted_after` seconds after the last request that may have been
accepted (`unclear_since`). A row whose bound ends within `LOOKUP_WAIT_IN_RUN_SECONDS` is
looked up again later in the same run; one whose bound ends later stays `sending` for a
later run. An answer about the account or the sender (bad credentials, a full sender
queue) pauses the provider for the run: the rows not yet sent stay `retry`, and the run
reports the pause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg

from winback.delivery.ledger import LedgerWriter, SyncResult, record_skipped
from winback.delivery.providers import MessageProvider, Outcome, OutgoingMessage, SendResult
from winback.delivery.providers.ratelimit import Limiter
from winback.orchestration import progress

log = logging.getLogger(__name__)

# Calls per row within one run before it is left as `retry` for the next run, and calls in
# all runs before a row that never got through is given up as rejected.
ATTEMPTS_PER_RUN = 6
MAX_ATTEMPTS = 20
INTENT_CHUNK = 500
# A negative lookup that becomes trustworthy within this long is awaited in the run.
LOOKUP_WAIT_IN_RUN_SECONDS = 60.0


@dataclass
class Delivery:
    """What happened to one row in this pass."""

    status: str  # the ledger status to record, or "recheck" (look up again in this run)
    outcome: SendResult | None = None
    calls: int = 0
    unclear_since: datetime | None = None  # kept with a row left `sending`
    trusted_at: datetime | None = None  # for "recheck": when a negative can be believed


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


class ChannelRun:
    """One channel's rows through one provider: the shared state of the workers."""

    def __init__(self, conn, provider: MessageProvider, run_date: date, result: SyncResult):
        self.provider, self.result = provider, result
        self.ledger = LedgerWriter(conn, provider.name, run_date)
        self.limiter = Limiter(provider.limits)
        self.paused_because: str | None = None
        self.rechecks: list[tuple[dict, Delivery]] = []
        self.send_seconds = 0.0  # time spent in provider.send, for the latency check
        self.sends = 0
        self.watch: progress.SendProgress | None = None  # progress lines, counts only

    def pause(self, reason: str) -> None:
        if self.paused_because is None:
            self.paused_because = reason
            self.result.paused[self.provider.name] = reason
            log.error(
                "%s refused the account or sender (%s): paused for this run; its rows stay"
                " `retry` and are sent by the next run once the cause is fixed",
                self.provider.name,
                reason,
            )

    def record(self, row: dict, delivery: Delivery) -> None:
        key, status, outcome = row["idempotency_key"], delivery.status, delivery.outcome
        if status == "skipped":
            self.ledger.record(key, "skipped", None, row["not_sendable_because"])
        elif status == "retry" and row["attempts"] + delivery.calls >= MAX_ATTEMPTS:
            status = "rejected"
            reason = f"gave up after {MAX_ATTEMPTS} attempts: {outcome.reason if outcome else ''}"
            self.ledger.record(key, status, None, reason, delivery.calls)
        else:
            self.ledger.record(
                key,
                status,
                outcome.provider_message_id if outcome else None,
                outcome.reason if outcome and status != "acknowledged" else None,
                delivery.calls,
                delivery.unclear_since,
            )
        self.result.count(self.provider.name, status)
        if self.watch is not None:
            self.watch.record(status)

    async def send(self, message: OutgoingMessage) -> SendResult:
        async with self.limiter:
            started = time.monotonic()
            outcome = await self.provider.send(message)
            self.send_seconds += time.monotonic() - started
            self.sends += 1
        return outcome

    def check_concurrency(self) -> None:
        """Warn when the measured latency means the connections cannot reach the rate."""
        if not self.sends:
            return
        latency = self.send_seconds / self.sends
        limits = self.provider.limits
        needed = limits.requests_per_second * latency
        if needed > limits.max_concurrency:
            log.warning(
                "%s: %d connections at %.0f ms per request reach at most %.0f of %.0f"
                " requests/s; set max_concurrency to about %d",
                self.provider.name,
                limits.max_concurrency,
                latency * 1000,
                limits.max_concurrency / latency,
                limits.requests_per_second,
                int(needed * 1.5) + 1,
            )


async def sync_channel(
    conn: psycopg.Connection,
    provider: MessageProvider,
    rows: list[dict],
    run_date: date,
    result: SyncResult,
) -> None:
    state = ChannelRun(conn, provider, run_date, result)
    # Not sendable any more: record why. A row left `sending` may already be at the
    # provider, so it is reconciled first and only skipped if the provider lacks it.
    sendable, skipped = [], []
    for row in rows:
        if row["not_sendable_because"] and row["ledger_status"] != "sending":
            skipped.append(row)
        else:
            sendable.append(row)
    record_skipped(conn, provider.name, run_date, skipped)
    if skipped:
        result.count(provider.name, "skipped", len(skipped))
    workers = max(1, provider.limits.max_concurrency)
    state.watch = progress.SendProgress.of(provider, rows, total=len(sendable))
    try:
        await _run_pass(state, sendable, workers, record_intent=True)
        # Rows whose negative lookup becomes trustworthy soon: looked up again, then sent
        # only if still absent. A row unclear again goes round once more, within bounds.
        for _ in range(ATTEMPTS_PER_RUN):
            if not state.rechecks or state.paused_because:
                break
            due = max(delivery.trusted_at for _, delivery in state.rechecks)
            await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
            rows_again = [
                {**row, "ledger_status": "sending", "unclear_since": delivery.unclear_since}
                for row, delivery in state.rechecks
            ]
            state.rechecks = []
            await _run_pass(state, rows_again, workers, record_intent=False)
        for row, delivery in state.rechecks:  # still unsettled: a later run looks again
            state.record(row, Delivery("sending", delivery.outcome, 0, delivery.unclear_since))
    finally:
        state.ledger.flush()
        state.check_concurrency()
        await provider.aclose()
    state.watch.finish()


async def _run_pass(state: ChannelRun, rows: list[dict], workers: int, record_intent: bool):
    queue: asyncio.Queue = asyncio.Queue(maxsize=INTENT_CHUNK * 2)

    async def produce() -> None:
        for start in range(0, len(rows), INTENT_CHUNK):
            chunk = rows[start : start + INTENT_CHUNK]
            if record_intent:
                state.ledger.record_intent([row["idempotency_key"] for row in chunk])
            for row in chunk:
                await queue.put(row)
        for _ in range(workers):
            await queue.put(None)

    async def work() -> None:
        while (row := await queue.get()) is not None:
            try:
                delivery = await _deliver(state, row)
            except Exception as error:  # noqa: BLE001  one row's failure, never the channel's
                delivery = _raised(state, error)
            if delivery.status == "recheck":
                # Keep the time in the ledger now: a kill before the recheck must not lose it.
                key, since = row["idempotency_key"], delivery.unclear_since
                state.ledger.record(key, "sending", None, None, delivery.calls, since)
                row = {**row, "attempts": row["attempts"] + delivery.calls}
                state.rechecks.append((row, delivery))
            else:
                state.record(row, delivery)

    await asyncio.gather(produce(), *(work() for _ in range(workers)))


async def with_backoff(attempt: int) -> None:
    await asyncio.sleep(min(2.0, 0.05 * 2**attempt))


async def _lookup(
    state: ChannelRun, message: OutgoingMessage, since: datetime
) -> tuple[bool, SendResult | None]:
    """(settled, found): settled is False when the provider could not be asked."""
    for attempt in range(ATTEMPTS_PER_RUN):
        try:
            async with state.limiter:
                return True, await state.provider.lookup(message, since)
        except Exception as error:  # noqa: BLE001  any failure of the lookup: ask again
            log.debug("lookup failed (%s), attempt %d", type(error).__name__, attempt + 1)
            await with_backoff(attempt)
    return False, None


async def _reconcile(
    state: ChannelRun,
    message: OutgoingMessage,
    since: datetime,
    unclear_since: datetime,
    last: SendResult | None,
    calls: int,
) -> Delivery | None:
    """Ask the provider about a message it may have; None when it can be trusted to say
    it does not have it (the caller may then send), else what to record."""
    settled, found = await _lookup(state, message, since)
    if found:
        return Delivery("acknowledged", found, calls)
    if not settled:
        return Delivery("sending", last, calls, unclear_since)
    trusted_at = unclear_since + timedelta(seconds=state.provider.negative_lookup_trusted_after)
    wait = (trusted_at - datetime.now(UTC)).total_seconds()
    if wait <= 0:
        return None
    if wait <= LOOKUP_WAIT_IN_RUN_SECONDS:
        return Delivery("recheck", last, calls, unclear_since, trusted_at)
    reason = f"not listed yet; trusted absent after {trusted_at:%Y-%m-%d %H:%M:%S} UTC"
    return Delivery("sending", SendResult(Outcome.UNCLEAR, reason=reason), calls, unclear_since)


def _raised(state: ChannelRun, error: Exception) -> Delivery:
    """What to record for a row whose delivery raised instead of answering (a provider
    adapter's bug, a message it could not handle). The request may have gone out, so the
    row is treated as unclear: looked up by a later run where the provider can say, else
    left `unclear` for an operator; never resent blindly. The reason names the exception's
    type only: its text may quote the message, and so customer data."""
    reason = f"{type(error).__name__} raised while sending"
    log.error("%s: a row's delivery raised %s; recorded as unclear", state.provider.name, reason)
    outcome = SendResult(Outcome.UNCLEAR, reason=reason)
    if state.provider.can_lookup:
        return Delivery("sending", outcome, 1, datetime.now(UTC))
    return Delivery("unclear", outcome, 1)


async def _deliver(state: ChannelRun, row: dict) -> Delivery:
    """What to record for one row whose intent is recorded."""
    provider = state.provider
    message = _message(row)
    since = row["intent_recorded_at"] or datetime.now(UTC)
    calls = 0
    if row["ledger_status"] == "sending":  # a previous pass or run may have sent it
        if state.paused_because:  # the provider refuses the account: it cannot be asked
            return Delivery("sending", None, 0, row.get("unclear_since"))
        if not provider.can_lookup:
            return Delivery("unclear", SendResult(Outcome.UNCLEAR, reason="left sending by a run"))
        # A killed run never recorded when its last request went out: count from now,
        # which is later than that, so the bound is only ever longer than needed.
        unclear_since = row.get("unclear_since") or datetime.now(UTC)
        pending = await _reconcile(state, message, since, unclear_since, None, 0)
        if pending is not None:
            return pending
        if row["not_sendable_because"]:
            return Delivery("skipped")
    last: SendResult | None = None
    for attempt in range(ATTEMPTS_PER_RUN):
        if state.paused_because:
            return Delivery("retry", SendResult(Outcome.PAUSED, reason=state.paused_because))
        last = await state.send(message)
        calls += 1
        if last.outcome is Outcome.ACCEPTED:
            return Delivery("acknowledged", last, calls)
        if last.outcome is Outcome.REJECTED:
            return Delivery("rejected", last, calls)
        if last.outcome is Outcome.PAUSED:
            state.pause(last.reason or "refused")
            # Refused before anything was sent, and not the message's fault: no attempt.
            return Delivery("retry", last, 0)
        if last.outcome is Outcome.RETRY:
            if last.retry_after is not None:
                state.limiter.bucket.pause(last.retry_after)
            else:
                await with_backoff(attempt)
            continue
        # Unclear: the provider may have it. Never send again before it can say it has not.
        if not provider.can_lookup:
            return Delivery("unclear", last, calls)
        pending = await _reconcile(state, message, since, datetime.now(UTC), last, calls)
        if pending is not None:
            return pending
        await with_backoff(attempt)
    return Delivery("retry", last, calls)
