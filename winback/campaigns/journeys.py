"""Journeys: each customer's way through a campaign's steps, one daily run at a time.

A customer who enters a campaign gets a row in `winback.journey_state`: their group
(treatment or holdout, fixed at entry), the next step, and the day the previous step was
due (waits count from it). Every daily run advances each active journey once:

1. exits first: a completed order after the day of entry, a withdrawn consent or a
   suppression on a channel the campaign uses (unsubscribe), and, where the campaign asks
   for it, a click on one of its messages;
2. then every step that is due (`wait_days` after the previous one) is decided on what
   happened to an earlier step (delivered, opened, clicked, purchased, nothing, read from
   `staging.stg_shop__engagement_events` and `staging.stg_shop__orders`; sent = present in
   `winback.outbox`): a step whose condition holds is sent (treatment) or recorded as
   held out (holdout: tracked exactly like treatment, sent nothing); a step whose condition
   fails is skipped; a step held back by a frequency cap waits a day (at most
   `caps.max_deferral_days`, then is skipped);
3. a journey whose last step is done ends after `journey.end_after_days`, running the
   campaign's end actions (e.g. SMS consent withdrawn for customers who never reacted).

A journey records the run date it was advanced for, so a rerun or a backfill of a day it
has already seen changes nothing; the outbox key (campaign, step, customer, channel) makes
sure no step reaches a customer twice whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import phonenumbers
import psycopg
from phonenumbers import timezone as phone_timezones
from psycopg import sql
from psycopg.rows import dict_row

from winback.campaigns.campaign_files import MESSAGE_CHANNELS, Campaign, QuietHours, Step
from winback.warehouse import db

log = logging.getLogger(__name__)

FEATURES = "marts.customer_features"
ORDERS = "staging.stg_shop__orders"
ENGAGEMENT = "staging.stg_shop__engagement_events"
DEFAULT_SEND_HOUR = 10
SHORT_LINK_BASE_ENV = "WINBACK_SHORT_LINK_BASE"
DEFAULT_SHORT_LINK_BASE = "https://wb.example/s"

JOURNEY_DDL = """
create table if not exists winback.journey_state (
    campaign_id text not null,
    customer_id text not null,
    assigned_group text not null
        check (assigned_group in ('treatment', 'holdout', 'global_control')),
    stratum text not null,
    entered_on date not null,
    next_step integer not null default 0,
    clock_date date not null,
    deferred_days integer not null default 0,
    status text not null default 'active' check (status in ('active', 'exited', 'completed')),
    exit_reason text,
    ended_on date,
    advanced_through date,
    primary key (campaign_id, customer_id)
);
comment on table winback.journey_state is
    'Each customer''s place in each campaign they entered; the group is fixed at entry.';
create index if not exists journey_state_active on winback.journey_state (customer_id)
    where status = 'active';

create table if not exists winback.journey_events (
    campaign_id text not null,
    customer_id text not null,
    run_date date not null,
    step_id text not null default '',
    action text not null check (action in (
        'entered', 'sent', 'held_out', 'skipped', 'deferred', 'capped_out', 'exited',
        'completed')),
    variant text,
    detail text,
    primary key (campaign_id, customer_id, step_id, action, run_date)
);
comment on table winback.journey_events is
    'What each daily run did to each journey: entries, sends, hold-outs, skips, exits.';

create table if not exists winback.consent_withdrawals (
    customer_id text not null,
    channel text not null,
    campaign_id text not null,
    withdrawn_on date not null,
    primary key (customer_id, channel)
);
comment on table winback.consent_withdrawals is
    'Consent a campaign withdrew at its end (e.g. SMS after a flow with no reaction).';
