"""The demo: a simulated shop run through a campaign window and measured against its holdout.

One simulation of the shop, up to the demo date, is cut in two at the start of a campaign
window that closes on the demo date:

1. `landing/<window start>/` holds everything that happened up to the window start. The
   daily DAG runs for that day: it loads it, builds the models and the audiences, and
   records what it would send.
2. The simulator then makes the audience of that day respond: a treatment customer comes
   back with a known uplift over an identical holdout customer
   (`simulator.simulate_campaign_responses`).
3. `landing/<demo date>/` holds everything after the window start (new customers, orders,
   events) plus those responses. The DAG runs for the demo date: the window's attribution
   period ends that day, so it measures the window into `winback.campaign_results`, and
   the measured uplift can be set against the true one.

A row whose timestamps cannot be read goes with the first part, where the loader
quarantines it; every row lands in exactly one part.

`play_campaign_window` is that scenario, written once: `winback demo` plays it live
against the provider sandbox, the end-to-end test fixture (tests/conftest.py) on a small,
dirtier shop.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import date
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
    """Who entered a campaign on `run_date`, treatment and holdout, one row per customer."""
    rows = conn.execute(
        "select distinct on (customer_id) customer_id, assigned_group "
        "from winback.campaign_audiences where run_date = %s order by customer_id, campaign_id",
        (run_date,),
    ).fetchall()
    return pd.DataFrame(rows, columns=["customer_id", "group"])


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
) -> bool:
    """The scenario above, for the shop of `settings` and the window closing on its date.

    `run_daily(day)` runs the daily DAG for a day on `landing` and says whether it
    succeeded; `connect()` opens the warehouse it runs on; `say` hears the progress.
    True when both days ran.
    """
    window_start, day = window.window_start, settings.as_of
    first_folder = landing / window_start.isoformat()
    say(
        f"[2/5] shop data up to {window_start} (start of the window"
        f" {window_start}..{window.window_end}): {first_folder}"
    )
    first, later = split_at(simulator.simulate_shop(settings), window_start)
    # A delivery written before is complete once its manifest exists (written last).
    if not (first_folder / MANIFEST_NAME).exists():
        simulator.write_landing_files(first, first_folder)
    if not run_daily(window_start):
        return False
    with connect() as conn:
        targets = audience_targets(conn, window_start)
    later = add_campaign_responses(later, targets, window, settings)
    simulator.write_landing_files(later, landing / day.isoformat())
    say(
        f"      the window's {len(targets):,} targeted customers respond with a true uplift"
        f" of {settings.campaign_uplift:.1%} over a baseline of"
        f" {settings.baseline_reactivation:.1%}"
    )
    say(f"[3/5] shop data after it, up to {day}: {landing / day.isoformat()}")
    return run_daily(day)
