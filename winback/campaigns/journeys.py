"""Journeys: each customer's way through a campaign's steps, one daily run at a time.

A customer who enters a campaign gets a row in `winback.journey_state`: their group
(treatment or holdout, fixed at entry), the next step, and the day the previous step was
due (waits count from it). Every daily run advances each active journey once:

1. exits first: a completed order after the day of entry, a withdrawn consent or a
   suppression on a channel the campaign uses (unsubscribe), and, where the campaign asks
   for it, a click on one of its messages;
2. then every step that is due (`wait_days` after the previous one) is decided on what
   happened to an earlier step (delivered, opened, clicked, purchased, nothing, read from
   `marts.engagement_events` and `marts.orders`; sent = present in
   `winback.outbox`): a step whose condition holds is sent (treatment) or recorded as
   held out (holdout: tracked exactly like treatment, sent nothing); a step whose condition
   fails is skipped; a step held back by a frequency cap (`winback.campaigns.caps`) waits
   a day (at most `caps.max_deferral_days`, then is skipped); a step sent gets its
   message from `winback.campaigns.messages`;
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
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta

import psycopg
from psycopg.rows import dict_row

from winback.campaigns import assignment
from winback.campaigns.campaign_files import MESSAGE_CHANNELS, Campaign, Step
from winback.campaigns.caps import CapLedger
from winback.campaigns.messages import MessageBuilder
from winback.warehouse import db, relations

log = logging.getLogger(__name__)

FEATURES = relations.CUSTOMER_FEATURES
ORDERS = relations.ORDERS
ENGAGEMENT = relations.ENGAGEMENT_EVENTS


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


def choose_variant(campaign_id: str, step: Step, customer_id: str) -> str | None:
    """The A/B variant of `step` for this customer, by weight, from a stable hash."""
    if not step.variants:
        return None
    options = [(variant.id, variant.weight) for variant in step.variants]
    return assignment.pick_by_weight(options, campaign_id, step.id, customer_id)


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
