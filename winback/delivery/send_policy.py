"""Whether a run of the daily DAG may really send, or only record what it would send.

A backfill, a manual rerun of an old day or a run that the scheduler started days late
rebuilds that day's warehouse state, audiences and measurement like any other run, but
its messages are stale: the customer's situation has moved on, and some of them were
already sent by the original run. So a live send is allowed only for a run of the
current schedule interval, started by the scheduler or by hand, unless the explicit
`allow_past_sends` param says otherwise; anything else is downgraded to a dry run, with
the reason logged and returned.

The send ledger's idempotency keys already make a resend of the same step impossible;
this policy is the second, independent guard: a backfill does not even try.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, date, datetime

SEND_MODES = ("dry_run", "live")
SEND_MODE_ENV = "WINBACK_SEND_MODE"
# A run whose logical date is more than this many days before today is a past run. The
# daily run for day D starts on D + 1, so 1 day of lag is the schedule itself.
MAX_SEND_LAG_DAYS = 1


@dataclass(frozen=True)
class SendDecision:
    requested: str
    mode: str
    reason: str


def default_send_mode() -> str:
    """The deployment's send mode (`WINBACK_SEND_MODE`), dry_run unless set to live."""
    mode = os.environ.get(SEND_MODE_ENV, "dry_run")
    if mode not in SEND_MODES:
        raise ValueError(f"{SEND_MODE_ENV}={mode!r}: use one of {SEND_MODES}")
    return mode


def decide(
    requested: str,
    logical_date: date,
    run_type: str | None,
    allow_past_sends: bool = False,
    today: date | None = None,
) -> SendDecision:
    """The send mode a run really uses, and why."""
    if requested not in SEND_MODES:
        raise ValueError(f"send mode {requested!r}: use one of {SEND_MODES}")
    if requested == "dry_run":
        return SendDecision(requested, "dry_run", "dry run requested")
    today = today or datetime.now(UTC).date()
    lag_days = (today - logical_date).days
    if run_type == "backfill" and not allow_past_sends:
        return SendDecision(
            requested, "dry_run", "a backfill run never sends unless allow_past_sends is set"
        )
    if lag_days > MAX_SEND_LAG_DAYS and not allow_past_sends:
        return SendDecision(
            requested,
            "dry_run",
            f"logical date {logical_date} is {lag_days} days in the past: a past day never "
            "sends unless allow_past_sends is set",
        )
    if lag_days < 0:
        return SendDecision(
            requested, "dry_run", f"logical date {logical_date} is in the future: not sending"
        )
    return SendDecision(requested, "live", "live send for the current day")
