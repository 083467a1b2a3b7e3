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

All of it is SQL over the whole set of a campaign's journeys (issue 19): the journeys to
advance today are copied into a temporary table, and each kind of decision is one
statement over it (the exits; per step, in the campaign's order, who is due and what
happens to each; the completions; the write-back), so the cost follows the day's work, not
a walk through every customer. Steps go in order, so a journey can take several steps in one
day (a step with `wait_days: 0` follows the one before it at once). Python renders only the
messages due today (`winback.campaigns.messages`).

A journey is advanced once per run date, so a rerun or a backfill of a day it has already
seen changes nothing; the outbox key (campaign, step, customer, channel) makes sure no step
reaches a customer twice whatever happens. Which day a journey was advanced through is
`advanced_through_sql`: a run writes back only the journeys it changed (stamped with the
run and its date) and logs itself in `winback.journey_runs`, and a journey it left as it
was counts as advanced by every logged run of its campaign since it was last written. Most
journeys wait on most days, so a day writes what moved, not everyone in a journey.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import date

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from winback.campaigns import assignment, caps
from winback.campaigns.campaign_files import MESSAGE_CHANNELS, Campaign, Step
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


# --- the set of journeys advanced today -----------------------------------------------------

ADVANCING = sql.Identifier("journeys_advancing")  # temporary tables, dropped at commit
SIGNALS = sql.Identifier("journey_signals")
PURCHASES = sql.Identifier("journey_purchases")
DECISIONS = sql.Identifier("step_decisions")

# The outcomes a step can branch on (`campaign_files.Outcome`), each as SQL over the
# reference step's flags (delivered, opened, clicked, purchased: see `_decide`). They are
# asked only of customers who were sent that step or held out from it; `any` holds for all.
OUTCOMES = {
    "sent": "true",
    "delivered": "delivered",
    "opened": "opened",
    "clicked": "clicked",
    "purchased": "purchased",
    "nothing": "not (opened or clicked or purchased)",
    "not_delivered": "not delivered",
    "not_opened": "not opened",
    "not_clicked": "not clicked",
}


def _temporary(
    cur, table: sql.Identifier, query: sql.Composable, params: dict, index_customers=False
) -> int:
    """(Re)create the temporary `table` from `query`, analysed for the statements that
    join it; returns its row count. `index_customers` indexes its customer_id, for the
    per-journey look-ups (exists ...) that read it."""
    cur.execute(sql.SQL("drop table if exists {}").format(table))
    cur.execute(
        sql.SQL("create temporary table {} on commit drop as {}").format(table, query), params
    )
    count = cur.rowcount
    if index_customers:
        cur.execute(sql.SQL("create index on {} (customer_id)").format(table))
    cur.execute(sql.SQL("analyze {}").format(table))
    return count


def advanced_through_sql(journey: str = "j") -> sql.Composable:
    """The day journey `journey` (an alias of winback.journey_state) was advanced through.

    The run that last wrote the row stamped it (`advanced_through`, `written_by_run`); an
    active journey was also advanced by every later run of its campaign for a day it had
    entered by (`winback.journey_runs`), which left it unchanged and did not rewrite it. An
    ended journey is never advanced again, and the run that ended it wrote it.

    `_load_journeys` asks the same question for one day ("not advanced through `d`") in a
    form that only looks at runs for `d` or later, usually none: this expression's maximum
    over every run since entry, for each of a million journeys, is for reading, not for
    the daily hot path.
    """
    j = sql.Identifier(journey)
    return sql.SQL(
        """case when {j}.status = 'active' then greatest({j}.advanced_through, (
            select max(r.run_date) from winback.journey_runs r
            where r.campaign_id = {j}.campaign_id and r.run_date >= {j}.entered_on
              and r.run_id > coalesce({j}.written_by_run, 0)))
        else {j}.advanced_through end"""
    ).format(j=j)


# What a journey enrolled now is stamped with: the latest run logged, so this run's advance
# (logged after it) counts for it and no earlier run, which never saw it, does.
LATEST_RUN_SQL = "(select coalesce(max(run_id), 0) from winback.journey_runs)"


