"""Every table winback's Python stages own, in schema `winback`, and `ensure_schema`.

This is the one place a `winback.*` table is defined. Each table is one block below: its
`create table if not exists`, then the `alter table ... add column if not exists` lines
that bring a warehouse created by an older winback up to date (so columns added later
sit at the end of the table, in the order they were added), its indexes and its comment.
A stage that writes a table calls `ensure_schema(conn)` before it does; every statement
is idempotent, so calling it again changes nothing.

The tables are declared to dbt as the source `winback`
(`dbt_project/models/staging/_winback__sources.yml`), so `dbt docs` shows what each
stage writes and which exposures read it; `tests/test_tables.py` keeps the two in step.
The `raw` schema is the loader's (`winback.warehouse.raw_schema`, generated from the input
contract); the dbt schemas (staging, intermediate, marts) are dbt's.
"""

from __future__ import annotations

import re

import psycopg
from psycopg.rows import tuple_row

SCHEMA = "winback"

# --- scoring (winback.scoring.scores) ------------------------------------------------------

MODEL_FITS = """
create table if not exists winback.model_fits (
    model_fit_id bigserial primary key,
    fitted_at timestamptz not null default now(),
    as_of_date date not null,
    model text not null check (model in ('bgnbd', 'gamma_gamma')),
    params jsonb,
    log_likelihood double precision,
    customers bigint not null,
    distinct_rows bigint not null,
    first_order_date date,
    last_order_date date,
    time_unit text not null,
    penalizer double precision not null,
    seconds double precision not null,
    converged boolean not null,
    message text,
    backtest jsonb
);
comment on table winback.model_fits is
    'One row per model fit: parameters, log-likelihood, data window, time, back-test.';
-- Added for real shops' data (issue 25): the settings each fit ran with, whether the fit
-- is degenerate (and why), what the scores used instead, and how churn bands were made.
alter table winback.model_fits add column if not exists settings jsonb;
alter table winback.model_fits add column if not exists is_degenerate boolean not null
    default false;
alter table winback.model_fits add column if not exists degenerate_reason text;
alter table winback.model_fits add column if not exists fallback text;
alter table winback.model_fits add column if not exists churn_band_source text;
-- Issue 19: the fit a warm start began from, and the fit whose back-test stands for this
-- one (itself on a day the back-test ran) with why it ran or did not.
alter table winback.model_fits add column if not exists warm_start_model_fit_id bigint;
alter table winback.model_fits add column if not exists backtest_model_fit_id bigint;
alter table winback.model_fits add column if not exists backtest_reason text;
"""

# customer_features left-joins the scores, so the table exists (empty) before the first
# scoring run: `ensure_schema` runs before dbt (the DAG's load task, `winback dbt`).
CUSTOMER_SCORES = """
create table if not exists winback.customer_scores (
    customer_id text primary key,
    p_alive double precision,
    expected_purchases_30d double precision,
    expected_purchases_90d double precision,
    expected_purchases_365d double precision,
    expected_next_purchase_date date,
    expected_order_value numeric,
    clv numeric,
    churn_risk_band text,
    model_fit_id bigint,
    is_stale boolean not null default false,
    stale_reason text,
    as_of_date date,
    scored_at timestamptz
);
"""

# --- campaigns (winback.campaigns.audiences, journeys, personalization) ---------------------

CAMPAIGN_AUDIENCES = """
create table if not exists winback.campaign_audiences (
    run_date date not null,
    campaign_id text not null,
    customer_id text not null,
    channel text not null,
    assigned_group text not null
        check (assigned_group in ('treatment', 'holdout', 'global_control')),
    rfm_segment text,
    lifecycle_stage text,
    built_at timestamptz not null default now(),
    primary key (run_date, campaign_id, customer_id)
);
comment on table winback.campaign_audiences is
    'Each run''s audience per campaign, treatment and holdout alike, for audit and measurement.';
alter table winback.campaign_audiences add column if not exists stratum text;
alter table winback.campaign_audiences add column if not exists entered_on date;
"""

