"""Campaign audiences: who enters each campaign on a run date, and the run's orchestration.

For every campaign and run date, highest priority first:

1. the campaign's audience rule (`winback.campaigns.rules`, compiled to parameterized SQL) selects
   candidates from `marts.customer_features`;
2. eligibility is applied last, each filter logged with its count in
   `winback.audience_filter_log`: consent for each channel, a valid contact, the
   suppression list (and consent a campaign withdrew), priority (a customer in another
   campaign's journey, or taken today by a higher-priority campaign, is not available),
   and whether the customer already went through this campaign;
3. new entrants are assigned to treatment or holdout, by a hash of (campaign, customer)
   (`winback.campaigns.assignment`)
   balanced within each stratum (segment), and the assignment is stored with their journey
   (`winback.journey_state`): reruns and backfills never move anyone;
4. the day's audience, treatment and holdout alike, is stored for audit and measurement
   (`winback.campaign_audiences`);
5. every journey of the campaign is advanced (`winback.campaigns.journeys`): steps that are due are
   sent to the treatment through `winback.outbox` (frequency caps and SMS quiet hours
   applied at that moment) and recorded, not sent, for the holdout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from winback import config
from winback.campaigns import assignment, journeys
from winback.campaigns.campaign_files import Campaign
from winback.campaigns.journeys import idempotency_key  # noqa: F401  (the outbox key, re-exported)
from winback.campaigns.messages import MessageBuilder
from winback.warehouse import relations, tables

log = logging.getLogger(__name__)

FEATURES = relations.CUSTOMER_FEATURES

# The global control group (issue 17): a stable share of all customers who receive no
# winback message at all. They go through every campaign like anyone else (audience,
# eligibility, priority, journey clock) with the group 'global_control', which is held out
# like a campaign holdout, so the program can be measured against them.
# Hashed with the customer id as a campaign id is; no campaign id has a colon.
GLOBAL_CONTROL_KEY = "winback:global_control"
GLOBAL_CONTROL_STRATUM = "rfm_segment"


@dataclass(frozen=True)
class EligibilityFilter:
    name: str
    predicate: str  # SQL over customer_features columns; constant text, never user input


# The order is the order of the log: consent first, then contact, then suppression.
ELIGIBILITY: dict[str, list[EligibilityFilter]] = {
    "email": [
        EligibilityFilter("newsletter consent", "f.is_email_subscribed"),
        EligibilityFilter("deliverable email", "f.has_valid_email"),
        EligibilityFilter(
            "not suppressed for email",
            "not f.is_email_suppressed and not exists (select 1 from "
            "winback.consent_withdrawals w where w.customer_id = f.customer_id "
            "and w.channel = 'email')",
        ),
    ],
    "sms": [
        EligibilityFilter("SMS consent", "f.is_sms_subscribed"),
        EligibilityFilter("phone in E.164", "f.has_valid_phone"),
        EligibilityFilter(
            "not suppressed for SMS",
            "not f.is_sms_suppressed and not exists (select 1 from "
            "winback.consent_withdrawals w where w.customer_id = f.customer_id "
            "and w.channel = 'sms')",
        ),
    ],
    # An on-site popup reaches visitors already on the site: no message, no consent needed.
    "popup": [],
}
PRIORITY_FILTER = "not in another campaign's journey"
ALREADY_THROUGH_FILTER = "not already through this campaign"


@dataclass
class AudienceResult:
    campaign_id: str
    channel: str
    candidates: int = 0
    filters: list[tuple[str, int]] = field(default_factory=list)  # (filter, customers left)
    treatment: int = 0
    holdout: int = 0
    entered: int = 0
    outbox_added: int = 0
    exited: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    scheduled_for_quiet_hours: int = 0
    steps: dict[str, dict[str, int]] = field(default_factory=dict)


def fill_strata_sql(newcomers: sql.Composable, earlier: sql.Composable) -> sql.Composable:
    """Who of `newcomers` is held out (the global control, a campaign's holdout), as a query
    of their rows plus `is_held`.

    Within each stratum, the newcomers in hash order fill the held-out group up to `share`
    (the parameter `%(share)s`) of everyone ever assigned in that stratum: exact shares even
    for small strata, and, as the assignment is stored, no later run moves anyone.
    `newcomers` yields customer_id, stratum and assignment_hash (`assignment.hash_sql`);
    `earlier` yields, per stratum, how many were assigned before (total) and held (held).
    """
    return sql.SQL(
        """
        select n.*,
               row_number() over (partition by n.stratum
                                  order by n.assignment_hash, n.customer_id)
               <= round(%(share)s * (coalesce(p.total, 0)
                                     + count(*) over (partition by n.stratum)))
                  - coalesce(p.held, 0) as is_held
        from ({newcomers}) n left join ({earlier}) p using (stratum)
        """
    ).format(newcomers=newcomers, earlier=earlier)


def assign_global_control(cur, run_date: date, share: float) -> int:
    """Assign every customer not yet assigned to the global control group or not.

    As campaign holdouts are (`fill_strata_sql`): within each stratum (RFM segment when
    first seen), new customers in hash order fill the control up to `share` of everyone
    ever assigned in that stratum; stored once, never moved. Returns how many customers
    were assigned.
    """
    newcomers = sql.SQL(
        """
        select f.customer_id,
               coalesce(f.{stratum}::text, 'unknown') as stratum,
               {assignment_hash} as assignment_hash
        from {features} f
        where not exists (
            select 1 from winback.global_control g where g.customer_id = f.customer_id)
        """
    ).format(
        stratum=sql.Identifier(GLOBAL_CONTROL_STRATUM),
        features=sql.SQL(FEATURES),
        # The one assignment hash (winback.campaigns.assignment), keyed like a campaign.
        assignment_hash=assignment.hash_sql(sql.Placeholder("key"), sql.SQL("f.customer_id")),
    )
    earlier = sql.SQL(
        "select stratum, count(*) as total, count(*) filter (where is_control) as held "
        "from winback.global_control group by stratum"
    )
    cur.execute(
        sql.SQL(
            """
            insert into winback.global_control
                (customer_id, stratum, is_control, assigned_on, share)
            select customer_id, stratum, is_held, %(run_date)s, %(share)s
            from ({filled}) filled
            """
        ).format(filled=fill_strata_sql(newcomers, earlier)),
        {"key": GLOBAL_CONTROL_KEY, "share": share, "run_date": run_date},
    )
    return cur.rowcount


def audience_sql(campaign: Campaign) -> tuple[sql.Composable, dict]:
    """The campaign's audience as a parameterized predicate over `f` (customer_features)."""
    from winback.campaigns import rules

    compiled = rules.compile_rule(campaign.audience.expression(), alias="f")
    return compiled.sql, dict(compiled.params)


def log_filter(cur, run_date, campaign_id, position, name, before, after, stage="entry") -> None:
    cur.execute(
        """
        insert into winback.audience_filter_log
            (run_date, campaign_id, position, filter_name, customers_before, customers_after,
             stage)
        values (%s, %s, %s, %s, %s, %s, %s)
        on conflict (run_date, campaign_id, position) do update set
            filter_name = excluded.filter_name,
            customers_before = excluded.customers_before,
            customers_after = excluded.customers_after,
            stage = excluded.stage
        """,
        (run_date, campaign_id, position, name, before, after, stage),
    )
    log.info("%s: %-40s %7d -> %7d", campaign_id, name, before, after)


def _apply_filter(cur, predicate: sql.Composable, params=None) -> int:
    """Delete candidates failing `predicate`; return how many were removed."""
    cur.execute(sql.SQL("delete from candidates f where not ({})").format(predicate), params)
    return cur.rowcount


def enrol(cur, campaign: Campaign, run_date: date, result: AudienceResult) -> int:
    """Select, filter and enrol `campaign`'s audience for `run_date`; return log rows used."""
    predicate, params = audience_sql(campaign)
    params["run_date"] = run_date
    cur.execute("drop table if exists candidates")
    cur.execute(
        sql.SQL(
            "create temporary table candidates on commit drop as "
            "select f.* from {features} f where {predicate}"
        ).format(features=sql.SQL(FEATURES), predicate=predicate),
        params,
    )
    remaining = result.candidates = cur.execute("select count(*) as n from candidates").fetchone()[
        "n"
    ]
    position = 0
    steps: list[tuple[str, sql.Composable, dict | None]] = []
    for channel in campaign.channels:
        for rule in ELIGIBILITY[channel]:
            steps.append((rule.name, sql.SQL(rule.predicate), None))
    # Priority: one campaign at a time. A customer in another campaign's journey, or in one
    # that a higher-priority campaign (processed first) started or ended today, is taken.
    steps.append(
        (
            PRIORITY_FILTER,
            sql.SQL(
                "not exists (select 1 from winback.journey_state j where j.customer_id = "
                "f.customer_id and j.campaign_id <> %(campaign)s "
                "and (j.status = 'active' or j.ended_on >= %(run_date)s) "
                "and j.entered_on <= %(run_date)s)"
            ),
            {"campaign": campaign.id, "run_date": run_date},
        )
    )
    # Nobody goes through the same campaign twice; a journey that ended today (on an
    # earlier run of this day) still counts as today's audience, so a rerun matches.
    steps.append(
        (
            ALREADY_THROUGH_FILTER,
            sql.SQL(
                "not exists (select 1 from winback.journey_state j where j.customer_id = "
                "f.customer_id and j.campaign_id = %(campaign)s and (j.ended_on < %(run_date)s "
                "or j.entered_on > %(run_date)s))"
            ),
            {"campaign": campaign.id, "run_date": run_date},
        )
    )
    for name, predicate_sql, filter_params in steps:
        after = remaining - _apply_filter(cur, predicate_sql, filter_params)
        result.filters.append((name, after))
        log_filter(cur, run_date, campaign.id, position, name, remaining, after)
        remaining, position = after, position + 1

    stratum = (
        sql.SQL("'all'")
        if campaign.holdout.stratify_by == "none"
        else sql.SQL("coalesce(c.{}::text, 'unknown')").format(
            sql.Identifier(campaign.holdout.stratify_by)
        )
    )
    newcomers = sql.SQL(
        """
        select c.customer_id, {stratum} as stratum,
               {assignment_hash} as assignment_hash,
               coalesce(g.is_control, false) as is_global_control
        from candidates c
        left join winback.global_control g on g.customer_id = c.customer_id
        where not exists (
            select 1 from winback.journey_state j
            where j.campaign_id = %(campaign)s and j.customer_id = c.customer_id)
        """
    ).format(
        stratum=stratum,
        assignment_hash=assignment.hash_sql(sql.Placeholder("campaign"), sql.SQL("c.customer_id")),
    )
    # The campaign's holdout is drawn from the customers outside the global control, who
    # enter as 'global_control' (held out like a holdout, never counted in its share).
    entrants = sql.SQL("select * from newcomers where not is_global_control")
    earlier = sql.SQL(
        """
        select stratum, count(*) as total,
               count(*) filter (where assigned_group = 'holdout') as held
        from winback.journey_state
        where campaign_id = %(campaign)s and assigned_group <> 'global_control'
        group by stratum
        """
    )
    cur.execute(
        sql.SQL(
            """
            with newcomers as ({newcomers}),
            entered as (
                insert into winback.journey_state
                    (campaign_id, customer_id, assigned_group, stratum, entered_on, clock_date,
                     written_by_run)
                select %(campaign)s, customer_id,
                       case when is_held then 'holdout' else 'treatment' end,
                       stratum, %(run_date)s, %(run_date)s, {latest_run}
                from ({filled}) filled
                union all
                select %(campaign)s, customer_id, 'global_control', stratum, %(run_date)s,
                       %(run_date)s, {latest_run}
                from newcomers where is_global_control
                returning customer_id
            ),
            recorded as (
                insert into winback.journey_events (campaign_id, customer_id, run_date, action)
                select %(campaign)s, customer_id, %(run_date)s, 'entered' from entered
                on conflict do nothing
            )
            select count(*) as n from entered
            """
        ).format(
            newcomers=newcomers,
            filled=fill_strata_sql(entrants, earlier),
            latest_run=sql.SQL(journeys.LATEST_RUN_SQL),
        ),
        {"campaign": campaign.id, "share": campaign.holdout.share, "run_date": run_date},
    )
    result.entered = cur.fetchone()["n"]

    cur.execute(
        "delete from winback.campaign_audiences where run_date = %s and campaign_id = %s",
        (run_date, campaign.id),
    )
    cur.execute(
        """
        insert into winback.campaign_audiences
            (run_date, campaign_id, customer_id, channel, assigned_group, rfm_segment,
             lifecycle_stage, stratum, entered_on)
        select %(run_date)s, %(campaign)s, c.customer_id, %(channel)s, j.assigned_group,
               c.rfm_segment, c.lifecycle_stage, j.stratum, j.entered_on
        from candidates c
        join winback.journey_state j
          on j.campaign_id = %(campaign)s and j.customer_id = c.customer_id
        """,
        {"run_date": run_date, "campaign": campaign.id, "channel": result.channel},
    )
    counts = dict(
        (r["assigned_group"], r["n"])
        for r in cur.execute(
            "select assigned_group, count(*) as n from winback.campaign_audiences "
            "where run_date = %s and campaign_id = %s group by 1",
            (run_date, campaign.id),
        )
    )
    result.treatment, result.holdout = counts.get("treatment", 0), counts.get("holdout", 0)
    cur.execute("drop table candidates")
    return position


def _log_steps(cur, campaign: Campaign, run_date: date, position: int, advanced) -> None:
    """Each due step's decisions, in order, as filter-log rows with stage = the step id."""
    for step in campaign.steps:
        counts = advanced.steps[step.id]
        if not counts.due:
            continue
        condition_held = counts.due - counts.skipped
        reachable = condition_held - counts.unreachable
        rows = [
            (f"{step.id}: when {step.when.outcome}", counts.due, condition_held),
            (f"{step.id}: contact still valid", condition_held, reachable),
            (f"{step.id}: frequency caps", reachable, counts.condition_met),
        ]
        if step.channel == "sms":
            # Quiet hours drop nobody: the count after is how many go out without waiting.
            rows.append(
                (
                    f"{step.id}: outside quiet hours (others scheduled)",
                    counts.sent,
                    counts.sent - counts.scheduled_after_quiet_hours,
                )
            )
        for name, before, after in rows:
            log_filter(cur, run_date, campaign.id, position, name, before, after, stage=step.id)
            position += 1


def refuse_unreadable(
    conn: psycopg.Connection, campaigns: list[Campaign]
) -> tuple[list[Campaign], dict[str, str]]:
    """The campaigns whose columns the warehouse's features table has, and for each other
    campaign one line naming it and the columns it lacks (a model renamed or dropped a
    column, or has not been rebuilt since its contract changed). The others run as usual."""
    from winback.campaigns import campaign_files
    from winback.warehouse import contracts

    present = contracts.relation_columns(conn, FEATURES)
    readable, refused = [], {}
    for campaign in campaigns:
        missing = sorted(campaign_files.columns_read(campaign) - present)
        if missing:
            refused[f"{campaign.id}.yaml"] = (
                f"campaign {campaign.id}: {FEATURES} has no column {', '.join(missing)}; "
                "nothing is enrolled or sent for it until the model provides "
                f"{'it' if len(missing) == 1 else 'them'} (dbt build, or fix the campaign)"
            )
        else:
            readable.append(campaign)
    return readable, refused


def build_audiences(
    conn: psycopg.Connection,
    campaigns: list[Campaign],
    run_date: date,
    send_mode: str = "dry_run",
    refused: dict[str, str] | None = None,
) -> list[AudienceResult]:
    """Enrol every active campaign's audience and advance every journey for `run_date`.

    Highest priority first, in one transaction, each campaign in its own savepoint: a
    campaign that fails at run time (a rule the database cannot evaluate, a template that
    cannot render) is rolled back alone, logged as an error and named with its reason in
    `refused` (when given); nothing is enrolled or sent for it today and the others go on.
    `send_mode="live"` refuses to mint coupon and link codes without
    `WINBACK_COUPON_SECRET` (a dry run falls back to the documented demo secret).
    """
    tables.ensure_schema(conn)
    results = []
    ordered = sorted(campaigns, key=lambda c: (-c.priority, c.id))
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        assigned = assign_global_control(cur, run_date, config.global_control_share())
        log.info("global control: %d customers assigned today", assigned)
        messages = MessageBuilder(conn, run_date, send_mode)
        for campaign in ordered:
            try:
                with conn.transaction():  # a savepoint: this campaign's rows, or none
                    result = _build_campaign(cur, conn, campaign, run_date, messages)
            except Exception as error:  # noqa: BLE001  one campaign's failure, not the day's
                first_line = (str(error).splitlines() or [""])[0][:200]
                reason = (
                    f"campaign {campaign.id}: failed on {run_date} ({type(error).__name__}:"
                    f" {first_line}); nothing was enrolled or sent for it today, its journeys"
                    " wait, and the other campaigns ran"
                )
                log.error("%s", reason)
                if refused is not None:
                    refused[f"{campaign.id}.yaml"] = reason
                # The failed campaign's prepared inputs were rolled back with it.
                messages = MessageBuilder(conn, run_date, send_mode)
                continue
            if result is not None:
                results.append(result)
    return results


def _build_campaign(
    cur, conn, campaign: Campaign, run_date: date, messages: MessageBuilder
) -> AudienceResult | None:
    """One campaign's entry and journeys for `run_date`; None when it did nothing today."""
    channel = ",".join(campaign.channels)
    result = AudienceResult(campaign.id, channel)
    cur.execute(
        "delete from winback.audience_filter_log where run_date = %s and campaign_id = %s",
        (run_date, campaign.id),
    )
    position = 0
    if campaign.is_active(run_date):
        position = enrol(cur, campaign, run_date, result)
    else:
        log.info("%s: not active on %s, no one enters", campaign.id, run_date)
    advanced = journeys.advance(conn, campaign, run_date, messages)
    _log_steps(cur, campaign, run_date, position, advanced)
    result.outbox_added = advanced.outbox_added
    result.exited = advanced.exited
    result.completed = advanced.completed
    result.scheduled_for_quiet_hours = advanced.scheduled_for_quiet_hours
    result.steps = {k: vars(v) for k, v in advanced.steps.items() if v.due}
    if campaign.is_active(run_date) or advanced.advanced:
        return result
    return None


def campaign_counts(conn: psycopg.Connection, run_date: date) -> list[dict]:
    """Per campaign, from the tables: the day's audience and the outbox, for summaries."""
    rows = conn.execute(
        """
        with audience as (
            select campaign_id,
                   count(*) as audience,
                   count(*) filter (where assigned_group = 'treatment') as treatment,
                   count(*) filter (where assigned_group = 'holdout') as holdout
            from winback.campaign_audiences where run_date = %(d)s group by campaign_id
        ),
        journeys as (
            select campaign_id,
                   count(*) filter (where entered_on = %(d)s) as entered,
                   count(*) filter (where status = 'active') as in_journey
            from winback.journey_state group by campaign_id
        ),
        outbox as (
            select campaign_id,
                   count(*) filter (where run_date = %(d)s) as outbox_today,
                   count(*) filter (where run_date = %(d)s and channel = 'email') as email_today,
                   count(*) filter (where run_date = %(d)s and channel = 'sms') as sms_today,
                   count(*) filter (where run_date = %(d)s and channel = 'popup') as popup_today,
                   count(*) as outbox_total
            from winback.outbox group by campaign_id
        )
        select campaign_id,
               coalesce(a.audience, 0) as audience,
               coalesce(a.treatment, 0) as treatment,
               coalesce(a.holdout, 0) as holdout,
               coalesce(j.entered, 0) as entered,
               coalesce(j.in_journey, 0) as in_journey,
               coalesce(o.outbox_today, 0) as outbox_today,
               coalesce(o.email_today, 0) as email_today,
               coalesce(o.sms_today, 0) as sms_today,
               coalesce(o.popup_today, 0) as popup_today,
               coalesce(o.outbox_total, 0) as outbox_total
        from audience a
        full join journeys j using (campaign_id)
        full join outbox o using (campaign_id)
        order by campaign_id
        """,
        {"d": run_date},
    )
    columns = [c.name for c in rows.description]
    return [dict(zip(columns, r, strict=True)) for r in rows.fetchall()]
