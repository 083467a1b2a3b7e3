"""The inactive-to-active delta of a campaign window, against its holdout.

For a campaign and a window [start, end]:

* the cohort is every customer who entered the campaign's audience on a day of the
  window, treatment and holdout alike (the assignment is a stable hash, so a customer's
  group never changes), and who was inactive at the window start according to
  `marts.customer_lifecycle_history` as of that day;
* a customer is reactivated when they placed a completed order from the day they entered
  until the end of the window plus an attribution period;
* the rates of the two groups give the absolute and relative uplift with 95% intervals
  (`winback.measurement.uplift`), the incremental reactivations and revenue, the incentive
  cost of the coupons redeemed, and the net value;
* the stage-based count the source articles use is kept too: customers whose stage was
  inactive at the start and is no longer inactive at the measurement date.

Point in time: only orders loaded by the measurement date (window end + attribution)
count, and the lifecycle history is read for fixed days, so measuring later, or after a
backfill rebuilt the window, gives the same numbers.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

import psycopg
from psycopg.rows import dict_row

from winback.measurement import uplift
from winback.warehouse import relations, tables

if TYPE_CHECKING:
    from winback.campaigns.campaign_files import Campaign

log = logging.getLogger(__name__)

INACTIVE_STAGES = ("inactive", "lost")
DEFAULT_ATTRIBUTION_DAYS = 14

COHORT_SQL = f"""
create temporary table cohort on commit drop as
with entries as (
    select customer_id,
           min(run_date) as entered_on,
           min(assigned_group) as assigned_group,
           min(channel) as channel
    from winback.campaign_audiences
    where campaign_id = %(campaign)s and run_date between %(start)s and %(end)s
    group by customer_id
),
stage_at_start as (
    select customer_id, lifecycle_stage
    from {relations.CUSTOMER_LIFECYCLE_HISTORY}
    where as_of_date = %(start)s
),
stage_at_measurement as (
    select customer_id, lifecycle_stage
    from {relations.CUSTOMER_LIFECYCLE_HISTORY}
    where as_of_date = (
        select max(as_of_date) from {relations.CUSTOMER_LIFECYCLE_HISTORY}
        where as_of_date <= %(measured_on)s
    )
),
orders_in_window as (
    select e.customer_id,
           count(*) as orders,
           sum(o.total) as revenue,
           sum(coalesce(o.discount_total, 0)) filter (where o.coupon_code is not null)
               as incentive_cost
    from entries e
    join raw.orders o
      on o.customer_id = e.customer_id
     and o.status = 'completed'
     and o.ordered_at >= e.entered_on
     and o.ordered_at < %(measured_on)s::date + 1
     and o._load_date <= %(measured_on)s
    group by e.customer_id
)
select e.customer_id,
       e.entered_on,
       e.assigned_group,
       e.channel,
       coalesce(w.orders, 0) > 0 as is_reactivated,
       coalesce(w.revenue, 0) as revenue,
       coalesce(w.incentive_cost, 0) as incentive_cost,
       coalesce(m.lifecycle_stage not in ('inactive', 'lost'), false) as left_inactive_stage