"""

# Outbox columns added for journeys (the outbox itself is created in winback.campaigns.audiences).
OUTBOX_COLUMNS_DDL = """
alter table winback.outbox add column if not exists send_at timestamptz;
alter table winback.outbox add column if not exists variant text;
alter table winback.outbox add column if not exists coupon_code text;
alter table winback.outbox add column if not exists coupon_expires_on date;
alter table winback.outbox add column if not exists tracked_link text;
alter table winback.outbox add column if not exists assigned_group text;
"""


@dataclass
class StepCounts:
    """One run's decisions for one step of one campaign."""

    due: int = 0
    condition_met: int = 0
    capped: int = 0
    sent: int = 0
    held_out: int = 0
    skipped: int = 0  # the condition did not hold
    unreachable: int = 0  # the contact stopped being valid
    scheduled_after_quiet_hours: int = 0  # sent, with send_at moved out of quiet hours


@dataclass
class AdvanceResult:
    advanced: int = 0
    exited: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    steps: dict[str, StepCounts] = field(default_factory=dict)
    outbox_added: int = 0
    scheduled_for_quiet_hours: int = 0


def idempotency_key(campaign_id: str, step_id: str, customer_id: str, channel: str) -> str:
    return hashlib.sha256(f"{campaign_id}|{step_id}|{customer_id}|{channel}".encode()).hexdigest()


def unit_hash(*parts: str) -> float:
    """A number in [0, 1) from a hash of `parts`: the same on every machine and every run."""
    digest = hashlib.md5(":".join(parts).encode()).hexdigest()
    return int(digest[:8], 16) / 2**32


def choose_variant(campaign_id: str, step: Step, customer_id: str) -> str | None:
    """The A/B variant of `step` for this customer, by weight, from a stable hash."""
    if not step.variants:
        return None
    point = unit_hash(campaign_id, step.id, customer_id) * sum(v.weight for v in step.variants)
    for variant in step.variants:
        point -= variant.weight
        if point < 0:
            return variant.id
    return step.variants[-1].id


# --- time zones and quiet hours -----------------------------------------------------------


@lru_cache(maxsize=4096)
def _zones_for_country(country_code: str) -> tuple[str, ...]:
    example = phonenumbers.example_number(country_code.upper())
    return tuple(phone_timezones.time_zones_for_number(example)) if example else ()


def customer_time_zones(phone: str | None, country_code: str | None) -> tuple[ZoneInfo, ...]:
    """The customer's possible time zones: from the phone number, else the country, else UTC.

    A number can map to several zones (a US mobile); quiet hours must then hold in all.
    """
    names: tuple[str, ...] = ()
    if phone:
        try:
            names = tuple(phone_timezones.time_zones_for_number(phonenumbers.parse(phone)))
        except phonenumbers.NumberParseException:
            names = ()
    if (not names or names == (phone_timezones.UNKNOWN_TIMEZONE,)) and country_code:
        names = _zones_for_country(country_code)
    zones = tuple(ZoneInfo(n) for n in names if n and n != phone_timezones.UNKNOWN_TIMEZONE)
    return zones or (ZoneInfo("UTC"),)


def scheduled_send_at(
    run_date: date,
    zones: tuple[ZoneInfo, ...],
    send_hour: int,
    channel: str,
    quiet_hours: QuietHours,
) -> tuple[datetime, bool]:
    """When to send: the run date at the customer's send hour in their (first) time zone,
    moved forward to the end of the quiet hours when an SMS would fall inside them in any
    of the customer's zones. Returns (moment in UTC, whether it was moved)."""
    wanted = datetime.combine(run_date, time(send_hour), tzinfo=zones[0])
    if channel != "sms":
        return wanted.astimezone(ZoneInfo("UTC")), False
    moment = wanted
    for _ in range(48 * 4):
        if not any(quiet_hours.contains(moment.astimezone(z).time()) for z in zones):
            return moment.astimezone(ZoneInfo("UTC")), moment != wanted
        moment += timedelta(minutes=15)
    raise ValueError(f"no time outside quiet hours {quiet_hours} in zones {zones}")


# --- outcomes of earlier steps ------------------------------------------------------------


@dataclass
class Facts:
    """What happened to one campaign's messages, loaded once per run."""

    sent_on: dict[tuple[str, str], date]  # (customer, step) -> day sent or held out
    events: dict[str, list[tuple[str, str, date]]]  # customer -> (channel, type, day)
    orders: dict[str, list[date]]  # customer -> completed order days after entry


