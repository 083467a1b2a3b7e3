"""The inactive-to-active delta of a campaign window, against its holdout.

For a campaign and a window [start, end]:

* the cohort is every customer the campaign targeted: everyone who entered its audience
  on a day of the window, treatment and holdout alike (the assignment is a stable hash,
  so a customer's group never changes), whatever their lifecycle stage;
* a customer is reactivated when they placed a completed order from the day they entered
  until the end of the window plus an attribution period;
* the rates of the two groups give the absolute and relative uplift with 95% intervals
  (`winback.measurement.uplift`), the incremental reactivations, the incremental revenue
  per targeted customer and net of the incentive cost of the coupons redeemed, each with
  a 95% interval (Welch's, `uplift.mean_difference`);
* breakdowns: channel, lifecycle stage at entry (`stage_at_entry`: the holdout is split
  the same way, the stage being fixed before anyone was sent anything), step and A/B
  variant (sent customers against the whole holdout);
* the stage-based count the source articles use is kept for the inactive part of every
  cohort: customers inactive or lost when they entered and no longer so at the
  measurement date;
* where a group is empty or too small to show the campaign's `holdout.minimum_uplift`,
  the row says how many more holdout customers (or customers in all) it would need.

The program as a whole is measured against the global control group
(`winback.measurement.global_control`) with the same code: there the cohort is everyone who
entered any campaign in the window, "treatment" is every customer outside the global
control (campaign holdouts included: the program as it runs) and "holdout" the control.

Point in time: only orders loaded by the measurement date (window end + attribution)
count, the stage at entry is the one stored with the audience, and the lifecycle history
is read for a fixed day, so measuring later, or after a backfill rebuilt the window, gives
the same numbers.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
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
# When a campaign file is not at hand (a campaign since removed, the program as a whole),
# the sample-size advice uses the campaign file's defaults (`Holdout`).
DEFAULT_BASELINE_RATE = 0.05
DEFAULT_MINIMUM_UPLIFT = 0.02

# Everyone who entered the audience in the window, once, with what they were at entry.
# {cohort_filter} picks the campaign's rows (or every campaign's, for the global control),
# {group} names each customer's group, {stage_at_measurement} the stages as of the
# measurement date (`relations.lifecycle_stage_as_of`).
COHORT_SQL = """
create temporary table cohort on commit drop as
with entries as (
    select distinct on (a.customer_id)
           a.customer_id,
           coalesce(a.entered_on, a.run_date) as entered_on,
           {group} as assigned_group,
           a.channel,
           coalesce(a.lifecycle_stage, 'unknown') as stage_at_entry
    from winback.campaign_audiences a
    where {cohort_filter}
      and a.run_date between %(start)s and %(end)s
      and coalesce(a.entered_on, a.run_date) >= %(start)s
    order by a.customer_id, a.run_date, a.campaign_id
),
stage_at_measurement as (
    {stage_at_measurement}
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
       e.stage_at_entry,
       coalesce(w.orders, 0) > 0 as is_reactivated,
       coalesce(w.revenue, 0) as revenue,
       coalesce(w.incentive_cost, 0) as incentive_cost,
       e.stage_at_entry in ('inactive', 'lost') as was_inactive_at_entry,
       e.stage_at_entry in ('inactive', 'lost')
           and coalesce(m.lifecycle_stage not in ('inactive', 'lost'), false)
           as left_inactive_stage
from entries e
left join stage_at_measurement m on m.customer_id = e.customer_id
left join orders_in_window w on w.customer_id = e.customer_id
"""

CAMPAIGN_COHORT = {
    "cohort_filter": (
        "a.campaign_id = %(campaign)s and a.assigned_group in ('treatment', 'holdout')"
    ),
    "group": "a.assigned_group",
}


@dataclass
class GroupStats:
    customers: int = 0
    reactivated: int = 0
    revenue: float = 0.0
    incentive_cost: float = 0.0
    left_inactive_stage: int = 0
    inactive_at_entry: int = 0
    # Per customer, for the revenue intervals.
    revenues: list[float] = field(default_factory=list, repr=False)
    incentive_costs: list[float] = field(default_factory=list, repr=False)


@dataclass
class Planning:
    """What a campaign's holdout was sized to show: the sample-size advice uses it."""

    baseline_rate: float = DEFAULT_BASELINE_RATE
    minimum_uplift: float = DEFAULT_MINIMUM_UPLIFT

    @classmethod
    def of(cls, campaign_id: str) -> Planning:
        from winback.campaigns import campaign_files

        try:
            valid, _refused = campaign_files.load_valid_campaigns()
        except OSError:
            return cls()
        for campaign in valid:
            if campaign.id == campaign_id:
                return cls(campaign.holdout.baseline_rate, campaign.holdout.minimum_uplift)
        return cls()


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
    revenue: uplift.MeanDifference | None = None
    net: uplift.MeanDifference | None = None
    shortfall: uplift.Shortfall | None = None

    def row(self) -> dict:
        treatment, holdout, result = self.treatment, self.holdout, self.result
        holdout_revenue_per_customer = (
            holdout.revenue / holdout.customers if holdout.customers else 0
        )
        incremental_revenue = treatment.revenue - holdout_revenue_per_customer * treatment.customers
        revenue, net, n = self.revenue, self.net, treatment.customers
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
            "revenue_per_customer_uplift": revenue.difference if revenue else None,
            "revenue_per_customer_uplift_low": revenue.interval.low if revenue else None,
            "revenue_per_customer_uplift_high": revenue.interval.high if revenue else None,
            "incremental_revenue_low": revenue.interval.low * n if revenue else None,
            "incremental_revenue_high": revenue.interval.high * n if revenue else None,
            "net_value_per_customer": net.difference if net else None,
            "net_value_low": net.interval.low * n if net else None,
            "net_value_high": net.interval.high * n if net else None,
            "treatment_inactive_at_entry": treatment.inactive_at_entry,
            "holdout_inactive_at_entry": holdout.inactive_at_entry,
            "holdout_customers_needed": self.shortfall.holdout if self.shortfall else None,
            "audience_customers_needed": self.shortfall.audience if self.shortfall else None,
        }


