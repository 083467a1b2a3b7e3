"""Is the measured uplift right? Check it against the simulator's known truth.

For each seed: a cohort of inactive customers is split into treatment and holdout by the
campaign's hash, the simulator makes them come back with a known baseline rate and a known
uplift for the treatment, and `measurement.measure_window` measures the window in the
warehouse exactly as it does for a real campaign. Over many seeds, the 95% interval should
cover the true uplift about 95% of the time, and with no true effect it should exclude
zero about 5% of the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import pandas as pd
import psycopg

from winback.campaigns import audiences
from winback.delivery import ledger
from winback.measurement import windows as measurement
from winback.simulation import simulator
from winback.warehouse import raw_schema

WINDOW_START = date(2026, 9, 1)
WINDOW_END = date(2026, 9, 30)
CAMPAIGN = "validation"


@dataclass
class SeedResult:
    seed: int
    true_uplift: float
    measured_uplift: float
    low: float
    high: float

    @property
    def covers_truth(self) -> bool:
        return self.low <= self.true_uplift <= self.high

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def reset_measurement_tables(conn: psycopg.Connection) -> None:
    """Fresh raw and winback schemas and an empty, hand-fillable lifecycle history."""
    conn.execute("drop schema if exists raw cascade")
    conn.execute("drop schema if exists marts cascade")
    conn.execute("drop schema if exists winback cascade")
    raw_schema.ensure_raw_schema(conn)
    ledger.ensure_schema(conn)  # the outbox, its send ledger and the provider feedback
    conn.execute(
        "create schema marts; create table marts.customer_lifecycle_history ("
        " customer_id text, as_of_date date, lifecycle_stage text,"
        " primary key (customer_id, as_of_date))"
    )


def run_seed(
    conn: psycopg.Connection,
    seed: int,
    customers: int = 4000,
    holdout_share: float = 0.2,
    baseline: float = 0.05,
    uplift: float = 0.03,
) -> SeedResult:
    reset_measurement_tables(conn)
    ids = [f"s{seed}-c{i}" for i in range(customers)]
    threshold = audiences.holdout_threshold(holdout_share)
    groups = [
        "holdout" if audiences.assignment_hash(CAMPAIGN, cid) < threshold else "treatment"
        for cid in ids
    ]
    targets = pd.DataFrame({"customer_id": ids, "group": groups})
    config = simulator.SimulationConfig(
        seed=seed, baseline_reactivation=baseline, campaign_uplift=uplift
    )
    window_days = (WINDOW_END - WINDOW_START).days + 1
    orders = simulator.simulate_campaign_responses(targets, WINDOW_START, window_days, config)[
        "orders"
    ]
    with conn.cursor() as cur:
        with cur.copy(
            "copy raw.customers (customer_id, country, created_at, _load_date, _source_file,"
            " _source_line) from stdin"
        ) as copy:
            for cid in ids:
                copy.write_row((cid, "IT", "2024-01-01", "2024-01-01", "validation", 1))
        with cur.copy(
            "copy winback.campaign_audiences (run_date, campaign_id, customer_id, channel,"
            " assigned_group) from stdin"
        ) as copy:
            for cid, group in zip(ids, groups, strict=True):
                copy.write_row((WINDOW_START, CAMPAIGN, cid, "email", group))
        with cur.copy(
            "copy marts.customer_lifecycle_history (customer_id, as_of_date, lifecycle_stage)"
            " from stdin"
        ) as copy:
            for cid in ids:
                copy.write_row((cid, WINDOW_START, "inactive"))
        with cur.copy(
            "copy raw.orders (order_id, customer_id, ordered_at, status, total, currency,"
            " _load_date, _source_file, _source_line) from stdin"
        ) as copy:
            for row in orders.itertuples(index=False):
                loaded = pd.Timestamp(row.ordered_at).date() + timedelta(days=1)
                copy.write_row(
                    (row.order_id, row.customer_id, row.ordered_at, "completed", row.total,
                     "EUR", loaded, "validation", 1)
                )  # fmt: skip
    overall = measurement.measure_window(conn, CAMPAIGN, WINDOW_START, WINDOW_END)[0]
    conn.commit()
    result = overall.result
    return SeedResult(
        seed, uplift, result.absolute, result.absolute_interval.low, result.absolute_interval.high
    )


def coverage(conn: psycopg.Connection, seeds: range, **kwargs) -> list[SeedResult]:
    return [run_seed(conn, seed, **kwargs) for seed in seeds]