from entries e
join stage_at_start s on s.customer_id = e.customer_id
left join stage_at_measurement m on m.customer_id = e.customer_id
left join orders_in_window w on w.customer_id = e.customer_id
where s.lifecycle_stage = any(%(inactive)s)
"""


@dataclass
class GroupStats:
    customers: int = 0
    reactivated: int = 0
    revenue: float = 0.0
    incentive_cost: float = 0.0
    left_inactive_stage: int = 0


@dataclass
class WindowResult:
    campaign_id: str
    window_start: date
    window_end: date
    attribution_days: int
    breakdown: str
    breakdown_value: str
    treatment: GroupStats
    holdout: GroupStats
    result: uplift.Uplift | None

    def row(self) -> dict:
        treatment, holdout, result = self.treatment, self.holdout, self.result
        holdout_revenue_per_customer = (
            holdout.revenue / holdout.customers if holdout.customers else 0
        )
        incremental_revenue = treatment.revenue - holdout_revenue_per_customer * treatment.customers
        return {
            "campaign_id": self.campaign_id,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "attribution_days": self.attribution_days,
            "breakdown": self.breakdown,
            "breakdown_value": self.breakdown_value,
            "treatment_customers": treatment.customers,
            "holdout_customers": holdout.customers,
            "treatment_reactivated": treatment.reactivated,
            "holdout_reactivated": holdout.reactivated,
            "treatment_rate": result.treatment_rate if result else None,
            "holdout_rate": result.holdout_rate if result else None,
            "absolute_uplift": result.absolute if result else None,
            "absolute_uplift_low": result.absolute_interval.low if result else None,
            "absolute_uplift_high": result.absolute_interval.high if result else None,
            "relative_uplift": result.relative if result else None,
            "relative_uplift_low": result.relative_interval.low
            if result and result.relative_interval
            else None,
            "relative_uplift_high": result.relative_interval.high
            if result and result.relative_interval
            else None,
            "p_value": result.p_value if result else None,
            "incremental_reactivations": result.absolute * treatment.customers if result else None,
            "treatment_revenue": treatment.revenue,
            "holdout_revenue": holdout.revenue,
            "incremental_revenue": incremental_revenue,
            "incentive_cost": treatment.incentive_cost,
            "net_value": incremental_revenue - treatment.incentive_cost,
            "treatment_left_inactive_stage": treatment.left_inactive_stage,
            "holdout_left_inactive_stage": holdout.left_inactive_stage,
        }


def _stats(rows: list[dict]) -> GroupStats:
    return GroupStats(
        customers=len(rows),
        reactivated=sum(r["is_reactivated"] for r in rows),
        revenue=float(sum(r["revenue"] for r in rows)),
        incentive_cost=float(sum(r["incentive_cost"] for r in rows)),
        left_inactive_stage=sum(r["left_inactive_stage"] for r in rows),
    )


def _result(
    campaign_id, start, end, attribution_days, breakdown, value, treated, held
) -> WindowResult:
    treatment, holdout = _stats(treated), _stats(held)
    result = None
    if treatment.customers and holdout.customers:
        result = uplift.uplift(
            treatment.reactivated, treatment.customers, holdout.reactivated, holdout.customers
        )
    return WindowResult(
        campaign_id, start, end, attribution_days, breakdown, value, treatment, holdout, result
    )


def _has_column(conn, schema: str, table: str, column: str) -> bool:
    return bool(
        conn.execute(
            "select 1 from information_schema.columns "
            "where table_schema = %s and table_name = %s and column_name = %s",
            (schema, table, column),
        ).fetchone()
    )


def cohort_sql(conn: psycopg.Connection) -> str:
    """The statement creating the temporary `cohort` table for a window."""
    if _has_column(conn, "raw", "orders", "coupon_code"):
        return COHORT_SQL
    # A warehouse from before coupons were in the contract: no incentive cost to attribute.
    return COHORT_SQL.replace(
        "sum(coalesce(o.discount_total, 0)) filter (where o.coupon_code is not null)",
        "0::numeric",
    )


def measure_window(
    conn: psycopg.Connection,
    campaign_id: str,
    window_start: date,
    window_end: date,
    attribution_days: int = DEFAULT_ATTRIBUTION_DAYS,
) -> list[WindowResult]:
    """Measure one window and store it in `winback.campaign_results` (replacing it)."""
    if window_end < window_start:
        raise ValueError(f"window end {window_end} is before its start {window_start}")
    measured_on = window_end + timedelta(days=attribution_days)
    tables.ensure_schema(conn)
    results: list[WindowResult] = []
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("drop table if exists cohort")
        cur.execute(
            cohort_sql(conn),
            {
                "campaign": campaign_id,
                "start": window_start,
                "end": window_end,
                "measured_on": measured_on,
                "inactive": list(INACTIVE_STAGES),
            },
        )
        cohort = cur.execute("select * from cohort").fetchall()
        treated = [r for r in cohort if r["assigned_group"] == "treatment"]
        held = [r for r in cohort if r["assigned_group"] == "holdout"]
        args = (campaign_id, window_start, window_end, attribution_days)
        results.append(_result(*args, "overall", "all", treated, held))

        for channel in sorted({r["channel"] for r in treated}):
            in_channel = [r for r in treated if r["channel"] == channel]
            held_channel = [r for r in held if r["channel"] == channel]
            results.append(_result(*args, "channel", channel, in_channel, held_channel))

        # Steps and variants: treatment customers who were sent each, against the whole
        # holdout (the holdout is never sent anything, so it has no step of its own).
        variant_column = (
            "o.variant" if _has_column(conn, "winback", "outbox", "variant") else "null::text"
        )
        messages = cur.execute(
            f"""
            select o.customer_id, o.step_id, {variant_column} as variant
            from winback.outbox o
            join cohort c on c.customer_id = o.customer_id
            where o.campaign_id = %s and o.run_date between %s and %s
            """,
            (campaign_id, window_start, window_end),
        ).fetchall()
        by_customer = {r["customer_id"]: r for r in treated}
        for breakdown, key in (("step", "step_id"), ("variant", "variant")):
            for value in sorted({m[key] for m in messages if m[key] is not None}):
                ids = {m["customer_id"] for m in messages if m[key] == value}
                rows = [by_customer[i] for i in ids if i in by_customer]
                results.append(_result(*args, breakdown, value, rows, held))

        cur.execute(
            "delete from winback.campaign_results "
            "where campaign_id = %s and window_start = %s and window_end = %s",
            (campaign_id, window_start, window_end),
        )
        for result in results:
            row = result.row()
            columns = ", ".join(row)
            placeholders = ", ".join(f"%({c})s" for c in row)
            cur.execute(
                f"insert into winback.campaign_results ({columns}) values ({placeholders})", row
            )
        cur.execute("drop table cohort")
    overall = results[0]
    log.info(
        "%s %s..%s: treatment %d/%d reactivated, holdout %d/%d",
        campaign_id,
        window_start,
        window_end,
        overall.treatment.reactivated,
        overall.treatment.customers,
        overall.holdout.reactivated,
        overall.holdout.customers,
    )
    return results


def summary_dict(results: list[WindowResult]) -> dict:
    overall = results[0]
    return {
        "campaign_id": overall.campaign_id,
        "window": [overall.window_start.isoformat(), overall.window_end.isoformat()],
        "treatment": asdict(overall.treatment),
        "holdout": asdict(overall.holdout),
        "absolute_uplift": overall.result.absolute if overall.result else None,
        "interval": [overall.result.absolute_interval.low, overall.result.absolute_interval.high]
        if overall.result
        else None,
    }


DEFAULT_WINDOW_DAYS = 30


@dataclass(frozen=True)
class CampaignWindow:
    campaign_id: str
    window_start: date
    window_end: date
    attribution_days: int


def campaign_windows_closing_on(campaigns: list[Campaign], run_date: date) -> list[CampaignWindow]:
    """Every campaign window whose attribution period ends on `run_date`."""
    windows = []
    for campaign in campaigns:
        window_days = getattr(campaign, "measurement_window_days", None) or DEFAULT_WINDOW_DAYS
        attribution_days = getattr(campaign, "attribution_days", None) or DEFAULT_ATTRIBUTION_DAYS
        for start, end in windows_closing_on(
            campaign.starts_on, campaign.ends_on, run_date, window_days, attribution_days
        ):
            windows.append(CampaignWindow(campaign.id, start, end, attribution_days))
    return windows


def windows_closing_on(
    starts_on: date,
    ends_on: date,
    run_date: date,
    window_days: int = DEFAULT_WINDOW_DAYS,
    attribution_days: int = DEFAULT_ATTRIBUTION_DAYS,
) -> list[tuple[date, date]]:
    """The campaign windows whose attribution period ends on `run_date`.

    A campaign's active period is cut into consecutive windows of `window_days` (the last
    one shorter); a window is measured once its attribution period has passed, so the
    daily run on day D measures exactly the windows that closed on D.
    """
    windows = []
    start = starts_on
    while start <= ends_on:
        end = min(start + timedelta(days=window_days - 1), ends_on)
        if end + timedelta(days=attribution_days) == run_date:
            windows.append((start, end))
        start = end + timedelta(days=1)
    return windows
