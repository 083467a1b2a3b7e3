"""Quality gates with great-expectations: a bad day stops before anything is sent.

Three gates, each a GX expectation suite run on the warehouse:

* `raw_inputs`: the day's raw data: rows present, the day's amounts >= 0, no dates after
  the run day (ids are the raw tables' primary keys), each file's quarantined share under
  its limit and not jumping against the last days, and the day's orders covered by order
  lines (`quarantine_checks`);
* `scores`: `winback.customer_scores`: p_alive within [0, 1] and never missing, every
  customer with an order scored;
* `audiences`: the day's audiences: one row per customer, nobody without consent for the
  channel, and no audience that grew past `max_growth` x its previous run (a param
  overrides) unless it is still at most `growth_floor` customers: a campaign that
  reached 1 customer yesterday and 5 today is not a broken rule (`audience_growth_limit`).
  The previous run is the latest earlier run of a day that loaded a delivery, when there
  is one (`growth_baseline`): a day rebuilt from the warehouse knew no new data, so its
  audiences drift (customers age out of their rules) and are no yardstick for a day that
  brings weeks of orders at once.

Each check's query returns one row of counts (rows present, rows breaking the rule) and
the expectation bounds it: PostgreSQL does the work, and a per-row query never pulls ten
million order ids into the worker. A gate runs its queries once, on one connection, and
GX validates the gate's one row of counts as one batch against one suite; the GX context
and its data source are built once per process. A gate's cost is its queries, plus
about 0.1 s of validation (bench/bench_quality.py).

Every expectation's outcome is kept in `winback.quality_results`, a table a person can
read. A failed gate raises `QualityGateError` with one readable line per failed
expectation, which fails the Airflow task, so nothing downstream (the sync) runs.
Observed values are counts only, never contact data.
"""

from __future__ import annotations

import decimal
import functools
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import date, timedelta

import psycopg

from winback.warehouse import db, relations, tables

log = logging.getLogger(__name__)

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

DEFAULT_MAX_AUDIENCE_GROWTH = 3.0
# An audience of at most this many customers never fails the growth check: growth from
# 1 to 5 is 5x but no sign of a broken rule; a broken rule shows as hundreds or thousands.
# The DAG's `audience_growth_floor` param overrides it.
DEFAULT_AUDIENCE_GROWTH_FLOOR = 100

# The share of a file's rows that may be quarantined before the day fails, per table
# (`default` for the others). Override with WINBACK_QUARANTINE_LIMITS, e.g.
# "order_lines=0.2,default=0.1". A real export quarantines a little (a malformed line, an
# unknown product); most of a file quarantined is a broken export, not bad luck.
QUARANTINE_LIMITS = {"default": 0.05}
QUARANTINE_LIMITS_ENV = "WINBACK_QUARANTINE_LIMITS"
# A share jumps when it exceeds JUMP_FACTOR x the mean of the last JUMP_DAYS load days of
# that table plus JUMP_MARGIN (so a clean history of 0% does not fail on one bad row).
JUMP_DAYS = 7
JUMP_FACTOR = 3.0
JUMP_MARGIN = 0.02
# The share of the day's orders that may lack any order line, when lines were delivered.
MAX_ORDERS_WITHOUT_LINES = 0.05


def quarantine_limits() -> dict[str, float]:
    """QUARANTINE_LIMITS with the environment's overrides; a malformed one is an error."""
    limits = dict(QUARANTINE_LIMITS)
    text = os.environ.get(QUARANTINE_LIMITS_ENV, "").strip()
    for item in filter(None, (part.strip() for part in text.split(","))):
        table, _, value = item.partition("=")
        try:
            limit = float(value)
        except ValueError:
            limit = -1.0
        if not table.strip() or not 0 <= limit <= 1:
            raise QualityGateError(
                f"{QUARANTINE_LIMITS_ENV}: expected table=share (0..1) items, got {item!r}"
            )
        limits[table.strip()] = limit
    return limits


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


OBSERVED_KEYS = ("observed_value", "element_count", "unexpected_count", "unexpected_percent")


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


@functools.cache
def _gate_batch_definition():
    """The GX objects every gate of this process shares, built once: an ephemeral context
    and a pandas data source whose one dataframe asset takes a gate's row of counts.
    Building them (and a SQL data source, asset, suite and validation per check) was most
    of a gate's cost; now a gate is its queries plus one validation of one batch."""
    source = _gx_context().data_sources.add_pandas(name="gate_counts")
    asset = source.add_dataframe_asset(name="counts")
    return asset.add_batch_definition_whole_dataframe(name="one_row")


