"""Frequency caps: how many messages a customer got recently, across every campaign.

A step held back by a cap waits a day (`caps.max_deferral_days` at most, then it is
skipped: `winback.campaigns.journeys`). The ledger is read once per run from
`winback.outbox` and updated as the run enqueues, so the campaigns of one run count each
other's messages; only messages actually enqueued (treatment) count, never hold-outs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

from winback.campaigns.campaign_files import Campaign, Step


@dataclass
class CapLedger:
    """Messages each customer got recently, all campaigns, updated as this run enqueues."""

    weekly: dict[tuple[str, str], int]  # (customer, channel) -> messages in the last 7 days
    last_coupon: dict[tuple[str, str], date]  # (customer, channel) -> last coupon message

    @classmethod
    def load(cls, cur, run_date: date, lookback_days: int) -> CapLedger:
        weekly: dict[tuple[str, str], int] = defaultdict(int)
        last_coupon: dict[tuple[str, str], date] = {}
        for row in cur.execute(
            """
            select customer_id, channel, run_date, coupon_code is not null as has_coupon
            from winback.outbox
            where run_date > %s::date - %s and run_date <= %s
            """,
            (run_date, max(lookback_days, 7), run_date),
        ):
            key = (row["customer_id"], row["channel"])
            if row["run_date"] > run_date - timedelta(days=7):
                weekly[key] += 1
            if row["has_coupon"] and row["run_date"] > last_coupon.get(key, date.min):
                last_coupon[key] = row["run_date"]
        return cls(weekly, last_coupon)

    def blocks(self, campaign: Campaign, step: Step, customer_id: str, run_date: date) -> bool:
        key = (customer_id, step.channel)
        limit = campaign.caps.max_per_channel_per_week.get(step.channel)
        if limit is not None and self.weekly.get(key, 0) >= limit:
            return True
        cooldown = campaign.caps.coupon_cooldown_days
        has_coupon = step.incentive is not None and step.incentive.coupon is not None
        if cooldown and has_coupon:
            last = self.last_coupon.get(key)
            if last is not None and last > run_date - timedelta(days=cooldown):
                return True
        return False

    def record(self, step: Step, customer_id: str, run_date: date) -> None:
        key = (customer_id, step.channel)
        self.weekly[key] = self.weekly.get(key, 0) + 1
        if step.incentive is not None and step.incentive.coupon is not None:
            self.last_coupon[key] = run_date
