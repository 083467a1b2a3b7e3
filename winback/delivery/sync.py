"""Provider sync of a day, exactly once in effect: the seam `pipeline.sync_outbox` calls.

Messages go through the send ledger (`winback.delivery.ledger`, the protocol) and the
send loop (`winback.delivery.send`); audiences through the audience mirror
(`winback.delivery.audience_mirror`); the providers come from the registry
(`winback.delivery.providers.registry`). In dry-run mode the intent is recorded as
`would_send` and nothing is called.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import date

import psycopg

from winback.delivery import feedback, ledger
from winback.delivery.audience_mirror import audience_diff_counts, sync_audience
from winback.delivery.ledger import SEND_WINDOW_HOURS, SyncResult, dry_run, ensure_schema
from winback.delivery.providers import AudienceProvider, MessageProvider
from winback.delivery.providers.registry import audience_providers, message_providers
from winback.delivery.send import sync_channel
from winback.orchestration import progress

log = logging.getLogger(__name__)


class ProvidersPaused(RuntimeError):
    """A live sync finished, but a provider refused the account or the sender (rotated
    credentials, a suspended account, a full sender queue): its rows wait as `retry` for
    the next run. Raised after everything else was synced, so the task fails visibly."""

    def __init__(self, result: SyncResult):
        self.result = result
        reasons = "; ".join(f"{name}: {why}" for name, why in sorted(result.paused.items()))
        super().__init__(f"providers paused for this run ({reasons}); counts {result.by_provider}")


MODES = ("dry_run", "live")


def made_with_demo_key(conn: psycopg.Connection, keys: list[str]) -> set[str]:
    """The outbox rows among `keys` whose codes the public demo secret made: anyone can
    compute their coupons, so a live sync never sends them. A row without a fingerprint
    (written before the column, or by hand) is not refused."""
    from winback.campaigns.personalization import DEMO_KEY_FINGERPRINT

    rows = conn.execute(
        "select idempotency_key from winback.outbox where idempotency_key = any(%s)"
        " and coupon_key_fingerprint = %s",
        (keys, DEMO_KEY_FINGERPRINT),
    )
    return {key for (key,) in rows}


async def _sync_channels(
    conn: psycopg.Connection,
    channels: list[tuple[MessageProvider, list[dict]]],
    run_date: date,
    result: SyncResult,
) -> None:
    """Every channel at once, each through its own provider and limiter: a slow SMS
    provider does not hold the emails back. They share one connection safely, because
    every ledger write is a synchronous call that finishes before another channel runs.
    A channel that raises does not stop the others; the first error is raised once all
    have finished."""
    outcomes = await asyncio.gather(
        *(sync_channel(conn, provider, rows, run_date, result) for provider, rows in channels),
        return_exceptions=True,
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


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
    is left untouched (its rows wait in the outbox, and are logged). Raises
    `ProvidersPaused` at the end when a provider refused the account or the sender.
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
    candidates = ledger.candidates(conn, run_date)
    demo_made = made_with_demo_key(conn, [row["idempotency_key"] for row in candidates])
    conn.commit()
    by_channel: dict[str, list[dict]] = defaultdict(list)
    for row in candidates:
        if row["idempotency_key"] in demo_made:
            result.count(f"refused:{row['channel']}", "made_with_demo_key")
        else:
            by_channel[row["channel"]].append(row)
    if demo_made:
        log.error(
            "%d outbox rows have coupon and link codes made with the public demo secret and"
            " are not sent live; they wait in the outbox. Delete them and rebuild the day with"
            " `winback audiences --mode live` and a strong WINBACK_COUPON_SECRET",
            len(demo_made),
        )
    progress.log_send_capacity(progress.send_plans(providers, by_channel), SEND_WINDOW_HOURS)
    channels = []
    for channel, rows in sorted(by_channel.items()):
        provider = providers.get(channel)
        if provider is None:
            log.warning("no provider configured for %s: %d rows wait", channel, len(rows))
            result.count(f"unconfigured:{channel}", "waiting", len(rows))
            continue
        result.by_channel[channel] = len(rows)
        channels.append((provider, rows))
    asyncio.run(_sync_channels(conn, channels, run_date, result))
    result.deferred = ledger.deferred(conn, run_date)
    audiences = audience_providers() if audiences is None else audiences
    for name, provider in audiences.items():
        asyncio.run(sync_audience(conn, name, provider, run_date, result))
    log.info("live sync for %s: %s", run_date, result.by_provider)
    if result.paused:
        raise ProvidersPaused(result)
    return result