def _counts(checks: list[Check]) -> tuple[dict[str, object], list]:
    """Each check's query run once on the warehouse (one connection, one snapshot): the
    gate's one row of counts, each check's column renamed `check_<index>`, and each
    expectation pointed at its column."""
    row: dict[str, object] = {}
    expectations = []
    with db.connect() as conn, conn.transaction():
        conn.execute("set transaction isolation level repeatable read, read only")
        for index, check in enumerate(checks):
            cursor = conn.execute(check.query)
            result = cursor.fetchone()
            column = check.expectation.column
            names = [description.name for description in cursor.description or []]
            if column not in names:
                raise QualityGateError(
                    f"check {check.name!r}: its query returns {names}, not {column!r}"
                )
            name = f"check_{index}"
            value = result[names.index(column)] if result else None
            row[name] = float(value) if isinstance(value, decimal.Decimal) else value
            expectations.append(check.expectation.copy(update={"column": name}))
    return row, expectations


def _plain(value: object) -> object:
    """A numpy scalar as the Python number it holds (the record is JSON)."""
    return value.item() if hasattr(value, "item") else value


def run_checks(gate: str, checks: list[Check], run_date: date) -> list[CheckOutcome]:
    """Run a gate's checks as one GX validation over one batch, the gate's row of counts;
    record and return each check's outcome."""
    import great_expectations as gx
    import pandas as pd

    row, expectations = _counts(checks)
    outcomes = []
    if checks:
        batch = _gate_batch_definition().get_batch(
            batch_parameters={"dataframe": pd.DataFrame([row])}
        )
        result = batch.validate(gx.ExpectationSuite(name=gate, expectations=expectations))
        by_column = {r.expectation_config.kwargs["column"]: r for r in result.results}
        for index, check in enumerate(checks):
            expectation_result = by_column[f"check_{index}"]
            observed = {
                k: _plain(v)
                for k, v in (expectation_result.result or {}).items()
                if k in OBSERVED_KEYS
            }
            outcomes.append(CheckOutcome(check.name, bool(expectation_result.success), observed))
    _record(gate, outcomes, run_date)
    return outcomes


def _record(gate: str, outcomes: list[CheckOutcome], run_date: date) -> None:
    with db.connect() as conn:
        tables.ensure_schema(conn)
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


def quarantine_checks(conn: psycopg.Connection, run_date: date) -> list[Check]:
    """Per file loaded for the day: its quarantined share under the table's limit and not
    jumping against the last days; and the day's orders covered by order lines.

    Each check's name carries what a person needs to act: the file, its share and the
    rules that quarantined most of its rows.
    """
    import great_expectations.expectations as gxe

    limits = quarantine_limits()
    day = run_date.isoformat()
    checks = []
    batches = conn.execute(
        "select table_name, source_file, rows_read, rows_quarantined from raw.load_batches"
        " where load_date = %s order by table_name",
        (run_date,),
    ).fetchall()
    for table_name, source_file, rows_read, rows_quarantined in batches:
        if not re.fullmatch(r"[a-z_]+", table_name):
            raise QualityGateError(f"unexpected table name in raw.load_batches: {table_name!r}")
        share = rows_quarantined / rows_read if rows_read else 0.0
        rules = conn.execute(
            "select rule, count(*) from raw.quarantine where load_date = %s and table_name = %s"
            " group by 1 order by 2 desc, 1 limit 3",
            (run_date, table_name),
        ).fetchall()
        top = ", ".join(f"{rule} ({n:,})" for rule, n in rules) or "none"
        what = f"{source_file}: {share:.1%} of {rows_read:,} rows quarantined; top rules: {top}"
        share_sql = (
            "select coalesce(sum(rows_quarantined)::float8 / nullif(sum(rows_read), 0), 0)"
            f" as quarantined_share from raw.load_batches where load_date = '{day}'"
            f" and table_name = '{table_name}'"
        )
        limit = limits.get(table_name, limits["default"])
        checks.append(
            Check(
                f"{table_name} quarantined share <= {limit:.0%} ({what})",
                share_sql,
                gxe.ExpectColumnMaxToBeBetween(column="quarantined_share", max_value=limit),
            )
        )
        history = conn.execute(
            "select avg(rows_quarantined::float8 / nullif(rows_read, 0)), count(*)"
            " from (select * from raw.load_batches where table_name = %s and load_date < %s"
            " order by load_date desc limit %s) recent",
            (table_name, run_date, JUMP_DAYS),
        ).fetchone()
        if history[1]:
            ceiling = min(1.0, JUMP_FACTOR * (history[0] or 0.0) + JUMP_MARGIN)
            checks.append(
                Check(
                    f"{table_name} quarantined share <= {ceiling:.1%} ({JUMP_FACTOR:g}x the last"
                    f" {history[1]} load days' {history[0] or 0:.1%} + {JUMP_MARGIN:.0%}; {what})",
                    share_sql,
                    gxe.ExpectColumnMaxToBeBetween(column="quarantined_share", max_value=ceiling),
                )
            )
    if any(table_name == "order_lines" for table_name, *_ in batches):
        checks.append(
            Check(
                f"at most {MAX_ORDERS_WITHOUT_LINES:.0%} of the day's orders without an order line",
                "select coalesce(avg(case when exists (select 1 from raw.order_lines l"
                " where l.order_id = o.order_id) then 0.0 else 1.0 end), 0)::float8"
                f" as orders_without_lines from raw.orders o where o._load_date = '{day}'",
                gxe.ExpectColumnMaxToBeBetween(
                    column="orders_without_lines", max_value=MAX_ORDERS_WITHOUT_LINES
                ),
            )
        )
    return checks


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