def _stats(rows: list[dict]) -> GroupStats:
    revenues = [float(r["revenue"]) for r in rows]
    costs = [float(r["incentive_cost"]) for r in rows]
    return GroupStats(
        customers=len(rows),
        reactivated=sum(r["is_reactivated"] for r in rows),
        revenue=sum(revenues),
        incentive_cost=sum(costs),
        left_inactive_stage=sum(r["left_inactive_stage"] for r in rows),
        inactive_at_entry=sum(r["was_inactive_at_entry"] for r in rows),
        revenues=revenues,
        incentive_costs=costs,
    )


def compare(
    campaign_id, start, end, attribution_days, breakdown, value, treated, held, planning
) -> WindowResult:
    """Treatment rows against holdout rows: rate and revenue uplift, and their intervals."""
    treatment, holdout = _stats(treated), _stats(held)
    result = revenue = net = None
    if treatment.customers and holdout.customers:
        result = uplift.uplift(
            treatment.reactivated, treatment.customers, holdout.reactivated, holdout.customers
        )
        revenue = uplift.mean_difference(treatment.revenues, holdout.revenues)
        # Net of the incentive: what the treatment's coupons cost, per treated customer.
        net = uplift.mean_difference(
            [r - c for r, c in zip(treatment.revenues, treatment.incentive_costs, strict=True)],
            holdout.revenues,
        )
    shortfall = uplift.sample_shortfall(
        treatment.customers, holdout.customers, planning.baseline_rate, planning.minimum_uplift
    )
    return WindowResult(
        campaign_id,
        start,
        end,
        attribution_days,
        breakdown,
        value,
        treatment,
        holdout,
        result,
        revenue,
        net,
        shortfall,
    )


