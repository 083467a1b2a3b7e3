"""Quality gates with great-expectations: a bad day stops before anything is sent.

Three gates, each a GX expectation suite run on the warehouse:

* `raw_inputs`: the day's raw data: rows present, the day's amounts >= 0, no dates after
  the run day (ids are the raw tables' primary keys);
* `scores`: `winback.customer_scores`: p_alive within [0, 1] and never missing, every
  customer with an order scored;
* `audiences`: the day's audiences: one row per customer, nobody without consent for the
  channel, and no audience larger than `max_growth` x its previous run (a param overrides).

Each check's query returns one row of counts (rows present, rows breaking the rule) and
the expectation bounds it. GX runs a query asset's text as it is to learn its columns,
which would pull every row of a per-row query into the worker: ten million order ids at
a million customers. One row of counts keeps each gate's memory flat and lets
PostgreSQL do the work.

Every expectation's outcome is kept in `winback.quality_results`, a table a person can
read. A failed gate raises `QualityGateError` with one readable line per failed
expectation, which fails the Airflow task, so nothing downstream (the sync) runs.
Observed values are counts only, never contact data.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import date, timedelta

import psycopg

from winback.warehouse import db

log = logging.getLogger(__name__)

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

RESULTS_DDL = """
create schema if not exists winback;
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

DEFAULT_MAX_AUDIENCE_GROWTH = 3.0


class QualityGateError(RuntimeError):
    pass


@dataclass(frozen=True)
class Check:
    """One expectation on one query: `name` says in words what must hold."""

    name: str
    query: str
    expectation: object  # a great_expectations.expectations.Expectation


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    success: bool
    observed: dict


def _gx_context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    project_config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    return gx.get_context(mode="ephemeral", project_config=project_config)


def run_checks(gate: str, checks: list[Check], run_date: date) -> list[CheckOutcome]:
    """Run each check as a GX validation over its query; record and return the outcomes."""
    import great_expectations as gx

    context = _gx_context()
    url = db.database_url().replace("postgresql://", "postgresql+psycopg2://", 1)
    source = context.data_sources.add_postgres(name="warehouse", connection_string=url)
    outcomes = []
    for index, check in enumerate(checks):
        asset = source.add_query_asset(name=f"{gate}_{index}", query=check.query)
        batch = asset.add_batch_definition_whole_table(name="all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"{gate}_{index}"))
        suite.add_expectation(check.expectation)
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{gate}_{index}", data=batch, suite=suite)
        )
        result = validation.run()
        [expectation_result] = result.results
        observed = {
            k: v
            for k, v in (expectation_result.result or {}).items()
            if k in ("observed_value", "element_count", "unexpected_count", "unexpected_percent")
        }
        outcomes.append(CheckOutcome(check.name, bool(result.success), observed))
    _record(gate, outcomes, run_date)
    return outcomes


def _record(gate: str, outcomes: list[CheckOutcome], run_date: date) -> None:
    with db.connect() as conn:
        conn.execute(RESULTS_DDL)
        conn.execute(
            "delete from winback.quality_results where run_date = %s and gate = %s",
            (run_date, gate),
        )
        for outcome in outcomes:
            conn.execute(
                "insert into winback.quality_results"
                " (run_date, gate, check_name, success, observed) values (%s, %s, %s, %s, %s)",
                (run_date, gate, outcome.name, outcome.success, json.dumps(outcome.observed)),
            )


def enforce(gate: str, outcomes: list[CheckOutcome]) -> dict:
    failed = [o for o in outcomes if not o.success]
    for outcome in outcomes:
        log.info(
            "%s gate: %s %s %s",
            gate,
            "PASS" if outcome.success else "FAIL",
            outcome.name,
            outcome.observed,
        )
    if failed:
        lines = [f"  - {o.name} (observed: {json.dumps(o.observed, default=str)})" for o in failed]
        raise QualityGateError(
            f"quality gate '{gate}' failed {len(failed)} of {len(outcomes)} checks; nothing "
            "downstream runs until the data is fixed:\n" + "\n".join(lines)
        )
    return {"gate": gate, "checks": len(outcomes), "failed": 0}


# --------------------------------------------------------------------------- the gates


def raw_input_checks(run_date: date, delivered: bool = True) -> list[Check]:
    """The day's raw data. Ids need no check here: the raw tables' primary keys hold them
    and the loader quarantines a repeated id. Amounts are checked on the rows loaded for
    the day; earlier days' rows were checked when their day ran.

    `delivered=False` is a backfill day on which nothing was ever delivered (rebuilt from
    the warehouse, `winback.ingest.day_source`): it needs orders loaded by then, not that day.
    """
    import great_expectations.expectations as gxe

    end_of_day = (run_date + timedelta(days=1)).isoformat()
    day = run_date.isoformat()
    if delivered:
        orders_check = Check(
            f"orders loaded for {day}",
            f"select count(*) as orders_loaded from raw.orders where _load_date = '{day}'",
            gxe.ExpectColumnMinToBeBetween(column="orders_loaded", min_value=1),
        )
    else:
        orders_check = Check(
            f"orders loaded by {day} (nothing delivered that day)",
            f"select count(*) as orders_loaded from raw.orders where _load_date <= '{day}'",
            gxe.ExpectColumnMinToBeBetween(column="orders_loaded", min_value=1),
        )
    return [
        Check(
            "customers present",
            "select count(*) as customers from raw.customers",
            gxe.ExpectColumnMinToBeBetween(column="customers", min_value=1),
        ),
        orders_check,
        Check(
            "order totals >= 0",
            "select count(*) as negative_totals from raw.orders "
            f"where _load_date = '{day}' and total < 0",
            gxe.ExpectColumnMaxToBeBetween(column="negative_totals", max_value=0),
        ),
        Check(
            "order line prices >= 0",
            "select count(*) as negative_prices from raw.order_lines "
            f"where _load_date = '{day}' and unit_price < 0",
            gxe.ExpectColumnMaxToBeBetween(column="negative_prices", max_value=0),
        ),
        # Point in time: what had been loaded by the run date. Orders that later days'
        # files brought are no error when an older day is rerun or backfilled.
        Check(
            f"no order after {day}",
            "select count(*) as orders_in_future from raw.orders "
            f"where _load_date <= '{day}' "
            f"and ordered_at >= timestamptz '{end_of_day}' + interval '14 hours'",
            gxe.ExpectColumnMaxToBeBetween(column="orders_in_future", max_value=0),
        ),
    ]


