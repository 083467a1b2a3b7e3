"""The program as a whole against the global control group, per window.

A stable share of all customers (`WINBACK_GLOBAL_CONTROL_SHARE`, default 5%) is assigned to
the global control once (`winback.campaigns.audiences.assign_global_control`: a hash balanced
within each RFM segment, as campaign holdouts are). They go through every campaign like
anyone else but are never sent anything, so for a window [start, end]:

* the cohort is everyone who entered any campaign's audience in the window, counted once
  from their first entry; the "program" group is everyone outside the global control
  (campaign holdouts included: the program as it actually runs) and the "control" group
  the global control;
* reactivation rate and revenue per customer are compared exactly as a campaign is
  against its holdout (`winback.measurement.windows.compare`): Newcombe and Katz intervals
  for the rates, Welch's for revenue and net value per customer; overall, by channel and
  by stage at entry.

Results go to `winback.global_control_results`, which has the columns of
`winback.campaign_results` with `treatment_*` for the program and `holdout_*` for the
control, and `campaign_id` = 'all campaigns'.
"""

from __future__ import annotations

from datetime import date, timedelta

import psycopg
from psycopg.rows import dict_row

from winback.measurement import windows as measurement

PROGRAM = "all campaigns"
TABLE = "winback.global_control_results"
PROGRAM_COHORT = {
    "cohort_filter": "true",
    "group": ("case when a.assigned_group = 'global_control' then 'holdout' else 'treatment' end"),
}


def measure_program_window(
    conn: psycopg.Connection,
    window_start: date,
    window_end: date,
    attribution_days: int = measurement.DEFAULT_ATTRIBUTION_DAYS,
) -> list[measurement.WindowResult]:
    """Measure the program against the global control for one window (replacing it)."""
    measurement.check_arguments(conn, None, window_start, window_end, attribution_days)
    measured_on = window_end + timedelta(days=attribution_days)
    measurement.ensure_results_schema(conn)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("drop table if exists cohort")
        cur.execute(
            measurement.cohort_sql(conn, PROGRAM_COHORT),
            measurement.cohort_params(None, window_start, window_end, measured_on),
        )
        cohort = cur.execute("select * from cohort").fetchall()
        program = [r for r in cohort if r["assigned_group"] == "treatment"]
        control = [r for r in cohort if r["assigned_group"] == "holdout"]
        key = (PROGRAM, window_start, window_end, attribution_days)
        results = measurement.breakdown_results(key, program, control, measurement.Planning())
        measurement.store_results(cur, TABLE, key, results)
        cur.execute("drop table cohort")
    return results


def load(conn: psycopg.Connection, window_start: date, window_end: date) -> list[dict]:
    """The stored rows of a window (overall first), or [] when it was not measured."""
    measurement.ensure_results_schema(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"select * from {TABLE} where window_start = %s and window_end = %s"
            " order by breakdown = 'overall' desc, breakdown, breakdown_value",
            (window_start, window_end),
        ).fetchall()
