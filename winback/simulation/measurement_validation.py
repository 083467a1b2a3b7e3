"""Is the measured uplift right? Check it against the simulator's known truth.

For each seed, every example campaign (include/campaigns, with its holdout share and the
simulator's true uplift for it) gets a cohort of customers, split into global control,
holdout and treatment by the same hashes the audiences use (by hash alone, without strata).
Some customers buy anyway during the window (the shop's own purchases); the simulator
makes the targets come back with a known baseline and, for the treated, their campaign's
uplift. `measurement.measure_window` then measures each campaign, and
`global_control.measure_program_window` the program against the global control, in the
warehouse exactly as for a real window. Because the simulator knows both outcomes of every
customer (`simulator.true_effects`), each measurement has an exact true value: over many
seeds the 95% intervals, rate and revenue, should cover it about 95% of the time, and
with no true effect exclude zero about 5% of the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import pandas as pd
import psycopg

from winback.campaigns import assignment, audiences
from winback.measurement import global_control
from winback.measurement import windows as measurement
from winback.simulation import simulator
from winback.warehouse import contracts, raw_schema, relations, tables

WINDOW_START = date(2026, 9, 1)
WINDOW_END = date(2026, 9, 30)
ATTRIBUTION_DAYS = 14
GLOBAL_CONTROL = "global control"
# Stages at entry, as the example campaigns see them: measurement counts every one.
STAGES = ("at_risk", "inactive", "lost")


@dataclass
class Estimate:
    """One measured interval against its true value."""

    seed: int
    name: str  # a campaign id, or "global control"
    metric: str  # "rate" (reactivation uplift) or "revenue" (per targeted customer)
    truth: float
    measured: float
    low: float
    high: float

    @property
    def covers_truth(self) -> bool:
        return self.low <= self.truth <= self.high

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def example_holdout_shares() -> dict[str, float]:
    """Each example campaign's holdout share, from its file."""
    from winback.campaigns import campaign_files

    return {c.id: c.holdout.share for c in campaign_files.load_campaigns()}


def reset_measurement_tables(conn: psycopg.Connection) -> None:
    """Fresh raw and winback schemas and an empty, hand-fillable lifecycle history."""
    conn.execute("drop schema if exists raw cascade")
    conn.execute("drop schema if exists marts cascade")
    conn.execute("drop schema if exists winback cascade")
    raw_schema.ensure_raw_schema(conn)
    tables.ensure_schema(conn)  # the outbox, its send ledger and the provider feedback
    # The history's columns as its dbt contract declares them (validity ranges), so this
    # copy cannot drift from the model measurement reads.
    columns = contracts.contracted_columns("customer_lifecycle_history")
    conn.execute(
        f"create schema marts; create table {relations.CUSTOMER_LIFECYCLE_HISTORY} ("
        + ", ".join(f"{name} {data_type}" for name, data_type in columns.items())
        + ", primary key (customer_id, valid_from))"
    )


def assign(campaign_id: str, customer_ids: list[str], holdout_share: float, control_share: float):
    control = assignment.holdout_threshold(control_share)
    holdout = assignment.holdout_threshold(holdout_share)
    return [
        "global_control"
        if assignment.assignment_hash(audiences.GLOBAL_CONTROL_KEY, cid) < control
        else "holdout"
        if assignment.assignment_hash(campaign_id, cid) < holdout
        else "treatment"
        for cid in customer_ids
    ]


def _natural_orders(rng: np.random.Generator, ids: list[str], rate: float) -> pd.DataFrame:
    """The shop's own purchases in the measurement period, whatever the campaign does."""
    buyers = [cid for cid, u in zip(ids, rng.random(len(ids)), strict=True) if u < rate]
    days = rng.integers(0, (WINDOW_END - WINDOW_START).days + ATTRIBUTION_DAYS + 1, len(buyers))
    start = datetime.combine(WINDOW_START, time(15), UTC)
    return pd.DataFrame(
        {
            "order_id": [f"N-{cid}" for cid in buyers],
            "customer_id": buyers,
            "ordered_at": [(start + timedelta(days=int(d))).isoformat() for d in days],
            "status": "completed",
            "total": np.round(rng.uniform(20, 120, len(buyers)), 2).astype(str),
        }
    )