def score_checks(summary_table: str | None = None) -> list[Check]:
    """`winback.customer_scores`. Its primary key keeps one row per customer; the last
    check finds a customer of the order summary (the scoring's input) left out."""
    import great_expectations.expectations as gxe

    from winback.scoring.scores import SUMMARY_TABLE

    summary_table = summary_table or SUMMARY_TABLE
    return [
        Check(
            "scores present",
            "select count(*) as scores from winback.customer_scores",
            gxe.ExpectColumnMinToBeBetween(column="scores", min_value=1),
        ),
        Check(
            "p_alive within [0, 1]",
            "select count(*) as p_alive_outside_0_1 from winback.customer_scores "
            "where p_alive < 0 or p_alive > 1",
            gxe.ExpectColumnMaxToBeBetween(column="p_alive_outside_0_1", max_value=0),
        ),
        Check(
            "p_alive never missing",
            "select count(*) as p_alive_missing from winback.customer_scores where p_alive is null",
            gxe.ExpectColumnMaxToBeBetween(column="p_alive_missing", max_value=0),
        ),
        Check(
            "every customer with an order scored",
            f"select count(*) as customers_without_score from {summary_table} summary "
            "where not exists (select 1 from winback.customer_scores scores "
            "where scores.customer_id = summary.customer_id)",
            gxe.ExpectColumnMaxToBeBetween(column="customers_without_score", max_value=0),
        ),
    ]


CONSENT_PREDICATE = {
    "email": "f.is_email_subscribed and f.has_valid_email and not f.is_email_suppressed",
    "sms": "f.is_sms_subscribed and f.has_valid_phone and not f.is_sms_suppressed",
}


def audience_checks(conn: psycopg.Connection, run_date: date, max_growth: float) -> list[Check]:
    import great_expectations.expectations as gxe

    day = run_date.isoformat()
    checks = [
        Check(
            "one audience row per customer",
            "select count(*) - count(distinct customer_id) as customers_in_two_audiences "
            f"from winback.campaign_audiences where run_date = '{day}'",
            gxe.ExpectColumnMaxToBeBetween(column="customers_in_two_audiences", max_value=0),
        ),
        Check(
            "no outbox message without consent, contact and no suppression",
            "select count(*) as messages_without_consent from winback.outbox o "
            "join marts.customer_features f using (customer_id) "
            f"where o.run_date = '{day}' and ("
            f"(o.channel = 'email' and not ({CONSENT_PREDICATE['email']})) or "
            f"(o.channel = 'sms' and not ({CONSENT_PREDICATE['sms']})))",
            gxe.ExpectColumnMaxToBeBetween(column="messages_without_consent", max_value=0),
        ),
    ]
    previous = dict(
        conn.execute(
            """
            select campaign_id, count(*) from winback.campaign_audiences
            where run_date = (select max(run_date) from winback.campaign_audiences
                              where run_date < %s)
            group by 1
            """,
            (run_date,),
        ).fetchall()
    )
    for campaign_id, size in sorted(previous.items()):
        if not re.fullmatch(r"[a-z0-9_]+", campaign_id):  # ids are validated; be sure anyway
            raise QualityGateError(f"unexpected campaign id in the audience table: {campaign_id!r}")
        limit = int(size * max_growth)
        checks.append(
            Check(
                f"{campaign_id} audience at most {max_growth:g}x the previous run ({size})",
                "select count(*) as audience_size from winback.campaign_audiences "
                f"where run_date = '{day}' and campaign_id = '{campaign_id}'",
                gxe.ExpectColumnMaxToBeBetween(column="audience_size", max_value=limit),
            )
        )
    return checks


def check_raw_inputs(run_date: date, delivered: bool = True) -> dict:
    checks = raw_input_checks(run_date, delivered)
    return enforce("raw_inputs", run_checks("raw_inputs", checks, run_date))


def check_scores(run_date: date) -> dict:
    return enforce("scores", run_checks("scores", score_checks(), run_date))


def check_audiences(run_date: date, max_growth: float = DEFAULT_MAX_AUDIENCE_GROWTH) -> dict:
    with db.connect() as conn:
        checks = audience_checks(conn, run_date, max_growth)
    return enforce("audiences", run_checks("audiences", checks, run_date))