def _has_column(conn, schema: str, table: str, column: str) -> bool:
    return bool(
        conn.execute(
            "select 1 from information_schema.columns "
            "where table_schema = %s and table_name = %s and column_name = %s",
            (schema, table, column),
        ).fetchone()
    )


def cohort_sql(conn: psycopg.Connection, cohort: dict | None = None) -> str:
    """The statement creating the temporary `cohort` table for a window."""
    statement = COHORT_SQL.format(
        **(cohort or CAMPAIGN_COHORT),
        stage_at_measurement=relations.lifecycle_stage_as_of("%(measured_on)s"),
    )
    if _has_column(conn, "raw", "orders", "coupon_code"):
        return statement
    # A warehouse from before coupons were in the contract: no incentive cost to attribute.
    return statement.replace(
        "sum(coalesce(o.discount_total, 0)) filter (where o.coupon_code is not null)",
        "0::numeric",
    )


def cohort_params(campaign_id: str | None, start: date, end: date, measured_on: date) -> dict:
    return {"campaign": campaign_id, "start": start, "end": end, "measured_on": measured_on}


def breakdown_results(
    key: tuple, treated: list[dict], held: list[dict], planning: Planning
) -> list[WindowResult]:
    """Overall, by channel and by stage at entry: each split of both groups alike."""
    results = [compare(*key, "overall", "all", treated, held, planning)]
    for breakdown, column in (("channel", "channel"), ("stage_at_entry", "stage_at_entry")):
        for value in sorted({r[column] for r in treated} | {r[column] for r in held}):
            results.append(
                compare(
                    *key,
                    breakdown,
                    value,
                    [r for r in treated if r[column] == value],
                    [r for r in held if r[column] == value],
                    planning,
                )
            )
    return results


def store_results(cur, table: str, key: tuple, results: list[WindowResult]) -> None:
    """Replace the window's stored rows in `table` by `results` (saying so in the log
    when the stored ones had another attribution period)."""
    campaign_id, window_start, window_end, attribution_days = key
    before = cur.execute(
        f"select max(attribution_days) as days from {table}"
        " where campaign_id = %s and window_start = %s and window_end = %s",
        (campaign_id, window_start, window_end),
    ).fetchone()
    if before and before["days"] is not None and before["days"] != attribution_days:
        log.warning(
            "%s %s..%s: replacing a result measured with %d days of attribution by one with %d",
            campaign_id,
            window_start,
            window_end,
            before["days"],
            attribution_days,
        )
    cur.execute(
        f"delete from {table} where campaign_id = %s and window_start = %s and window_end = %s",
        (campaign_id, window_start, window_end),
    )
    for result in results:
        row = result.row()
        columns = ", ".join(row)
        placeholders = ", ".join(f"%({c})s" for c in row)
        cur.execute(f"insert into {table} ({columns}) values ({placeholders})", row)


MAX_ATTRIBUTION_DAYS = 365  # as the winback_campaign_report DAG's param


def ensure_results_schema(conn: psycopg.Connection) -> None:
    """The results tables (and every other table of winback's), from their one home; a
    complete schema is left alone, so readers of the results are never blocked."""
    tables.ensure_schema(conn)


def check_arguments(
    conn: psycopg.Connection,
    campaign_id: str | None,
    window_start: date,
    window_end: date,
    attribution_days: int,
) -> None:
    """Refuse, in one line, a window that cannot be measured: the rules of the campaign
    files and the report DAG's params (attribution from 0 to 365 days, a window that ends
    on or after its start, a campaign that exists in the files or the audiences)."""
    problems = []
    if not 0 <= attribution_days <= MAX_ATTRIBUTION_DAYS:
        problems.append(
            f"attribution days must be 0 to {MAX_ATTRIBUTION_DAYS}, not {attribution_days}"
        )
    if window_end < window_start:
        problems.append(f"the window ends ({window_end}) before it starts ({window_start})")
    if campaign_id is not None and not _campaign_exists(conn, campaign_id):
        problems.append(f"no campaign {campaign_id!r} in the campaign files or the audiences")
    if problems:
        raise ValueError("; ".join(problems))


