"""The demo's cut of one simulated shop at a campaign window's start."""

from __future__ import annotations

from datetime import date

import pandas as pd

from winback.measurement import windows as measurement
from winback.simulation import demo, simulator

AS_OF = date(2026, 11, 20)
CUT = date(2026, 10, 8)


def _shop():
    return simulator.simulate_shop(
        simulator.SimulationConfig(customers=800, seed=3, as_of=AS_OF, dirty_rate=0.02)
    )


def test_every_row_lands_in_exactly_one_part():
    frames = _shop()
    first, later = demo.split_at(frames, CUT)
    for name, frame in frames.items():
        assert len(first[name]) + len(later[name]) == len(frame), name
    assert len(later["orders"]) > 0 and len(first["orders"]) > 0


def test_the_first_part_holds_nothing_after_the_cut_and_lines_follow_their_order():
    first, later = demo.split_at(_shop(), CUT)
    end_of_cut = pd.Timestamp(CUT, tz="UTC") + pd.Timedelta(days=1)
    for name, columns in demo.TIMESTAMP_COLUMNS.items():
        for column in columns:
            stamps = pd.to_datetime(first[name][column], errors="coerce", utc=True, format="mixed")
            assert not (stamps >= end_of_cut).any(), (name, column)
        stamps = pd.to_datetime(later[name][columns[0]], errors="coerce", utc=True, format="mixed")
        if name != "carts":  # a cart opened before the cut may change status after it
            assert (stamps >= end_of_cut).all(), name
    assert set(later["order_lines"]["order_id"]) <= set(later["orders"]["order_id"])
    assert set(first["order_lines"]["order_id"]).isdisjoint(set(later["orders"]["order_id"]))


def test_responses_of_the_targets_are_added_to_the_later_part():
    first, later = demo.split_at(_shop(), CUT)
    targets = pd.DataFrame(
        {"customer_id": first["customers"]["customer_id"].head(400), "group": "treatment"}
    )
    window = measurement.CampaignWindow("we_miss_you", CUT, date(2026, 11, 6), 14)
    settings = simulator.SimulationConfig(baseline_reactivation=0.1, campaign_uplift=0.2)
    combined = demo.add_campaign_responses(later, targets, window, settings)
    added = len(combined["orders"]) - len(later["orders"])
    assert 60 <= added <= 180  # 400 customers at a 30% chance
    responses = combined["orders"].tail(added)
    assert set(responses["customer_id"]) <= set(targets["customer_id"])
    assert len(combined["order_lines"]) - len(later["order_lines"]) == added


def test_the_demo_knows_each_campaigns_true_uplift_and_the_global_controls():
    frames = _shop()
    first, _later = demo.split_at(frames, CUT)
    ids = first["customers"]["customer_id"].head(600).reset_index(drop=True)
    targets = pd.DataFrame(
        {
            "customer_id": ids,
            "campaign_id": ["we_miss_you", "sms_reactivation", "loyalty_points"] * 200,
            "group": (["treatment"] * 8 + ["holdout", "global_control"]) * 60,
        }
    )
    windows = [
        measurement.CampaignWindow(c, CUT, date(2026, 11, 6), 14)
        for c in ("we_miss_you", "sms_reactivation")
    ]
    settings = simulator.SimulationConfig(baseline_reactivation=0.05)
    truths = demo.simulation_truths(frames["orders"], targets, windows, windows[0], settings)
    assert set(truths) == {"we_miss_you", "sms_reactivation", "loyalty_points", "global control"}
    # Larger true uplift in the simulator, larger truth (the same customers' draws).
    assert 0 < truths["we_miss_you"]["rate"] < truths["sms_reactivation"]["rate"]
    assert truths["sms_reactivation"]["revenue"] > 0