def _load_journeys(cur, campaign: Campaign, run_date: date) -> int:
    """Copy the campaign's journeys to advance today, and what happened to them since they
    entered: their messages' signals (the shop's tracking and the providers' feedback) and
    their completed orders. Returns how many journeys advance."""
    params = {"c": campaign.id, "d": run_date}
    advancing = _temporary(
        cur,
        ADVANCING,
        sql.SQL(
            """
            select j.customer_id, j.assigned_group, j.entered_on, j.next_step, j.clock_date,
                   j.deferred_days, j.status, j.exit_reason, j.ended_on,
                   j.next_step as loaded_next_step, j.clock_date as loaded_clock_date,
                   j.deferred_days as loaded_deferred_days
            from winback.journey_state j
            where j.campaign_id = %(c)s and j.status = 'active'
              and (j.advanced_through is null or j.advanced_through < %(d)s)
              and j.entered_on <= %(d)s
              -- nor advanced, and left unchanged, by a run for this day or a later one
              and not exists (
                  select 1 from winback.journey_runs r
                  where r.campaign_id = %(c)s and r.run_date >= %(d)s
                    and r.run_id > coalesce(j.written_by_run, 0))
            """
        ),
        params,
    )
    cur.execute(sql.SQL("alter table {} add primary key (customer_id)").format(ADVANCING))
    # What happened to a message: the shop's own tracking and, once the providers' feedback
    # has been collected (winback.delivery.feedback), the providers' events, in the same
    # vocabulary.
    provider_events = (
        sql.SQL(
            """
            union all
            select customer_id, channel,
                   case event_type when 'opened' then 'open' when 'clicked' then 'click'
                        else event_type end,
                   occurred_at
            from winback.message_events
            where campaign_id = %(c)s and event_type in ('delivered', 'opened', 'clicked')
            """
        )
        if db.relation_exists(cur.connection, "winback.message_events")
        else sql.SQL("")
    )
    _temporary(
        cur,
        SIGNALS,
        sql.SQL(
            """
            with events (customer_id, channel, event_type, occurred_at) as (
                select customer_id, channel, event_type, occurred_at
                from {engagement}
                where campaign_id = %(c)s and event_type in ('delivered', 'open', 'click')
                {provider_events}
            )
            select e.customer_id, e.channel, e.event_type,
                   cast(e.occurred_at at time zone 'UTC' as date) as day
            from events e
            join {advancing} a on a.customer_id = e.customer_id
            where cast(e.occurred_at at time zone 'UTC' as date) between a.entered_on and %(d)s
            """
        ).format(
            engagement=sql.SQL(ENGAGEMENT), provider_events=provider_events, advancing=ADVANCING
        ),
        params,
        index_customers=True,
    )
    # The same bounds on `ordered_at` as well (implied by those on `order_date`, a date
    # computed from it): the orders' index on it then reads only the weeks journeys span,
    # where the computed date alone scanned every order of the shop (4.5 s a campaign at a
    # million customers).
    earliest = cur.execute(sql.SQL("select min(entered_on) as d from {}").format(ADVANCING))
    _temporary(
        cur,
        PURCHASES,
        sql.SQL(
            """
            select o.customer_id, o.order_date
            from {orders} o
            join {advancing} a on a.customer_id = o.customer_id
            where o.is_completed and o.order_date > a.entered_on and o.order_date <= %(d)s
              and o.ordered_at >= (%(earliest)s::date + 1)::timestamp at time zone 'UTC'
              and o.ordered_at < (%(d)s::date + 1)::timestamp at time zone 'UTC'
            """
        ).format(orders=sql.SQL(ORDERS), advancing=ADVANCING),
        {**params, "earliest": earliest.fetchone()["d"]},
        index_customers=True,
    )
    return advancing