def audience_growth_limit(previous_size: int, max_growth: float, growth_floor: int) -> int:
    """The largest audience that passes the growth check after a run of `previous_size`.

    Growth is suspicious only when the audience is both above `max_growth` x its previous
    size and above `growth_floor` customers.
    """
    if max_growth < 1 or growth_floor < 0:
        raise ValueError(
            f"max_growth must be >= 1 and growth_floor >= 0, not {max_growth} and {growth_floor}"
        )
    return max(int(previous_size * max_growth), growth_floor)


def audience_checks(
    conn: psycopg.Connection,
    run_date: date,
    max_growth: float,
    growth_floor: int = DEFAULT_AUDIENCE_GROWTH_FLOOR,
) -> list[Check]:
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
            f"join {relations.CUSTOMER_FEATURES} f using (customer_id) "
            f"where o.run_date = '{day}' and ("
            f"(o.channel = 'email' and not ({CONSENT_PREDICATE['email']})) or "
            f"(o.channel = 'sms' and not ({CONSENT_PREDICATE['sms']})))",
            gxe.ExpectColumnMaxToBeBetween(column="messages_without_consent", max_value=0),
        ),
    ]
    return checks + audience_growth_checks(conn, run_date, max_growth, growth_floor)


def growth_baseline(conn: psycopg.Connection, run_date: date) -> tuple[date | None, bool]:
    """The run whose audiences today's are compared with, and whether its day loaded data.

    The latest earlier run of a day with a row in `raw.load_batches`; without one, the
    latest earlier run. Every day of a daily schedule loads its delivery, so there both
    are yesterday. In a backfill, days without files are rebuilt from what the last
    delivery said, and their audiences shrink as customers age past their rules' windows;
    the day a delivery of several weeks lands is compared with the last day that also
    loaded one, not with the shrunken day before it.
    """
    has_batches = conn.execute("select to_regclass('raw.load_batches') is not null").fetchone()[0]
    delivered = None
    if has_batches:
        delivered = conn.execute(
            """
            select max(a.run_date) from winback.campaign_audiences a
            where a.run_date < %s
              and exists (select 1 from raw.load_batches b where b.load_date = a.run_date)
            """,
            (run_date,),
        ).fetchone()[0]
    if delivered is not None:
        return delivered, True
    latest = conn.execute(
        "select max(run_date) from winback.campaign_audiences where run_date < %s", (run_date,)
    ).fetchone()[0]
    return latest, False


def audience_growth_checks(
    conn: psycopg.Connection, run_date: date, max_growth: float, growth_floor: int
) -> list[Check]:
    """One check per campaign of the previous run: its audience within `audience_growth_limit`."""
    import great_expectations.expectations as gxe

    day = run_date.isoformat()
    checks = []
    baseline, delivered = growth_baseline(conn, run_date)
    previous = dict(
        conn.execute(
            "select campaign_id, count(*) from winback.campaign_audiences"
            " where run_date = %s group by 1",
            (baseline,),
        ).fetchall()
    )
    which = "the previous delivered day's run" if delivered else "the previous run"
    for campaign_id, size in sorted(previous.items()):
        if not re.fullmatch(r"[a-z0-9_]+", campaign_id):  # ids are validated; be sure anyway
            raise QualityGateError(f"unexpected campaign id in the audience table: {campaign_id!r}")
        limit = audience_growth_limit(size, max_growth, growth_floor)
        checks.append(
            Check(
                f"{campaign_id} audience at most {max_growth:g}x {which} ({size} on {baseline})"
                f" or {growth_floor} customers",
                "select count(*) as audience_size from winback.campaign_audiences "
                f"where run_date = '{day}' and campaign_id = '{campaign_id}'",
                gxe.ExpectColumnMaxToBeBetween(column="audience_size", max_value=limit),
            )
        )
    return checks


def check_raw_inputs(run_date: date, delivered: bool = True) -> dict:
    checks = raw_input_checks(run_date, delivered)
    if delivered:  # a day rebuilt from the warehouse loaded no file to judge
        with db.connect() as conn:
            if db.relation_exists(conn, "raw.load_batches"):
                checks += quarantine_checks(conn, run_date)
    return enforce("raw_inputs", run_checks("raw_inputs", checks, run_date))


def check_scores(run_date: date) -> dict:
    return enforce("scores", run_checks("scores", score_checks(), run_date))


def check_audiences(
    run_date: date,
    max_growth: float = DEFAULT_MAX_AUDIENCE_GROWTH,
    growth_floor: int = DEFAULT_AUDIENCE_GROWTH_FLOOR,
) -> dict:
    with db.connect() as conn:
        checks = audience_checks(conn, run_date, max_growth, growth_floor)
    return enforce("audiences", run_checks("audiences", checks, run_date))
