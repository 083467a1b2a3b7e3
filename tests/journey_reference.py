"""The per-customer journey engine, kept as the reference the set-based engine is proved
against (tests/test_engine_equivalence.py).

This is `winback.campaigns.journeys.advance` and `winback.campaigns.caps.CapLedger` as they
were before issue 19 moved journeys into SQL: every active journey walked one customer at a
time in Python, the frequency caps counted in a ledger in memory, each message built on its
own (`build_message`). Its one change: the ledger is loaded per campaign from the outbox
(where the campaigns before it already wrote), which is the run-wide ledger's state then.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

import psycopg
from psycopg.rows import dict_row

from winback.campaigns.campaign_files import MESSAGE_CHANNELS, Campaign, Step
from winback.campaigns.journeys import (
    AdvanceResult,
    StepCounts,
    choose_variant,
    idempotency_key,
)
from winback.campaigns.messages import (
    DEFAULT_SEND_HOUR,
    MessageBuilder,
    customer_time_zones,
    one_line,
    scheduled_send_at,
)
from winback.warehouse import db, relations

FEATURES = relations.CUSTOMER_FEATURES
ORDERS = relations.ORDERS
ENGAGEMENT = relations.ENGAGEMENT_EVENTS


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
    messages: MessageBuilder,
) -> AdvanceResult:
    """Advance every active journey of `campaign` not yet advanced for `run_date`."""
    result = AdvanceResult(steps={s.id: StepCounts() for s in campaign.steps})
    with conn.cursor(row_factory=dict_row) as cur:
        # The ledger as the whole run's would stand when this campaign starts: everything
        # the campaigns before it enqueued is in the outbox already.
        caps = CapLedger.load(cur, run_date, max(campaign.caps.coupon_cooldown_days or 0, 7))
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
                        message = build_message(
                            messages, campaign, step, variant, features, run_date
                        )
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
             send_at, variant, coupon_code, coupon_expires_on, tracked_link, assigned_group,
             coupon_key_fingerprint)
        values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'treatment', %s)
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
                message.get("key_fingerprint"),
            )
            for campaign, step, customer_id, variant, message in messages
        ],
    )
    return cur.rowcount


# --- the message builder, one message at a time (MessageBuilder.build before issue 19) ---


def _context(self, campaign: Campaign, step: Step, variant: str | None, features: dict):
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


def build_message(
    self, campaign: Campaign, step: Step, variant: str | None, features: dict, run_date: date
) -> dict:
    """The outbox row's payload and columns for one treatment customer and step."""
    customer_id = features["customer_id"]
    context = _context(self, campaign, step, variant, features)
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
        "subject": (
            one_line(self._render_or_fall_back(subject, step.subject, context)) if subject else None
        ),
        # A popup body is HTML on the shop's page: escaped, like an HTML e-mail.
        "body": self._render_or_fall_back(
            body, step.body, context, autoescape=step.channel == "popup"
        ),
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
        "key_fingerprint": self.key_fingerprint,
    }