def _exit(cur, campaign: Campaign, run_date: date) -> dict[str, int]:
    """End today the journeys with a reason to (purchase first, then unsubscribe, then a
    click); one statement. Returns the count per reason."""
    reasons = []
    if "purchase" in campaign.journey.exit_on:
        reasons.append(
            sql.SQL(
                "when exists (select 1 from {} p where p.customer_id = a.customer_id) "
                "then 'purchase'"
            ).format(PURCHASES)
        )
    channels = [c for c in campaign.channels if c in MESSAGE_CHANNELS]
    if "unsubscribe" in campaign.journey.exit_on and channels:
        lost = sql.SQL(" or ").join(
            sql.SQL(
                "not f.{subscribed} or f.{suppressed} or exists (select 1 from "
                "winback.consent_withdrawals w where w.customer_id = a.customer_id "
                "and w.channel = {channel})"
            ).format(
                subscribed=sql.Identifier(f"is_{c}_subscribed"),
                suppressed=sql.Identifier(f"is_{c}_suppressed"),
                channel=sql.Literal(c),
            )
            for c in channels
        )
        reasons.append(
            sql.SQL(
                "when exists (select 1 from {features} f where f.customer_id = a.customer_id "
                "and ({lost})) then 'unsubscribe'"
            ).format(features=sql.SQL(FEATURES), lost=lost)
        )
    if "click" in campaign.journey.exit_on:
        reasons.append(
            sql.SQL(
                "when exists (select 1 from {} s where s.customer_id = a.customer_id "
                "and s.event_type = 'click') then 'click'"
            ).format(SIGNALS)
        )
    if not reasons:
        return {}
    cur.execute(
        sql.SQL(
            """
            with reasons as (
                select a.customer_id, case {reasons} end as reason from {advancing} a
            )
            update {advancing} a
            set status = 'exited', exit_reason = r.reason, ended_on = %(d)s
            from reasons r
            where r.customer_id = a.customer_id and r.reason is not null
            """
        ).format(reasons=sql.SQL(" ").join(reasons), advancing=ADVANCING),
        {"d": run_date},
    )
    if cur.rowcount:  # nobody exited: the statistics still hold
        _refresh_statistics(cur)
    _record_events(
        cur,
        campaign,
        run_date,
        sql.SQL(
            "select customer_id, '' as step_id, 'exited' as action, null as variant, "
            "exit_reason as detail from {} where status = 'exited'"
        ).format(ADVANCING),
    )
    rows = cur.execute(
        sql.SQL(
            "select exit_reason, count(*) as n from {} where status = 'exited' group by 1"
        ).format(ADVANCING)
    ).fetchall()
    return {r["exit_reason"]: r["n"] for r in rows}


def variant_sql(campaign: Campaign, step: Step, customer: sql.Composable) -> sql.Composable:
    """`choose_variant` in SQL: the same 32-bit place, walked through the same weights in
    double precision, so every customer gets the variant Python would give them."""
    if not step.variants:
        return sql.SQL("null::text")
    place = sql.SQL("(('x' || substr({}, 1, 8))::bit(32)::bigint::float8 / {}::float8)").format(
        assignment.hash_sql(sql.Literal(campaign.id), sql.Literal(step.id), customer),
        sql.Literal(repr(float(2**assignment.HASH_BITS))),
    )
    total = 0
    for variant in step.variants:
        total += variant.weight  # summed as `pick_by_weight` sums them
    point = sql.SQL("({} * {}::float8)").format(place, sql.Literal(repr(float(total))))
    branches = []
    for variant in step.variants[:-1]:
        point = sql.SQL("({} - {}::float8)").format(point, sql.Literal(repr(float(variant.weight))))
        branches.append(sql.SQL("when {} < 0 then {}").format(point, sql.Literal(variant.id)))
    return sql.SQL("case {} else {} end").format(
        sql.SQL(" ").join(branches), sql.Literal(step.variants[-1].id)
    )


def _reference_step(campaign: Campaign, index: int) -> Step:
    """The step whose outcome decides step `index`: the one named, else the one before."""
    step = campaign.steps[index]
    if step.when.step:
        return campaign.steps[campaign.step_index(step.when.step)]
    return campaign.steps[index - 1] if index > 0 else step