def run_seed(
    conn: psycopg.Connection,
    seed: int,
    customers: int = 3000,
    uplifts: dict[str, float] | None = None,
    holdout_shares: dict[str, float] | None = None,
    control_share: float = 0.05,
    baseline: float = 0.05,
    natural_rate: float = 0.03,
) -> list[Estimate]:
    """One simulated window of every campaign; the estimates of each against its truth.

    `uplifts` default to the simulator's example uplifts; {} (or zeros) means no effect.
    """
    reset_measurement_tables(conn)
    shares = holdout_shares or example_holdout_shares()
    true = simulator.EXAMPLE_UPLIFTS if uplifts is None else uplifts
    config = simulator.SimulationConfig(
        seed=seed,
        baseline_reactivation=baseline,
        campaign_uplift=0.0,
        campaign_uplifts={c: true.get(c, 0.0) for c in shares},
    )
    frames = []
    for campaign_id, share in sorted(shares.items()):
        ids = [f"s{seed}-{campaign_id}-{i}" for i in range(customers)]
        frames.append(
            pd.DataFrame(
                {
                    "customer_id": ids,
                    "group": assign(campaign_id, ids, share, control_share),
                    "campaign_id": campaign_id,
                }
            )
        )
    targets = pd.concat(frames, ignore_index=True)
    rng = np.random.default_rng(seed)
    stages = rng.choice(STAGES, size=len(targets))
    natural = _natural_orders(rng, list(targets["customer_id"]), natural_rate)
    window_days = (WINDOW_END - WINDOW_START).days + 1
    responses = simulator.simulate_campaign_responses(targets, WINDOW_START, window_days, config)
    orders = pd.concat([natural, responses["orders"]], ignore_index=True)
    with conn.cursor() as cur:
        with cur.copy(
            "copy raw.customers (customer_id, country, created_at, _load_date, _source_file,"
            " _source_line) from stdin"
        ) as copy:
            for cid in targets["customer_id"]:
                copy.write_row((cid, "IT", "2024-01-01", "2024-01-01", "validation", 1))
        with cur.copy(
            "copy winback.campaign_audiences (run_date, campaign_id, customer_id, channel,"
            " assigned_group, lifecycle_stage, entered_on) from stdin"
        ) as copy:
            for row, stage in zip(targets.itertuples(index=False), stages, strict=True):
                copy.write_row(
                    (WINDOW_START, row.campaign_id, row.customer_id, "email", row.group, stage,
                     WINDOW_START)
                )  # fmt: skip
        with cur.copy(
            "copy raw.orders (order_id, customer_id, ordered_at, status, total, currency,"
            " _load_date, _source_file, _source_line) from stdin"
        ) as copy:
            for row in orders.itertuples(index=False):
                loaded = pd.Timestamp(row.ordered_at).date()  # loaded the day it happened
                copy.write_row(
                    (row.order_id, row.customer_id, row.ordered_at, "completed", row.total,
                     "EUR", loaded, "validation", 1)
                )  # fmt: skip
    conn.commit()

    buyers = set(natural["customer_id"])  # every one dated from the start to measured_on
    truths = simulator.true_uplifts(simulator.true_effects(targets, WINDOW_START, config, buyers))
    overall: dict[str, measurement.WindowResult] = {}
    planning = measurement.Planning()
    for campaign_id in sorted(shares):
        overall[campaign_id] = measurement.measure_window(
            conn, campaign_id, WINDOW_START, WINDOW_END, ATTRIBUTION_DAYS, planning
        )[0]
    overall[GLOBAL_CONTROL] = global_control.measure_program_window(
        conn, WINDOW_START, WINDOW_END, ATTRIBUTION_DAYS
    )[0]
    conn.commit()
    estimates = []
    for name, result in overall.items():
        rate, revenue = result.result, result.revenue
        estimates.append(
            Estimate(seed, name, "rate", truths[name]["rate"], rate.absolute,
                     rate.absolute_interval.low, rate.absolute_interval.high)
        )  # fmt: skip
        estimates.append(
            Estimate(seed, name, "revenue", truths[name]["revenue"], revenue.difference,
                     revenue.interval.low, revenue.interval.high)
        )  # fmt: skip
    return estimates


def coverage(conn: psycopg.Connection, seeds: range, **kwargs) -> list[Estimate]:
    """Every estimate of every seed (see `run_seed` for the arguments)."""
    return [e for seed in seeds for e in run_seed(conn, seed, **kwargs)]


def tally(estimates: list[Estimate]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (name, metric): seeds, how many intervals covered the truth and how many
    excluded zero, the mean truth and the mean measured value."""
    table: dict[tuple[str, str], dict[str, float]] = {}
    for e in estimates:
        row = table.setdefault(
            (e.name, e.metric),
            {"seeds": 0, "covered": 0, "excluded_zero": 0, "truth": 0.0, "measured": 0.0},
        )
        row["seeds"] += 1
        row["covered"] += e.covers_truth
        row["excluded_zero"] += e.excludes_zero
        row["truth"] += e.truth
        row["measured"] += e.measured
    for row in table.values():
        row["truth"] /= row["seeds"]
        row["measured"] /= row["seeds"]
    return table