def _campaign_exists(conn: psycopg.Connection, campaign_id: str) -> bool:
    from winback.campaigns import campaign_files
    from winback.warehouse import db

    valid, _refused = campaign_files.load_valid_campaigns()
    if any(c.id == campaign_id for c in valid):
        return True
    return db.relation_exists(conn, "winback.campaign_audiences") and bool(
        conn.execute(
            "select 1 from winback.campaign_audiences where campaign_id = %s limit 1",
            (campaign_id,),
        ).fetchone()
    )


def stored_attribution_days(
    conn: psycopg.Connection, table: str, campaign_id: str, window_start: date, window_end: date
) -> int | None:
    """The attribution period of a window's stored result, or None when there is none."""
    ensure_results_schema(conn)
    row = conn.execute(
        f"select max(attribution_days) from {table}"
        " where campaign_id = %s and window_start = %s and window_end = %s",
        (campaign_id, window_start, window_end),
    ).fetchone()
    return row[0] if row else None


def measure_window(
    conn: psycopg.Connection,
    campaign_id: str,
    window_start: date,
    window_end: date,
    attribution_days: int = DEFAULT_ATTRIBUTION_DAYS,
    planning: Planning | None = None,
) -> list[WindowResult]:
    """Measure one window and store it in `winback.campaign_results` (replacing it).

    Bad arguments are refused before anything is replaced (`check_arguments`).
    """
    check_arguments(conn, campaign_id, window_start, window_end, attribution_days)
    planning = planning or Planning.of(campaign_id)
    measured_on = window_end + timedelta(days=attribution_days)
    ensure_results_schema(conn)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("drop table if exists cohort")
        cur.execute(
            cohort_sql(conn), cohort_params(campaign_id, window_start, window_end, measured_on)
        )
        cohort = cur.execute("select * from cohort").fetchall()
        treated = [r for r in cohort if r["assigned_group"] == "treatment"]
        held = [r for r in cohort if r["assigned_group"] == "holdout"]
        key = (campaign_id, window_start, window_end, attribution_days)
        results = breakdown_results(key, treated, held, planning)

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
        for breakdown, column in (("step", "step_id"), ("variant", "variant")):
            for value in sorted({m[column] for m in messages if m[column] is not None}):
                ids = {m["customer_id"] for m in messages if m[column] == value}
                rows = [by_customer[i] for i in sorted(ids) if i in by_customer]
                results.append(compare(*key, breakdown, value, rows, held, planning))

        store_results(cur, "winback.campaign_results", key, results)
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


def _group_summary(stats: GroupStats) -> dict:
    return {k: v for k, v in asdict(stats).items() if k not in ("revenues", "incentive_costs")}


def summary_dict(results: list[WindowResult]) -> dict:
    overall = results[0]
    row = overall.row()
    return {
        "campaign_id": overall.campaign_id,
        "window": [overall.window_start.isoformat(), overall.window_end.isoformat()],
        "treatment": _group_summary(overall.treatment),
        "holdout": _group_summary(overall.holdout),
        "absolute_uplift": row["absolute_uplift"],
        "interval": [row["absolute_uplift_low"], row["absolute_uplift_high"]]
        if overall.result
        else None,
        "revenue_per_customer_uplift": row["revenue_per_customer_uplift"],
        "revenue_interval": [
            row["revenue_per_customer_uplift_low"],
            row["revenue_per_customer_uplift_high"],
        ]
        if overall.revenue
        else None,
        "holdout_customers_needed": row["holdout_customers_needed"],
        "audience_customers_needed": row["audience_customers_needed"],
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