AUDIENCE_FILTER_LOG = """
create table if not exists winback.audience_filter_log (
    run_date date not null,
    campaign_id text not null,
    position integer not null,
    filter_name text not null,
    customers_before integer not null,
    customers_after integer not null,
    primary key (run_date, campaign_id, position)
);
alter table winback.audience_filter_log add column if not exists stage text;
"""

OUTBOX = """
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
alter table winback.outbox add column if not exists send_at timestamptz;
alter table winback.outbox add column if not exists variant text;
alter table winback.outbox add column if not exists coupon_code text;
alter table winback.outbox add column if not exists coupon_expires_on date;
alter table winback.outbox add column if not exists tracked_link text;
alter table winback.outbox add column if not exists assigned_group text;
-- which key made the row's coupon and link codes (personalization.key_fingerprint); a live
-- sync refuses rows made with the public demo key
alter table winback.outbox add column if not exists coupon_key_fingerprint text;
"""

GLOBAL_CONTROL = """
create table if not exists winback.global_control (
    customer_id text primary key,
    stratum text not null,
    is_control boolean not null,
    assigned_on date not null,
    share double precision not null
);
comment on table winback.global_control is
    'Every customer''s global-control assignment, made once (stable hash, balanced within '
    'each RFM segment) and never moved: the control receives no winback message at all.';
"""

JOURNEY_STATE = """
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
-- The run that last wrote the row (winback.journey_runs); null for rows written before runs
-- were logged. A row a run leaves unchanged is not rewritten: the run's log entry says it
-- was advanced (winback.campaigns.journeys.advanced_through_sql).
alter table winback.journey_state add column if not exists written_by_run bigint;
"""

JOURNEY_RUNS = """
create table if not exists winback.journey_runs (
    run_id bigserial primary key,
    campaign_id text not null,
    run_date date not null
);
comment on table winback.journey_runs is
    'Each time a campaign''s journeys were advanced for a run date; with '
    'journey_state.written_by_run, the day each unchanged journey was advanced through.';
create index if not exists journey_runs_by_campaign
    on winback.journey_runs (campaign_id, run_date);
"""

JOURNEY_EVENTS = """
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
"""

CONSENT_WITHDRAWALS = """
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

TRACKED_LINKS = """
create table if not exists winback.tracked_links (
    code text primary key,
    campaign_id text not null,
    step_id text not null,
    customer_id text not null,
    channel text not null,
    target_url text not null,
    created_at timestamptz not null default now()
);
-- No unique key on (campaign, step, customer, channel): after a secret rotation the same
-- link gets a new code, and the old one, already in sent messages, must keep resolving.
create index if not exists tracked_links_customer_idx
    on winback.tracked_links (customer_id, campaign_id);
comment on table winback.tracked_links is
    'Short links of each customer and campaign step: a click resolves to who, what and where.';
"""

# --- delivery (winback.delivery.sync, feedback) ---------------------------------------------

SEND_LEDGER = """
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
alter table winback.send_ledger add column if not exists attempts integer not null default 0;
alter table winback.send_ledger add column if not exists updated_at timestamptz;
-- When a request that the provider may have accepted last went out (or, for a row a killed
-- run left `sending`, when a later run first failed to find it): a lookup that does not
-- find the message is believed only the provider's bound after this.
alter table winback.send_ledger add column if not exists unclear_since timestamptz;
create index if not exists send_ledger_open_rows on winback.send_ledger (mode, status)
    where status in ('sending', 'retry', 'unclear');
create index if not exists send_ledger_provider_message_id
    on winback.send_ledger (provider_message_id);
comment on table winback.send_ledger is
    'Intent and acknowledgement of every send: sending (intent recorded, outcome not yet '
    'known), acknowledged (provider id), rejected (reason), retry, unclear, skipped '
    '(consent or suppression at send time); dry runs are recorded as would_send.';
