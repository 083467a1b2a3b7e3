"""Frequency caps: how many messages a customer got recently, across every campaign.

A step held back by a cap waits a day (`caps.max_deferral_days` at most, then it is
skipped: `winback.campaigns.journeys`). The caps are counted in SQL over the whole set of
customers due a step: `load_recent` copies, once per campaign and run, the messages the
advancing customers were sent in the window the caps look back over (every campaign's, from
`winback.outbox`, where the campaigns run before this one today have already written), the
journey adds each step's messages to it as it enqueues them, and `capped_sql` names the
customers a step's caps hold back. Only messages actually enqueued (treatment) count,
never hold-outs.
"""

from __future__ import annotations

from datetime import date

from psycopg import sql

from winback.campaigns.campaign_files import Campaign, Step

RECENT = sql.Identifier("recent_messages")  # a temporary table, dropped at commit
WEEK_DAYS = 7


def lookback_days(campaign: Campaign) -> int:
    """How far back the campaign's caps look: a week, or the coupon cool-down if longer."""
    return max(campaign.caps.coupon_cooldown_days or 0, WEEK_DAYS)


def load_recent(cur, campaign: Campaign, run_date: date, customers: sql.Composable) -> None:
    """Copy the recent messages of `customers` (a relation with `customer_id`) into
    `recent_messages`: (customer_id, channel, run_date, has_coupon), up to `run_date`."""
    cur.execute(sql.SQL("drop table if exists {}").format(RECENT))
    cur.execute(
        sql.SQL(
            """
            create temporary table {recent} on commit drop as
            select o.customer_id, o.channel, o.run_date, o.coupon_code is not null as has_coupon
            from winback.outbox o
            where o.run_date > %(run_date)s::date - %(lookback)s and o.run_date <= %(run_date)s
              and o.customer_id in (select customer_id from {customers})
            """
        ).format(recent=RECENT, customers=customers),
        {"run_date": run_date, "lookback": lookback_days(campaign)},
    )


def record(cur, step: Step, run_date: date, customer_ids: list[str]) -> None:
    """Count the messages of `step` just enqueued for `customer_ids` in later decisions."""
    cur.execute(
        sql.SQL(
            "insert into {} (customer_id, channel, run_date, has_coupon) "
            "select unnest(%s::text[]), %s, %s::date, %s"
        ).format(RECENT),
        (customer_ids, step.channel, run_date, has_coupon(step)),
    )


def has_coupon(step: Step) -> bool:
    return step.incentive is not None and step.incentive.coupon is not None


def capped_sql(campaign: Campaign, step: Step, run_date: date) -> sql.Composable:
    """A query of the customers whose `step` today is held back by the campaign's caps:
    the weekly limit of the step's channel reached, or a coupon message on that channel
    within the cool-down when the step carries a coupon. Always a valid query (it may
    name nobody)."""
    parts = [sql.SQL("select null::text as customer_id where false")]
    channel, day = sql.Literal(step.channel), sql.Literal(run_date)
    limit = campaign.caps.max_per_channel_per_week.get(step.channel)
    if limit is not None:
        parts.append(
            sql.SQL(
                "select customer_id from {recent} where channel = {channel} "
                "and run_date > {day}::date - {week} group by customer_id "
                "having count(*) >= {limit}"
            ).format(
                recent=RECENT,
                channel=channel,
                day=day,
                week=sql.Literal(WEEK_DAYS),
                limit=sql.Literal(limit),
            )
        )
    cooldown = campaign.caps.coupon_cooldown_days
    if cooldown and has_coupon(step):
        parts.append(
            sql.SQL(
                "select customer_id from {recent} where channel = {channel} and has_coupon "
                "and run_date > {day}::date - {cooldown}"
            ).format(recent=RECENT, channel=channel, day=day, cooldown=sql.Literal(cooldown))
        )
    return sql.SQL(" union ").join(parts)