def outcome_holds(outcome: str, facts: Facts, customer_id: str, step: Step, run_date: date) -> bool:
    """Whether `outcome` describes what happened to `step` for this customer by `run_date`.

    Any condition on a step the customer was not sent (or held out from) is false, except
    `any`: a branch follows a message, not the absence of one.
    """
    if outcome == "any":
        return True
    sent_on = facts.sent_on.get((customer_id, step.id))
    if sent_on is None:
        return False
    happened = {
        kind
        for channel, kind, day in facts.events.get(customer_id, ())
        if channel == step.channel and sent_on <= day <= run_date
    }
    delivered = bool(happened & {"delivered", "open", "click"})
    opened = bool(happened & {"open", "click"})
    clicked = "click" in happened
    purchased = any(sent_on <= day <= run_date for day in facts.orders.get(customer_id, ()))
    return {
        "sent": True,
        "delivered": delivered,
        "opened": opened,
        "clicked": clicked,
        "purchased": purchased,
        "nothing": not (opened or clicked or purchased),
        "not_delivered": not delivered,
        "not_opened": not opened,
        "not_clicked": not clicked,
    }[outcome]


def _load_facts(cur, campaign: Campaign, run_date: date) -> Facts:
    sent_on: dict[tuple[str, str], date] = {}
    for row in cur.execute(
        """
        select customer_id, step_id, run_date from winback.outbox where campaign_id = %(c)s
        union all
        select customer_id, step_id, run_date from winback.journey_events
        where campaign_id = %(c)s and action = 'held_out'
        """,
        {"c": campaign.id},
    ):
        sent_on[(row["customer_id"], row["step_id"])] = row["run_date"]
    events: dict[str, list] = defaultdict(list)
    # What happened to a message: the shop's own tracking and, once the providers' feedback
    # has been collected (winback.delivery.feedback), the providers' events, in the same vocabulary.
    provider_events = (
        """
        union all
        select customer_id, channel,
               case event_type when 'opened' then 'open' when 'clicked' then 'click'
                    else event_type end,
               occurred_at
        from winback.message_events
        where campaign_id = %(c)s and event_type in ('delivered', 'opened', 'clicked')
        """
        if db.relation_exists(cur.connection, "winback.message_events")
        else ""
    )
    for row in cur.execute(
        f"""
        with events (customer_id, channel, event_type, occurred_at) as (
            select customer_id, channel, event_type, occurred_at
            from {ENGAGEMENT}
            where campaign_id = %(c)s and event_type in ('delivered', 'open', 'click')
            {provider_events}
        )
        select e.customer_id, e.channel, e.event_type,
               cast(e.occurred_at at time zone 'UTC' as date) as day
        from events e
        join winback.journey_state j
          on j.customer_id = e.customer_id and j.campaign_id = %(c)s and j.status = 'active'
        where cast(e.occurred_at at time zone 'UTC' as date) between j.entered_on and %(d)s
        """,
        {"c": campaign.id, "d": run_date},
    ):
        events[row["customer_id"]].append((row["channel"], row["event_type"], row["day"]))
    orders: dict[str, list] = defaultdict(list)
    for row in cur.execute(
        f"""
        select o.customer_id, o.order_date
        from {ORDERS} o
        join winback.journey_state j
          on j.customer_id = o.customer_id and j.campaign_id = %(c)s and j.status = 'active'
        where o.is_completed and o.order_date > j.entered_on and o.order_date <= %(d)s
        """,
        {"c": campaign.id, "d": run_date},
    ):
        orders[row["customer_id"]].append(row["order_date"])
    return Facts(sent_on, dict(events), dict(orders))


# --- caps ---------------------------------------------------------------------------------


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


# --- messages -----------------------------------------------------------------------------