"""

AUDIENCE_MEMBERS = """
create table if not exists winback.audience_members (
    provider text not null,
    audience text not null,
    customer_id text not null,
    is_member boolean not null default false,
    pending_action text check (pending_action in ('add', 'remove')),
    status text not null,
    error text,
    attempts integer not null default 0,
    updated_at timestamptz not null default now(),
    primary key (provider, audience, customer_id)
);
-- The provider's batch that took a change still `sending`: polled by later attempts and
-- runs until it finishes, never posted again.
alter table winback.audience_members add column if not exists provider_batch_id text;
comment on table winback.audience_members is
    'What each audience provider holds (is_member, as acknowledged) and changes in flight.';
"""

MESSAGE_EVENTS = """
create table if not exists winback.message_events (
    event_id text primary key,
    provider text not null,
    event_type text not null,
    channel text,
    idempotency_key text,
    customer_id text,
    campaign_id text,
    provider_message_id text,
    occurred_at timestamptz not null,
    received_at timestamptz not null default now()
);
create index if not exists message_events_by_key on winback.message_events (idempotency_key);
create index if not exists message_events_by_campaign
    on winback.message_events (campaign_id, event_type);
comment on table winback.message_events is
    'Provider feedback per message, once per provider event id: the funnel after sent.';
-- The event types, in one named constraint so that adding one is a migration here (an
-- older warehouse has the first six in an inline check of the same name).
do $$
begin
    if not exists (
        select 1 from pg_constraint
        where conname = 'message_events_event_type_check'
          and pg_get_constraintdef(oid) like '%help_requested%'
    ) then
        alter table winback.message_events
            drop constraint if exists message_events_event_type_check;
        alter table winback.message_events add constraint message_events_event_type_check
            check (event_type in ('delivered', 'opened', 'clicked', 'bounced', 'soft_bounced',
                                  'complained', 'unsubscribed', 'resubscribed',
                                  'help_requested'));
    end if;
end
$$;
"""

SUPPRESSIONS = """
create table if not exists winback.suppressions (
    channel text not null check (channel in ('email', 'sms')),
    address_hash text not null,
    reason text not null,
    customer_id text,
    source_event_id text,
    suppressed_at timestamptz not null default now(),
    primary key (channel, address_hash)
);
comment on table winback.suppressions is
    'Addresses never to message again (SHA-256 of the normalized address), from feedback.';
"""

FEEDBACK_CURSORS = """
create table if not exists winback.feedback_cursors (
    source text primary key,
    position bigint not null,
    updated_at timestamptz not null default now()
);
"""

# --- quality gates, measurement, task history -----------------------------------------------

QUALITY_RESULTS = """
create table if not exists winback.quality_results (
    run_date date not null,
    gate text not null,
    check_name text not null,
    success boolean not null,
    observed jsonb,
    checked_at timestamptz not null default now(),
    primary key (run_date, gate, check_name)
);
comment on table winback.quality_results is
    'One row per expectation of each quality gate and run date; the latest outcome wins.';
"""

CAMPAIGN_RESULTS = """
create table if not exists winback.campaign_results (
    campaign_id text not null,
    window_start date not null,
    window_end date not null,
    attribution_days integer not null,
    breakdown text not null,
    breakdown_value text not null,
    treatment_customers integer not null,
    holdout_customers integer not null,
    treatment_reactivated integer not null,
    holdout_reactivated integer not null,
    treatment_rate double precision,
    holdout_rate double precision,
    absolute_uplift double precision,
    absolute_uplift_low double precision,
    absolute_uplift_high double precision,
    relative_uplift double precision,
    relative_uplift_low double precision,
    relative_uplift_high double precision,
    p_value double precision,
    incremental_reactivations double precision,
    treatment_revenue numeric,
    holdout_revenue numeric,
    incremental_revenue numeric,
    incentive_cost numeric,
    net_value numeric,
    treatment_left_inactive_stage integer,
    holdout_left_inactive_stage integer,
    computed_at timestamptz not null default now(),
    primary key (campaign_id, window_start, window_end, breakdown, breakdown_value)
);
comment on table winback.campaign_results is
    'Inactive-to-active delta per campaign window against the holdout, overall and by step, '
    'channel, variant and stage at entry.';
