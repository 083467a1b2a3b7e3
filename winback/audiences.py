"""Campaign audiences, holdout assignment and the outbox.

For every active campaign and run date:

1. the campaign's audience rule selects candidates from `marts.customer_features`;
2. eligibility filters are applied last, in order, each logged with the count it removed:
   consent for the channel, a valid contact, the suppression list;
3. each remaining customer is assigned to treatment or holdout by a hash of
   (campaign, customer): stable across reruns and backfills, no state needed;
4. the audience is stored per run for audit (`winback.campaign_audiences`), and each
   treatment customer's message for the campaign's first step goes to `winback.outbox`
   under an idempotency key of (campaign, step, customer, channel): a rerun or a backfill
   of any day finds the key taken and adds nothing, so no step reaches a customer twice.

A customer eligible for several campaigns gets the one with the highest priority.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import date

import jinja2
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from winback.campaigns import Campaign

log = logging.getLogger(__name__)

FEATURES = "marts.customer_features"

APP_SCHEMA_DDL = """
create schema if not exists winback;

create table if not exists winback.campaign_audiences (
    run_date date not null,
    campaign_id text not null,
    customer_id text not null,
    channel text not null,
    assigned_group text not null check (assigned_group in ('treatment', 'holdout')),
    rfm_segment text,
    lifecycle_stage text,
    built_at timestamptz not null default now(),
    primary key (run_date, campaign_id, customer_id)
);
comment on table winback.campaign_audiences is
    'Each run''s audience per campaign, treatment and holdout alike, for audit and measurement.';

create table if not exists winback.audience_filter_log (
    run_date date not null,
    campaign_id text not null,
    position integer not null,
    filter_name text not null,
    customers_before integer not null,
    customers_after integer not null,
    primary key (run_date, campaign_id, position)
);

create table if not exists winback.outbox (
    idempotency_key text primary key,
    run_date date not null,
    campaign_id text not null,
    step_id text not null,
    customer_id text not null,
    channel text not null,
    payload jsonb not null,
    created_at timestamptz not null default now(),
    unique (campaign_id, step_id, customer_id, channel)
);
comment on table winback.outbox is
    'Messages to send; one row per (campaign, step, customer, channel), ever.';

create table if not exists winback.send_ledger (
    idempotency_key text not null references winback.outbox (idempotency_key),
    mode text not null check (mode in ('dry_run', 'live')),
    status text not null,
    provider text not null,
    provider_message_id text,
    run_date date not null,
    intent_recorded_at timestamptz not null default now(),
    acknowledged_at timestamptz,
    error text,
    primary key (idempotency_key, mode)
);
comment on table winback.send_ledger is
    'Intent and acknowledgement of every send; dry runs are recorded as mode dry_run.';