class MessageBuilder:
    """Renders one run's messages: personal values, templates, send time, tracked links.

    Per-customer inputs that need SQL (the usual open hour in the customer's time zone,
    recommendations) are read in bulk by `prepare` for a campaign's active journeys; coupon
    and link codes come from `winback.campaigns.personalization` (HMAC, deterministic, so a rerun
    renders the same codes); tracked links are written in one batch by `flush`.
    """

    def __init__(self, conn: psycopg.Connection, run_date: date, mode: str = "dry_run"):
        from winback.campaigns import personalization

        self.p = personalization
        self.conn = conn
        self.run_date = run_date
        self.secret = personalization.coupon_secret(mode)
        self.short_link_base = os.environ.get(SHORT_LINK_BASE_ENV, DEFAULT_SHORT_LINK_BASE)
        self.zones: dict[str, tuple[ZoneInfo, ...]] = {}
        self.send_hours: dict[str, int] = {}
        self.recommended: dict[str, list[str]] = {}
        self._links: list = []
        self._ranked_products_ready = False
        personalization.ensure_tracked_links(conn)

    def prepare(self, cur, campaign: Campaign) -> None:
        """Read zones, send hours and recommendations of the customers due a step today."""
        rows = cur.execute(
            f"""
            select f.customer_id, f.phone, f.country_code, f.favourite_category
            from winback.journey_state j
            join {FEATURES} f on f.customer_id = j.customer_id
            where j.campaign_id = %(campaign)s and j.status = 'active'
              and j.assigned_group = 'treatment'
              and j.next_step < %(steps)s
              -- their next step is due today (further steps due the same day are theirs)
              and j.clock_date + j.deferred_days + (%(waits)s::int[])[j.next_step + 1]
                  <= %(run_date)s
            """,
            {
                "campaign": campaign.id,
                "steps": len(campaign.steps),
                "waits": [s.wait_days for s in campaign.steps],
                "run_date": self.run_date,
            },
        ).fetchall()
        new = [r for r in rows if r["customer_id"] not in self.zones]
        if not new:
            return
        for row in new:
            self.zones[row["customer_id"]] = customer_time_zones(row["phone"], row["country_code"])
        cur.execute(
            "create temporary table if not exists message_customers "
            "(customer_id text, favourite_category text, zone text) on commit drop"
        )
        cur.execute("truncate message_customers")
        with cur.copy("copy message_customers from stdin") as copy:
            for row in new:
                zone = self.zones[row["customer_id"]][0].key
                copy.write_row((row["customer_id"], row["favourite_category"], zone))
        # The usual open hour, counted in each customer's own time zone: one query per zone.
        for zone in sorted({self.zones[r["customer_id"]][0].key for r in new}):
            customers = sql.SQL(
                "(select customer_id from message_customers where zone = {}) as customers"
            ).format(sql.Literal(zone))
            query, params = self.p.send_hour_query(
                self.run_date, customers, default_hour=DEFAULT_SEND_HOUR, time_zone=zone
            )
            self.send_hours.update(dict(self.conn.execute(query, params).fetchall()))
        query, params = self.p.recommendations_query(
            self.run_date,
            sql.SQL("message_customers"),
            ranked_products=self._ranked_products(cur),
        )
        for customer_id in (r["customer_id"] for r in new):
            self.recommended[customer_id] = []
        for customer_id, _rank, _product_id, name, _price in self.conn.execute(query, params):
            self.recommended[customer_id].append(name)

    def _ranked_products(self, cur) -> sql.Composable:
        """The run's product ranking, computed on first use: it reads a year of order
        lines and is the same for every campaign of the run (one transaction, one builder)."""
        table = sql.Identifier("pg_temp", "run_ranked_products")
        if not self._ranked_products_ready:
            query, params = self.p.ranked_products_query(self.run_date)
            cur.execute(sql.SQL("drop table if exists {}").format(table))
            cur.execute(
                sql.SQL("create temporary table {} on commit drop as {}").format(table, query),
                params,
            )
            cur.execute(sql.SQL("analyze {}").format(table))
            self._ranked_products_ready = True
        return table

    def context(self, campaign: Campaign, step: Step, variant: str | None, features: dict):
        """Everything a template can use (campaigns.MESSAGE_NAMES and the feature columns)."""
        customer_id = features["customer_id"]
        landing = self.p.landing_url(
            campaign.landing_url,
            campaign_id=campaign.id,
            step_id=step.id,
            channel=step.channel,
            variant=variant,
        )
        link = self.p.tracked_link(
            campaign.id, step.id, customer_id, step.channel, landing, self.secret
        )
        self._links.append(link)
        context = {
            **features,
            "campaign_id": campaign.id,
            "step_id": step.id,
            "variant": variant,
            "landing_url": landing,
            "tracked_link": link.short_url(self.short_link_base),
            "recommendations": self.recommended.get(customer_id, []),
            "coupon_code": None,
            "coupon_expires_on": None,
            "coupon_discount": None,
            "bonus_points": None,
        }
        if step.incentive and step.incentive.coupon:
            coupon = self.p.issue_coupon(
                campaign.id,
                step.id,
                customer_id,
                send_date=self.run_date,
                valid_days=step.incentive.coupon.valid_days,
                secret=self.secret,
            )
            context.update(
                coupon_code=coupon.code,
                coupon_expires_on=coupon.expires_on,
                coupon_discount=step.incentive.coupon.describe(),
            )
        if step.incentive and step.incentive.bonus_points:
            context["bonus_points"] = step.incentive.bonus_points
        return context

    def build(
        self, campaign: Campaign, step: Step, variant: str | None, features: dict, run_date: date
    ) -> dict:
        """The outbox row's payload and columns for one treatment customer and step."""
        customer_id = features["customer_id"]
        context = self.context(campaign, step, variant, features)
        chosen = next((v for v in step.variants if v.id == variant), None)
        subject = (chosen.subject if chosen and chosen.subject else None) or step.subject
        body = (chosen.body if chosen and chosen.body else None) or step.body
        to = {
            "email": features.get("email"),
            "sms": features.get("phone"),
            "popup": customer_id,  # the site knows its visitors by customer id
        }[step.channel]
        payload = {
            "to": to,
            "subject": self.p.render(subject, context) if subject else None,
            "body": self.p.render(body, context),
        }
        if step.incentive:
            payload["incentive"] = {
                "coupon_code": context["coupon_code"],
                "coupon_expires_on": context["coupon_expires_on"],
                "coupon": step.incentive.coupon.model_dump() if step.incentive.coupon else None,
                "bonus_points": context["bonus_points"],
            }
        zones = self.zones.get(customer_id) or customer_time_zones(
            features.get("phone"), features.get("country_code")
        )
        send_at, moved = scheduled_send_at(
            run_date,
            zones,
            self.send_hours.get(customer_id, DEFAULT_SEND_HOUR),
            step.channel,
            campaign.quiet_hours,
        )
        return {
            "payload": payload,
            "send_at": send_at,
            "moved_for_quiet_hours": moved,
            "coupon_code": context["coupon_code"],
            "coupon_expires_on": context["coupon_expires_on"],
            "tracked_link": context["tracked_link"],
        }

    def flush(self) -> None:
        """Store the run's tracked links, so each click resolves to its customer and step."""
        if self._links:
            self.p.upsert_tracked_links(self.conn, self._links)
            self._links = []