-- Measurement for every campaign (issue 17): revenue intervals, the inactive part of each
-- cohort, and the sample-size advice.
alter table winback.campaign_results add column if not exists revenue_per_customer_uplift
    double precision;
alter table winback.campaign_results add column if not exists revenue_per_customer_uplift_low
    double precision;
alter table winback.campaign_results add column if not exists revenue_per_customer_uplift_high
    double precision;
alter table winback.campaign_results add column if not exists incremental_revenue_low numeric;
alter table winback.campaign_results add column if not exists incremental_revenue_high numeric;
alter table winback.campaign_results add column if not exists net_value_per_customer
    double precision;
alter table winback.campaign_results add column if not exists net_value_low numeric;
alter table winback.campaign_results add column if not exists net_value_high numeric;
alter table winback.campaign_results add column if not exists treatment_inactive_at_entry integer;
alter table winback.campaign_results add column if not exists holdout_inactive_at_entry integer;
alter table winback.campaign_results add column if not exists holdout_customers_needed integer;
alter table winback.campaign_results add column if not exists audience_customers_needed integer;
"""

# The program against the global control group (winback.measurement.global_control): the
# same columns as campaign_results, treatment_* for the program and holdout_* for the
# control; made after campaign_results' columns, which it copies.
GLOBAL_CONTROL_RESULTS = """
create table if not exists winback.global_control_results
    (like winback.campaign_results including all);
comment on table winback.global_control_results is
    'Every campaign together against the global control group, per window: treatment_* '
    'columns are the program (everyone outside the control), holdout_* the control.';
"""

TASK_RUNS = """
create table if not exists winback.task_runs (
    dag_id text not null,
    run_id text not null,
    task_id text not null,
    try_number integer not null,
    logical_date date,
    state text not null,
    started_at timestamptz not null,
    finished_at timestamptz not null,
    duration_seconds double precision not null,
    peak_rss_mb double precision not null,
    primary key (dag_id, run_id, task_id, try_number)
);
"""

# Table name -> its block, in creation order (the send ledger references the outbox).
# Which run of winback_daily holds the warehouse (winback.orchestration.run_order).
WAREHOUSE_CLAIM = """
create table if not exists winback.warehouse_claim (
    singleton boolean primary key default true check (singleton),
    run_id text not null,
    run_date date not null,
    run_type text not null,
    claimed_at timestamptz not null default now()
);
comment on table winback.warehouse_claim is
    'The run of winback_daily that holds the warehouse (at most one row).';
"""

DAILY_RUNS = """
create table if not exists winback.daily_runs (
    run_id text primary key,
    run_date date not null,
    run_type text not null,
    claimed_at timestamptz not null,
    finished_at timestamptz
);
comment on table winback.daily_runs is
    'Every run that held the warehouse: when it claimed it and when it finished.';