def _decide(cur, campaign: Campaign, index: int, run_date: date) -> None:
    """One statement: for every journey due step `index` today, what happens to it.

    In the order the checks apply: the condition on the reference step (else `skipped`),
    a reachable contact (else `unreachable`), the frequency caps (`deferred` while the
    deferral lasts, then `capped_out`), and then `sent` to the treatment or `held_out`.
    """
    step = campaign.steps[index]
    reference = _reference_step(campaign, index)
    outcome = step.when.outcome
    if outcome == "any":
        condition = sql.SQL("true")
    else:
        condition = sql.SQL("(s.sent_on is not null and ({}))").format(sql.SQL(OUTCOMES[outcome]))
    if step.channel == "popup":
        reachable = sql.SQL("true")
    else:
        contact = "has_valid_email" if step.channel == "email" else "has_valid_phone"
        reachable = sql.SQL(
            "(coalesce(f.{subscribed}, false) and coalesce(f.{contact}, false) "
            "and not coalesce(f.{suppressed}, false))"
        ).format(
            subscribed=sql.Identifier(f"is_{step.channel}_subscribed"),
            contact=sql.Identifier(contact),
            suppressed=sql.Identifier(f"is_{step.channel}_suppressed"),
        )
    query = sql.SQL(
        """
        with due as (
            select a.customer_id, a.assigned_group, a.deferred_days
            from {advancing} a
            where a.status = 'active' and a.next_step = %(index)s
              and a.clock_date + %(wait)s + a.deferred_days <= %(d)s
        ),
        -- the day the reference step was sent or held out (a hold-out's record wins)
        reference as (
            select d.customer_id,
                   coalesce(
                       (select max(e.run_date) from winback.journey_events e
                        where e.campaign_id = %(c)s and e.customer_id = d.customer_id
                          and e.step_id = %(reference)s and e.action = 'held_out'),
                       (select max(o.run_date) from winback.outbox o
                        where o.campaign_id = %(c)s and o.customer_id = d.customer_id
                          and o.step_id = %(reference)s)
                   ) as sent_on
            from due d
        ),
        signals as (
            select r.customer_id, r.sent_on,
                   coalesce(bool_or(g.event_type in ('delivered', 'open', 'click')), false)
                       as delivered,
                   coalesce(bool_or(g.event_type in ('open', 'click')), false) as opened,
                   coalesce(bool_or(g.event_type = 'click'), false) as clicked,
                   exists (select 1 from {purchases} p
                           where p.customer_id = r.customer_id
                             and p.order_date between r.sent_on and %(d)s) as purchased
            from reference r
            left join {signals} g
              on g.customer_id = r.customer_id and g.channel = %(reference_channel)s
             and g.day between r.sent_on and %(d)s
            group by r.customer_id, r.sent_on
        ),
        judged as (
            select d.customer_id, d.assigned_group, d.deferred_days,
                   {condition} as condition_holds,
                   {reachable} as is_reachable,
                   d.customer_id in ({capped}) as is_capped,
                   {variant} as variant
            from due d
            join signals s on s.customer_id = d.customer_id
            left join {features} f on f.customer_id = d.customer_id
        )
        select customer_id, assigned_group,
               case when not condition_holds then 'skipped'
                    when not is_reachable then 'unreachable'
                    when is_capped and deferred_days < %(max_deferral)s then 'deferred'
                    when is_capped then 'capped_out'
                    when assigned_group = 'treatment' then 'sent'
                    else 'held_out' end as decision,
               variant
        from judged
        """
    ).format(
        advancing=ADVANCING,
        purchases=PURCHASES,
        signals=SIGNALS,
        condition=condition,
        reachable=reachable,
        capped=caps.capped_sql(campaign, step, run_date),
        variant=variant_sql(campaign, step, sql.SQL("d.customer_id")),
        features=sql.SQL(FEATURES),
    )
    _temporary(
        cur,
        DECISIONS,
        query,
        {
            "c": campaign.id,
            "d": run_date,
            "index": index,
            "wait": step.wait_days,
            "reference": reference.id,
            "reference_channel": reference.channel,
            "max_deferral": campaign.caps.max_deferral_days,
        },
    )


def _record_events(cur, campaign: Campaign, run_date: date, rows: sql.Composable) -> None:
    """Insert `rows` (customer_id, step_id, action, variant, detail) as journey events."""
    cur.execute(
        sql.SQL(
            """
            insert into winback.journey_events
                (campaign_id, customer_id, run_date, step_id, action, variant, detail)
            select %(c)s, customer_id, %(d)s, step_id, action, variant, detail from ({rows}) r
            on conflict do nothing
            """
        ).format(rows=rows),
        {"c": campaign.id, "d": run_date},
    )


