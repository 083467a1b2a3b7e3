"""The demo: a simulated shop run through a campaign window and measured against its holdout.

One simulation of the shop, up to the demo date, is cut in two at the start of a campaign
window that closes on the demo date:

1. `landing/<window start>/` holds everything that happened up to the window start. The
   daily DAG runs for that day: it loads it, builds the models and the audiences, and
   records what it would send.
2. The simulator then makes the audience of that day respond: a treatment customer comes
   back with their campaign's known uplift over an identical holdout or global-control
   customer (`simulator.simulate_campaign_responses`), so each campaign's true uplift, and
   the program's against the global control, are known (`simulation_truths`).
3. `landing/<demo date>/` holds everything after the window start (new customers, orders,
   events) plus those responses. The DAG runs for the demo date: the window's attribution
   period ends that day, so it measures the window into `winback.campaign_results`, and
   the summary prints each measured uplift beside the true one.

A row whose timestamps cannot be read goes with the first part, where the loader
quarantines it; every row lands in exactly one part.

`play_campaign_window` is that scenario, written once: `winback demo` plays it live
against the provider sandbox, the end-to-end test fixture (tests/conftest.py) on a small,
dirtier shop.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import psycopg

from winback.ingest.landing import MANIFEST_NAME
from winback.measurement.windows import CampaignWindow
from winback.simulation import simulator

# The columns that date a row of each raw table; a row belongs to the later part when any
# of them falls after the cut-off day (a cart abandoned before and bought after, say).
TIMESTAMP_COLUMNS: dict[str, tuple[str, ...]] = {
    "customers": ("created_at",),
    "orders": ("ordered_at",),
    "consents": ("recorded_at",),
    "engagement_events": ("occurred_at",),
    "carts": ("created_at", "status_changed_at"),
    "loyalty_points": ("occurred_at",),
}


def _is_after(frame: pd.DataFrame, columns: tuple[str, ...], cutoff: date) -> pd.Series:
    later = pd.Series(False, index=frame.index)
    end_of_cutoff = pd.Timestamp(cutoff, tz="UTC") + pd.Timedelta(days=1)
    for column in columns:
        stamps = pd.to_datetime(frame[column], errors="coerce", utc=True, format="mixed")
        later |= (stamps >= end_of_cutoff).fillna(False)
    return later


def split_at(
    frames: dict[str, pd.DataFrame], cutoff: date
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """(rows up to and including `cutoff`, rows after it), table by table.

    Products are reference data and go with the first part; order lines follow their order.
    """
    first: dict[str, pd.DataFrame] = {}
    later: dict[str, pd.DataFrame] = {}
    for name, frame in frames.items():
        if name in TIMESTAMP_COLUMNS:
            after = _is_after(frame, TIMESTAMP_COLUMNS[name], cutoff)
        elif name == "order_lines" and "orders" in frames:
            orders = frames["orders"]
            later_orders = set(
                orders.loc[_is_after(orders, TIMESTAMP_COLUMNS["orders"], cutoff), "order_id"]
            )
            after = frame["order_id"].isin(later_orders)
        else:
            after = pd.Series(False, index=frame.index)
        first[name] = frame[~after].reset_index(drop=True)
        later[name] = frame[after].reset_index(drop=True)
    return first, later


def audience_targets(conn: psycopg.Connection, run_date: date) -> pd.DataFrame:
    """Who entered a campaign on `run_date` (treatment, holdout and global control), one
    row per customer, with the campaign."""
    rows = conn.execute(
        "select distinct on (customer_id) customer_id, assigned_group, campaign_id "
        "from winback.campaign_audiences where run_date = %s order by customer_id, campaign_id",
        (run_date,),
    ).fetchall()
    return pd.DataFrame(rows, columns=["customer_id", "group", "campaign_id"])


def simulation_truths(
    orders: pd.DataFrame,
    targets: pd.DataFrame,
    windows: list[CampaignWindow],
    window: CampaignWindow,
    settings: simulator.SimulationConfig,
) -> dict[str, dict[str, float]]:
    """The true uplift, rate and revenue per customer, of each campaign measured today and
    of the program against the global control (`simulator.true_uplifts`).

    `orders` are the shop's own simulated orders: who bought anyway in a campaign's
    measurement period is reactivated with or without it. Responses are drawn for
    `window`, the one the demo simulates.
    """
    measured = {w.campaign_id: w for w in windows}
    parts = []
    for campaign_id, rows in targets.groupby("campaign_id"):
        own = measured.get(campaign_id, window)
        buyers = simulator.natural_buyers(
            orders, own.window_start, own.window_end + timedelta(days=own.attribution_days)
        )
        parts.append(simulator.true_effects(rows, window.window_start, settings, buyers))
    if not parts:
        return {}
    return simulator.true_uplifts(pd.concat(parts, ignore_index=True))


def add_campaign_responses(
    later: dict[str, pd.DataFrame],
    targets: pd.DataFrame,
    window: CampaignWindow,
    settings: simulator.SimulationConfig,
) -> dict[str, pd.DataFrame]:
    """`later` with the orders of targeted customers who come back within the window."""
    window_days = (window.window_end - window.window_start).days + 1
    responses = simulator.simulate_campaign_responses(
        targets, window.window_start, window_days, settings
    )
    combined = dict(later)
    for name, frame in responses.items():
        base = later.get(name)
        combined[name] = frame if base is None else pd.concat([base, frame], ignore_index=True)
    return combined


def play_campaign_window(
    settings: simulator.SimulationConfig,
    window: CampaignWindow,
    landing: Path,
    run_daily: Callable[[date], bool],
    connect: Callable[[], AbstractContextManager[psycopg.Connection]],
    say: Callable[[str], None] = lambda text: None,
    windows: list[CampaignWindow] | None = None,
    stage: Callable[[str], AbstractContextManager] = lambda name: nullcontext(),
) -> dict[str, dict[str, float]] | None:
    """The scenario above, for the shop of `settings` and the window closing on its date.

    `run_daily(day)` runs the daily DAG for a day on `landing` and says whether it
    succeeded; `connect()` opens the warehouse it runs on; `say` hears the progress;
    `stage(name)` times the simulation's own steps (the demo's `StageClock`).
    Returns the simulation's true uplifts of the `windows` measured on the last day (and
    of the program against the global control: `simulation_truths`) once both days ran;
    None when a day failed.
    """
    window_start, day = window.window_start, settings.as_of
    first_folder = landing / window_start.isoformat()
    say(
        f"[2/5] shop data up to {window_start} (start of the window"
        f" {window_start}..{window.window_end}): {first_folder}"
    )
    with stage("simulated shop"):
        frames = simulator.simulate_shop(settings)
        first, later = split_at(frames, window_start)
        # A delivery written before is complete once its manifest exists (written last).
        if not (first_folder / MANIFEST_NAME).exists():
            simulator.write_landing_files(first, first_folder)
    if not run_daily(window_start):
        return None
    with stage("responses"):
        with connect() as conn:
            targets = audience_targets(conn, window_start)
        later = add_campaign_responses(later, targets, window, settings)
        simulator.write_landing_files(later, landing / day.isoformat())
        truths = simulation_truths(frames["orders"], targets, windows or [window], window, settings)
    uplifts = ", ".join(
        f"{c} +{settings.campaign_uplifts.get(c, settings.campaign_uplift):.0%}"
        for c in sorted(set(targets["campaign_id"]))
    )
    say(
        f"      the window's {len(targets):,} targeted customers respond over a baseline of"
        f" {settings.baseline_reactivation:.1%} with each campaign's true uplift in"
        f" comeback chance for the treated: {uplifts}; the global control gets none"
    )
    say(f"[3/5] shop data after it, up to {day}: {landing / day.isoformat()}")
    return truths if run_daily(day) else None