"""

TABLES: dict[str, str] = {
    "model_fits": MODEL_FITS,
    "customer_scores": CUSTOMER_SCORES,
    "campaign_audiences": CAMPAIGN_AUDIENCES,
    "audience_filter_log": AUDIENCE_FILTER_LOG,
    "outbox": OUTBOX,
    "journey_state": JOURNEY_STATE,
    "journey_runs": JOURNEY_RUNS,
    "journey_events": JOURNEY_EVENTS,
    "consent_withdrawals": CONSENT_WITHDRAWALS,
    "tracked_links": TRACKED_LINKS,
    "send_ledger": SEND_LEDGER,
    "audience_members": AUDIENCE_MEMBERS,
    "message_events": MESSAGE_EVENTS,
    "suppressions": SUPPRESSIONS,
    "feedback_cursors": FEEDBACK_CURSORS,
    "quality_results": QUALITY_RESULTS,
    "campaign_results": CAMPAIGN_RESULTS,
    "task_runs": TASK_RUNS,
    "global_control": GLOBAL_CONTROL,
    "global_control_results": GLOBAL_CONTROL_RESULTS,
    "warehouse_claim": WAREHOUSE_CLAIM,
    "daily_runs": DAILY_RUNS,
}

# A warehouse made before the global control group has the first two groups in its
# checks: widened in place (kept apart from the tables, which must all exist first).
ASSIGNED_GROUP_CHECKS = """
do $$
begin
    if exists (
        select 1 from pg_constraint
        where conname = 'journey_state_assigned_group_check'
          and pg_get_constraintdef(oid) not like '%global_control%'
    ) then
        alter table winback.journey_state drop constraint journey_state_assigned_group_check;
        alter table winback.journey_state add constraint journey_state_assigned_group_check
            check (assigned_group in ('treatment', 'holdout', 'global_control'));
    end if;
    if exists (
        select 1 from pg_constraint
        where conname = 'campaign_audiences_assigned_group_check'
          and pg_get_constraintdef(oid) not like '%global_control%'
    ) then
        alter table winback.campaign_audiences
            drop constraint campaign_audiences_assigned_group_check;
        alter table winback.campaign_audiences
            add constraint campaign_audiences_assigned_group_check
            check (assigned_group in ('treatment', 'holdout', 'global_control'));
    end if;
end $$;
"""

SCHEMA_DDL = (
    f"create schema if not exists {SCHEMA};\n" + "".join(TABLES.values()) + ASSIGNED_GROUP_CHECKS
)

# What SCHEMA_DDL leaves behind, to check before running it.
_ADDED_COLUMNS = frozenset(
    re.findall(rf"alter table {SCHEMA}\.(\w+) add column if not exists (\w+)", SCHEMA_DDL)
)
_INDEXES = frozenset(re.findall(r"create (?:unique )?index if not exists (\w+)", SCHEMA_DDL))
# Constraints a later winback redefined in place (a `do` block in the table's DDL), each
# with a word only its current definition holds.
_REDEFINED_CONSTRAINTS = {
    "message_events_event_type_check": "help_requested",
    "journey_state_assigned_group_check": "global_control",
    "campaign_audiences_assigned_group_check": "global_control",
}


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create schema `winback` and every table in it, and add what an older winback did
    not have (columns, indexes); idempotent.

    A warehouse that has it all is left alone, without a single DDL statement: `alter
    table` and `create index` lock their table even when there is nothing to do, and
    every stage calls this while other stages may be writing.
    """
    if not _is_complete(conn):
        conn.execute(SCHEMA_DDL)


def _is_complete(conn: psycopg.Connection) -> bool:
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(
            """
            select c.relname, a.attname
            from pg_class c
            join pg_namespace n on n.oid = c.relnamespace
            left join pg_attribute a
              on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
            where n.nspname = %s
            """,
            (SCHEMA,),
        ).fetchall()
        current = {
            name
            for name, definition in cur.execute(
                "select conname, pg_get_constraintdef(oid) from pg_constraint "
                "where connamespace = (select oid from pg_namespace where nspname = %s)"
                " and conname = any(%s)",
                (SCHEMA, list(_REDEFINED_CONSTRAINTS)),
            ).fetchall()
            if _REDEFINED_CONSTRAINTS[name] in definition
        }
    relations = {relation for relation, _ in rows}
    columns = {(relation, column) for relation, column in rows}
    return (
        set(TABLES) <= relations
        and _INDEXES <= relations
        and _ADDED_COLUMNS <= columns
        and current == set(_REDEFINED_CONSTRAINTS)
    )