def _take_step(
    cur, campaign: Campaign, index: int, run_date: date, messages: MessageBuilder
) -> tuple[StepCounts, int, int]:
    """Decide, send and record step `index` for everyone due it today. Returns its counts,
    the outbox rows added and the messages moved out of quiet hours."""
    step = campaign.steps[index]
    _decide(cur, campaign, index, run_date)
    counts = StepCounts()
    for row in cur.execute(
        sql.SQL("select decision, count(*) as n from {} group by 1").format(DECISIONS)
    ).fetchall():
        decision, n = row["decision"], row["n"]
        counts.due += n
        if decision in ("skipped", "unreachable", "sent", "held_out"):
            setattr(counts, decision, n)
        else:  # deferred, capped_out
            counts.capped += n
        if decision in ("sent", "held_out"):
            counts.condition_met += n
    if not counts.due:
        return counts, 0, 0
    # Only the treatment is ever sent anything: the holdout and the global control are
    # recorded as held out. The messages due today are the only per-customer work.
    due_messages = cur.execute(
        sql.SQL(
            """
            select d.customer_id, d.variant, coalesce(to_jsonb(f), '{{}}'::jsonb) as features
            from {decisions} d left join {features} f on f.customer_id = d.customer_id
            where d.decision = 'sent'
            order by d.customer_id
            """
        ).format(decisions=DECISIONS, features=sql.SQL(FEATURES))
    ).fetchall()
    built = messages.build_many(
        campaign, step, [(r["variant"], r["features"]) for r in due_messages], run_date
    )
    moved = sum(1 for message in built if message["moved_for_quiet_hours"])
    counts.scheduled_after_quiet_hours = moved
    added = _write_outbox(
        cur,
        campaign,
        step,
        [
            (r["customer_id"], r["variant"], message)
            for r, message in zip(due_messages, built, strict=True)
        ],
        run_date,
    )
    caps.record(cur, step, run_date, [r["customer_id"] for r in due_messages])
    _record_events(
        cur,
        campaign,
        run_date,
        sql.SQL(
            """
            select customer_id, {step} as step_id,
                   case decision when 'unreachable' then 'skipped' else decision end as action,
                   case when decision in ('sent', 'held_out') then variant end as variant,
                   case decision
                       when 'skipped' then {not_held}
                       when 'unreachable' then {no_contact}
                       when 'deferred' then 'frequency cap'
                       when 'capped_out' then 'frequency cap'
                   end as detail
            from {decisions}
            """
        ).format(
            step=sql.Literal(step.id),
            not_held=sql.Literal(f"{step.when.outcome} did not hold"),
            no_contact=sql.Literal(f"no reachable {step.channel} contact"),
            decisions=DECISIONS,
        ),
    )
    # A deferred step waits a day; every other decision moves the journey on, its clock
    # starting today.
    cur.execute(
        sql.SQL(
            """
            update {advancing} a
            set deferred_days = case when d.decision = 'deferred' then a.deferred_days + 1
                                     else 0 end,
                next_step = case when d.decision = 'deferred' then a.next_step
                                 else a.next_step + 1 end,
                clock_date = case when d.decision = 'deferred' then a.clock_date
                                  else %(d)s end
            from {decisions} d
            where d.customer_id = a.customer_id
            """
        ).format(advancing=ADVANCING, decisions=DECISIONS),
        {"d": run_date},
    )
    _refresh_statistics(cur)
    return counts, added, moved


def _refresh_statistics(cur) -> None:
    """Re-analyse the journeys advancing after a statement moved many of them.

    The next step's statement picks who is due by `next_step`, which the statistics taken
    at load time say almost nobody has: after a step with `wait_days: 0`, a hundred
    thousand journeys can be due the next one, and a plan made for one row (a nested loop
    over them) took 74 s at a million customers where it takes under a second.
    """
    cur.execute(sql.SQL("analyze {}").format(ADVANCING))


def _complete(cur, campaign: Campaign, run_date: date) -> int:
    """End the journeys whose last step is done and whose `end_after_days` have passed,
    running the campaign's end actions for the treatment. Returns how many ended."""
    cur.execute(
        sql.SQL(
            """
            update {advancing}
            set status = 'completed', ended_on = %(d)s
            where status = 'active' and next_step >= %(steps)s
              and clock_date + %(end_after)s <= %(d)s
            """
        ).format(advancing=ADVANCING),
        {
            "d": run_date,
            "steps": len(campaign.steps),
            "end_after": campaign.journey.end_after_days,
        },
    )
    completed = cur.rowcount
    _record_events(
        cur,
        campaign,
        run_date,
        sql.SQL(
            "select customer_id, '' as step_id, 'completed' as action, null as variant, "
            "null as detail from {} where status = 'completed'"
        ).format(ADVANCING),
    )
    for action in campaign.journey.on_end:
        channel = action.removeprefix("withdraw_").removesuffix("_consent")
        cur.execute(
            sql.SQL(
                """
                insert into winback.consent_withdrawals
                    (customer_id, channel, campaign_id, withdrawn_on)
                select customer_id, %(channel)s, %(c)s, %(d)s from {advancing}
                where status = 'completed' and assigned_group = 'treatment'
                on conflict do nothing
                """
            ).format(advancing=ADVANCING),
            {"channel": channel, "c": campaign.id, "d": run_date},
        )
    return completed