# --- advancing ----------------------------------------------------------------------------


def reachable(features: dict, channel: str) -> bool:
    """Consent, a valid contact and no suppression for `channel` (popups need none)."""
    if channel == "popup":
        return True
    contact = "has_valid_email" if channel == "email" else "has_valid_phone"
    return bool(
        features.get(f"is_{channel}_subscribed")
        and features.get(contact)
        and not features.get(f"is_{channel}_suppressed")
    )


def _exit_reasons(cur, campaign: Campaign, run_date: date, facts: Facts) -> dict[str, str]:
    """customer -> why their journey ends today (purchase, unsubscribe, click)."""
    reasons: dict[str, str] = {}
    if "purchase" in campaign.journey.exit_on:
        for customer_id in facts.orders:
            reasons[customer_id] = "purchase"
    channels = [c for c in campaign.channels if c in MESSAGE_CHANNELS]
    if "unsubscribe" in campaign.journey.exit_on and channels:
        lost = " or ".join(
            f"not f.is_{c}_subscribed or f.is_{c}_suppressed or w_{c}.customer_id is not null"
            for c in channels
        )
        joins = " ".join(
            f"left join winback.consent_withdrawals w_{c} "
            f"on w_{c}.customer_id = j.customer_id and w_{c}.channel = '{c}'"
            for c in channels
        )
        for row in cur.execute(
            f"""
            select j.customer_id
            from winback.journey_state j
            join {FEATURES} f on f.customer_id = j.customer_id
            {joins}
            where j.campaign_id = %s and j.status = 'active' and ({lost})
            """,
            (campaign.id,),
        ):
            reasons.setdefault(row["customer_id"], "unsubscribe")
    if "click" in campaign.journey.exit_on:
        for customer_id, events in facts.events.items():
            if any(kind == "click" for _, kind, _ in events):
                reasons.setdefault(customer_id, "click")
    return reasons


