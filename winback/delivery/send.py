"""The send loop: each open ledger row delivered through its provider, exactly once.

For one channel: rows no longer sendable are recorded `skipped`; the others get their
intent recorded in chunks (`sending`), then a pool of workers, within the provider's
limits, sends each and records the outcome. An answer that leaves it open whether the
provider acted is looked up before anything is resent (see `winback.delivery.ledger`).
Each provider gets a token bucket and a cap on concurrent requests, and a Retry-After
pauses the whole provider.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime

import psycopg

from winback.delivery.ledger import LedgerWriter, SyncResult, record_skipped
from winback.delivery.providers import MessageProvider, Outcome, OutgoingMessage, SendResult
from winback.delivery.providers.ratelimit import Limiter

log = logging.getLogger(__name__)

# Calls per row within one run before it is left as `retry` for the next run, and calls in
# all runs before a row that never got through is given up as rejected.
ATTEMPTS_PER_RUN = 6
MAX_ATTEMPTS = 20
INTENT_CHUNK = 500


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


async def sync_channel(
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
    record_skipped(conn, provider.name, run_date, skipped)
    if skipped:
        result.count(provider.name, "skipped", len(skipped))
    queue: asyncio.Queue = asyncio.Queue(maxsize=INTENT_CHUNK * 2)
    workers = max(1, provider.limits.max_concurrency)

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

    try:
        await asyncio.gather(produce(), *(work() for _ in range(workers)))
    finally:
        ledger.flush()
        await provider.aclose()


async def with_backoff(attempt: int) -> None:
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
            await with_backoff(attempt)
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
                await with_backoff(attempt)
            continue
        # Unclear: the provider may have it. Never send again before asking.
        if not provider.can_lookup:
            return "unclear", last, calls
        settled, found = await _lookup(provider, limiter, message, since)
        if not settled:
            return "sending", last, calls
        if found:
            return "acknowledged", found, calls
        await with_backoff(attempt)
    return "retry", last, calls