def advance(
    conn: psycopg.Connection,
    campaign: Campaign,
    run_date: date,
    messages: MessageBuilder,
) -> AdvanceResult:
    """Advance every active journey of `campaign` not yet advanced for `run_date`.

    A fixed number of statements per campaign and step, whatever the number of journeys.
    """
    result = AdvanceResult(steps={s.id: StepCounts() for s in campaign.steps})
    with conn.cursor(row_factory=dict_row) as cur:
        messages.prepare(cur, campaign)
        result.advanced = _load_journeys(cur, campaign, run_date)
        if not result.advanced:
            return result
        caps.load_recent(cur, campaign, run_date, ADVANCING)
        result.exited = _exit(cur, campaign, run_date)
        for index, step in enumerate(campaign.steps):
            counts, added, moved = _take_step(cur, campaign, index, run_date, messages)
            result.steps[step.id] = counts
            result.outbox_added += added
            result.scheduled_for_quiet_hours += moved
        result.completed = _complete(cur, campaign, run_date)
        messages.flush()
        _write_back(cur, campaign, run_date)
    return result


def _write_back(cur, campaign: Campaign, run_date: date) -> None:
    """Log this run and write back the journeys it changed, stamped with it.

    A journey it left as it was is not rewritten: the run's entry in `journey_runs` says
    it was advanced (`advanced_through_sql`). At a million customers a later day rewrote
    every active journey, about 380,000 rows and 2.5 s for the largest campaign alone; now
    only the journeys that moved.
    """
    run_id = cur.execute(
        "insert into winback.journey_runs (campaign_id, run_date) values (%s, %s) returning run_id",
        (campaign.id, run_date),
    ).fetchone()["run_id"]
    cur.execute(
        sql.SQL(
            """
            update winback.journey_state j
            set next_step = a.next_step, clock_date = a.clock_date,
                deferred_days = a.deferred_days, status = a.status,
                exit_reason = a.exit_reason, ended_on = a.ended_on,
                advanced_through = %(d)s, written_by_run = %(run)s
            from {advancing} a
            where j.campaign_id = %(c)s and j.customer_id = a.customer_id
              and (a.status <> 'active' or a.next_step <> a.loaded_next_step
                   or a.clock_date <> a.loaded_clock_date
                   or a.deferred_days <> a.loaded_deferred_days)
            """
        ).format(advancing=ADVANCING),
        {"c": campaign.id, "d": run_date, "run": run_id},
    )


OUTBOX_COLUMNS = (
    "idempotency_key", "run_date", "campaign_id", "step_id", "customer_id", "channel",
    "payload", "send_at", "variant", "coupon_code", "coupon_expires_on", "tracked_link",
    "assigned_group", "coupon_key_fingerprint",
)  # fmt: skip
OUTBOX_STAGED = sql.Identifier("outbox_staged")


def _write_outbox(
    cur, campaign: Campaign, step: Step, messages: list[tuple], run_date: date
) -> int:
    """Insert one step's messages; a key already taken (a rerun) adds nothing.

    The rows go in by COPY to a temporary table and one insert from it: at a million
    customers a day's messages number in the tens of thousands, and COPY carries them in
    one stream where a row-by-row insert pays a round of parsing and planning per row.
    """
    if not messages:
        return 0
    columns = sql.SQL(", ").join(map(sql.Identifier, OUTBOX_COLUMNS))
    cur.execute(sql.SQL("drop table if exists {}").format(OUTBOX_STAGED))
    cur.execute(
        sql.SQL(
            "create temporary table {staged} on commit drop as "
            "select {columns} from winback.outbox with no data"
        ).format(staged=OUTBOX_STAGED, columns=columns)
    )
    copy_sql = sql.SQL("copy {} ({}) from stdin").format(OUTBOX_STAGED, columns)
    with cur.copy(copy_sql) as copy:
        for customer_id, variant, message in messages:
            copy.write_row(
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
                    "treatment",
                    message.get("key_fingerprint"),
                )
            )
    cur.execute(
        sql.SQL(
            "insert into winback.outbox ({columns}) select {columns} from {staged} "
            "order by customer_id on conflict do nothing"
        ).format(columns=columns, staged=OUTBOX_STAGED)
    )
    return cur.rowcount