"""


@dataclass(frozen=True)
class EligibilityFilter:
    name: str
    predicate: str  # SQL over customer_features columns; constant text, never user input


# The order is the order of the log: consent first, then contact, then suppression.
ELIGIBILITY: dict[str, list[EligibilityFilter]] = {
    "email": [
        EligibilityFilter("newsletter consent", "f.is_email_subscribed"),
        EligibilityFilter("deliverable email", "f.has_valid_email"),
        EligibilityFilter("not suppressed for email", "not f.is_email_suppressed"),
    ],
    "sms": [
        EligibilityFilter("SMS consent", "f.is_sms_subscribed"),
        EligibilityFilter("phone in E.164", "f.has_valid_phone"),
        EligibilityFilter("not suppressed for SMS", "not f.is_sms_suppressed"),
    ],
    # An on-site popup reaches visitors already on the site: no message, no consent needed.
    "popup": [],
}


@dataclass
class AudienceResult:
    campaign_id: str
    channel: str
    candidates: int
    filters: list[tuple[str, int]] = field(default_factory=list)  # (filter, customers left)
    treatment: int = 0
    holdout: int = 0
    outbox_added: int = 0


def holdout_threshold(share: float) -> int:
    """Hash values below this (of 2**32) go to the holdout."""
    return int(share * 2**32)


def assignment_hash(campaign_id: str, customer_id: str) -> int:
    """The same 32-bit hash the SQL computes; used by tests and measurement tools."""
    digest = hashlib.md5(f"{campaign_id}:{customer_id}".encode()).hexdigest()
    return int(digest[:8], 16)


def idempotency_key(campaign_id: str, step_id: str, customer_id: str, channel: str) -> str:
    return hashlib.sha256(f"{campaign_id}|{step_id}|{customer_id}|{channel}".encode()).hexdigest()


def ensure_app_schema(conn: psycopg.Connection) -> None:
    conn.execute(APP_SCHEMA_DDL)


def _audience_predicate(campaign: Campaign) -> tuple[sql.Composable, dict]:
    clauses, params = [], {}
    if campaign.audience.rfm_segments:
        clauses.append(sql.SQL("f.rfm_segment = any(%(segments)s)"))
        params["segments"] = list(campaign.audience.rfm_segments)
    if campaign.audience.lifecycle_stages:
        clauses.append(sql.SQL("f.lifecycle_stage = any(%(stages)s)"))
        params["stages"] = list(campaign.audience.lifecycle_stages)
    return sql.SQL(" and ").join(clauses), params


def build_campaign_audience(
    conn: psycopg.Connection, campaign: Campaign, run_date: date, taken: set[str]
) -> AudienceResult:
    """Select, filter and assign one campaign's audience for `run_date`."""
    channel = campaign.steps[0].channel
    predicate, params = _audience_predicate(campaign)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("drop table if exists candidates")
        cur.execute(
            sql.SQL(
                "create temporary table candidates on commit drop as "
                "select f.* from {features} f where {predicate}"
            ).format(features=sql.SQL(FEATURES), predicate=predicate),
            params,
        )
        candidates = cur.execute("select count(*) as n from candidates").fetchone()["n"]
        result = AudienceResult(campaign.id, channel, candidates)
        remaining = candidates
        filters = list(ELIGIBILITY[channel])
        for position, rule in enumerate(filters):
            cur.execute(
                sql.SQL("delete from candidates f where not ({})").format(sql.SQL(rule.predicate))
            )
            after = remaining - cur.rowcount
            result.filters.append((rule.name, after))
            log_filter(cur, run_date, campaign.id, position, rule.name, remaining, after)
            remaining = after
        # Priority between campaigns: customers already taken by a higher-priority one.
        if taken:
            cur.execute("delete from candidates where customer_id = any(%s)", (list(taken),))
        after = remaining - (cur.rowcount if taken else 0)
        result.filters.append(("not in a higher-priority campaign", after))
        log_filter(
            cur,
            run_date,
            campaign.id,
            len(filters),
            "not in a higher-priority campaign",
            remaining,
            after,
        )

        cur.execute(
            "delete from winback.campaign_audiences where run_date = %s and campaign_id = %s",
            (run_date, campaign.id),
        )
        cur.execute(
            """
            insert into winback.campaign_audiences
                (run_date, campaign_id, customer_id, channel, assigned_group, rfm_segment,
                 lifecycle_stage)
            select %(run_date)s, %(campaign)s, customer_id, %(channel)s,
                   case when ('x' || substr(md5(%(campaign)s || ':' || customer_id), 1, 8))
                             ::bit(32)::bigint < %(threshold)s
                        then 'holdout' else 'treatment' end,
                   rfm_segment, lifecycle_stage
            from candidates
            """,
            {
                "run_date": run_date,
                "campaign": campaign.id,
                "channel": channel,
                "threshold": holdout_threshold(campaign.holdout_share),
            },
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
        taken.update(r["customer_id"] for r in cur.execute("select customer_id from candidates"))
        result.outbox_added = _enqueue_first_step(cur, campaign, run_date)
        cur.execute("drop table candidates")
    return result


def log_filter(cur, run_date, campaign_id, position, name, before, after) -> None:
    cur.execute(
        """
        insert into winback.audience_filter_log
            (run_date, campaign_id, position, filter_name, customers_before, customers_after)
        values (%s, %s, %s, %s, %s, %s)
        on conflict (run_date, campaign_id, position) do update set
            filter_name = excluded.filter_name,
            customers_before = excluded.customers_before,
            customers_after = excluded.customers_after
        """,
        (run_date, campaign_id, position, name, before, after),
    )
    log.info("%s: %-34s %7d -> %7d", campaign_id, name, before, after)


_TEMPLATES = jinja2.Environment(autoescape=False, undefined=jinja2.ChainableUndefined)


def _enqueue_first_step(cur, campaign: Campaign, run_date: date) -> int:
    """Render the first step for treatment customers not yet messaged for it."""
    step = campaign.steps[0]
    subject = _TEMPLATES.from_string(step.subject or "")
    body = _TEMPLATES.from_string(step.body)
    rows = cur.execute(
        """
        select c.*
        from candidates c
        join winback.campaign_audiences a
          on a.customer_id = c.customer_id and a.run_date = %s and a.campaign_id = %s
        where a.assigned_group = 'treatment'
        """,
        (run_date, campaign.id),
    ).fetchall()
    added = 0
    for row in rows:
        key = idempotency_key(campaign.id, step.id, row["customer_id"], step.channel)
        payload = {
            "to": row["email"] if step.channel == "email" else row.get("phone"),
            "subject": subject.render(**row) if step.subject else None,
            "body": body.render(**row),
        }
        cur.execute(
            """
            insert into winback.outbox
                (idempotency_key, run_date, campaign_id, step_id, customer_id, channel, payload)
            values (%s, %s, %s, %s, %s, %s, %s)
            on conflict do nothing
            """,
            (
                key,
                run_date,
                campaign.id,
                step.id,
                row["customer_id"],
                step.channel,
                json.dumps(payload, default=str),
            ),
        )
        added += cur.rowcount
    return added


def build_audiences(
    conn: psycopg.Connection, campaigns: list[Campaign], run_date: date
) -> list[AudienceResult]:
    """Every active campaign's audience for `run_date`, highest priority first."""
    ensure_app_schema(conn)
    taken: set[str] = set()
    results = []
    with conn.transaction():
        for campaign in sorted(campaigns, key=lambda c: (-c.priority, c.id)):
            if not campaign.is_active(run_date):
                log.info("%s: not active on %s, skipped", campaign.id, run_date)
                continue
            results.append(build_campaign_audience(conn, campaign, run_date, taken))
    return results