def advance(
    conn: psycopg.Connection,
    campaign: Campaign,
    run_date: date,
    caps: CapLedger,
    messages: MessageBuilder,
) -> AdvanceResult:
    """Advance every active journey of `campaign` not yet advanced for `run_date`."""
    result = AdvanceResult(steps={s.id: StepCounts() for s in campaign.steps})
    with conn.cursor(row_factory=dict_row) as cur:
        facts = _load_facts(cur, campaign, run_date)
        messages.prepare(cur, campaign)
        journeys = cur.execute(
            f"""
            select j.*, to_jsonb(f) as features
            from winback.journey_state j
            left join {FEATURES} f on f.customer_id = j.customer_id
            where j.campaign_id = %s and j.status = 'active'
              and (j.advanced_through is null or j.advanced_through < %s)
              and j.entered_on <= %s
            order by j.customer_id
            """,
            (campaign.id, run_date, run_date),
        ).fetchall()
        exits = _exit_reasons(cur, campaign, run_date, facts)
        events: list[tuple] = []
        outbox: list[tuple] = []
        updates: list[tuple] = []
        untouched: list[str] = []
        withdrawals: list[tuple] = []

        def record(customer_id, step_id, action, variant=None, detail=None) -> None:
            events.append((campaign.id, customer_id, run_date, step_id, action, variant, detail))

        for journey in journeys:
            result.advanced += 1
            customer_id = journey["customer_id"]
            state = {
                "next_step": journey["next_step"],
                "clock_date": journey["clock_date"],
                "deferred_days": journey["deferred_days"],
                "status": "active",
                "exit_reason": None,
                "ended_on": None,
            }

            reason = exits.get(customer_id)
            if reason is not None:
                state.update(status="exited", exit_reason=reason, ended_on=run_date)
                result.exited[reason] = result.exited.get(reason, 0) + 1
                record(customer_id, "", "exited", detail=reason)
            while state["status"] == "active" and state["next_step"] < len(campaign.steps):
                step = campaign.steps[state["next_step"]]
                due = state["clock_date"] + timedelta(days=step.wait_days + state["deferred_days"])
                if run_date < due:
                    break
                counts = result.steps[step.id]
                counts.due += 1
                reference = (
                    campaign.steps[campaign.step_index(step.when.step)]
                    if step.when.step
                    else campaign.steps[state["next_step"] - 1]
                    if state["next_step"] > 0
                    else step
                )
                features = journey["features"] or {}
                if not outcome_holds(step.when.outcome, facts, customer_id, reference, run_date):
                    counts.skipped += 1
                    record(
                        customer_id, step.id, "skipped", detail=f"{step.when.outcome} did not hold"
                    )
                elif not reachable(features, step.channel):
                    # Consent and suppression end the journey above; this is a contact that
                    # stopped being valid (a bounced address) while the journey went on.
                    counts.unreachable += 1
                    record(
                        customer_id,
                        step.id,
                        "skipped",
                        detail=f"no reachable {step.channel} contact",
                    )
                elif caps.blocks(campaign, step, customer_id, run_date):
                    counts.capped += 1
                    if state["deferred_days"] < campaign.caps.max_deferral_days:
                        state["deferred_days"] += 1
                        record(customer_id, step.id, "deferred", detail="frequency cap")
                        break
                    record(customer_id, step.id, "capped_out", detail="frequency cap")
                else:
                    counts.condition_met += 1
                    variant = choose_variant(campaign.id, step, customer_id)
                    # Only the treatment is ever sent anything: the holdout and the
                    # global control are recorded as held out.
                    if journey["assigned_group"] != "treatment":
                        counts.held_out += 1
                        record(customer_id, step.id, "held_out", variant)
                    else:
                        counts.sent += 1
                        caps.record(step, customer_id, run_date)  # caps count real messages
                        message = messages.build(campaign, step, variant, features, run_date)
                        if message.pop("moved_for_quiet_hours"):
                            result.scheduled_for_quiet_hours += 1
                            counts.scheduled_after_quiet_hours += 1
                        outbox.append((campaign, step, customer_id, variant, message))
                        record(customer_id, step.id, "sent", variant)
                    facts.sent_on[(customer_id, step.id)] = run_date
                state["next_step"] += 1
                state["clock_date"] = run_date
                state["deferred_days"] = 0
            end = state["clock_date"] + timedelta(days=campaign.journey.end_after_days)
            if (
                state["status"] == "active"
                and state["next_step"] >= len(campaign.steps)
                and run_date >= end
            ):
                state.update(status="completed", ended_on=run_date)
                result.completed += 1
                record(customer_id, "", "completed")
                if journey["assigned_group"] == "treatment":
                    for action in campaign.journey.on_end:
                        channel = action.removeprefix("withdraw_").removesuffix("_consent")
                        withdrawals.append((customer_id, channel, campaign.id, run_date))
            unchanged = (
                all(state[k] == journey[k] for k in ("next_step", "clock_date", "deferred_days"))
                and state["status"] == "active"
            )
            if unchanged:  # most journeys on most days: only the run date moves on
                untouched.append(customer_id)
            else:
                updates.append(
                    (
                        state["next_step"],
                        state["clock_date"],
                        state["deferred_days"],
                        state["status"],
                        state["exit_reason"],
                        state["ended_on"],
                        run_date,
                        campaign.id,
                        customer_id,
                    )
                )
        result.outbox_added = _write_outbox(cur, outbox, run_date)
        messages.flush()
        cur.executemany(
            """
            update winback.journey_state
            set next_step = %s, clock_date = %s, deferred_days = %s, status = %s,
                exit_reason = %s, ended_on = %s, advanced_through = %s
            where campaign_id = %s and customer_id = %s
            """,
            updates,
        )
        cur.execute(
            "update winback.journey_state set advanced_through = %s "
            "where campaign_id = %s and customer_id = any(%s)",
            (run_date, campaign.id, untouched),
        )
        cur.executemany(
            """
            insert into winback.journey_events
                (campaign_id, customer_id, run_date, step_id, action, variant, detail)
            values (%s, %s, %s, %s, %s, %s, %s)
            on conflict do nothing
            """,
            events,
        )
        cur.executemany(
            """
            insert into winback.consent_withdrawals
                (customer_id, channel, campaign_id, withdrawn_on)
            values (%s, %s, %s, %s)
            on conflict do nothing
            """,
            withdrawals,
        )
    return result


def _write_outbox(cur, messages: list[tuple], run_date: date) -> int:
    """Insert the run's messages; a key already taken (a rerun) adds nothing."""
    if not messages:
        return 0
    cur.executemany(
        """
        insert into winback.outbox
            (idempotency_key, run_date, campaign_id, step_id, customer_id, channel, payload,
             send_at, variant, coupon_code, coupon_expires_on, tracked_link, assigned_group)
        values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'treatment')
        on conflict do nothing
        """,
        [
            (
                idempotency_key(campaign.id, step.id, customer_id, step.channel),
                run_date,
                campaign.id,
                step.id,
                customer_id,
                step.channel,
                json.dumps(message["payload"], default=str),
                message["send_at"],
                variant,
                message.get("coupon_code"),
                message.get("coupon_expires_on"),
                message.get("tracked_link"),
            )
            for campaign, step, customer_id, variant, message in messages
        ],
    )
    return cur.rowcount
