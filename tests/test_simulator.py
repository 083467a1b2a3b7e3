"""The shop simulator: deterministic, in the contract's shape, and realistic enough."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import phonenumbers
import pytest

from winback.ingest import contract
from winback.simulation import simulator

AS_OF = date(2026, 11, 20)


@pytest.fixture(scope="module")
def shop() -> dict[str, pd.DataFrame]:
    return simulator.simulate_shop(simulator.SimulationConfig(customers=4000, seed=11, as_of=AS_OF))


def test_the_same_seed_gives_identical_data(shop):
    again = simulator.simulate_shop(
        simulator.SimulationConfig(customers=4000, seed=11, as_of=AS_OF)
    )
    for name, frame in shop.items():
        pd.testing.assert_frame_equal(frame, again[name])
    other = simulator.simulate_shop(
        simulator.SimulationConfig(customers=4000, seed=12, as_of=AS_OF)
    )
    assert not shop["orders"].equals(other["orders"])


def test_every_table_has_the_contract_columns(shop):
    for raw_table in contract.TABLES:
        assert list(shop[raw_table.name].columns) == raw_table.column_names, raw_table.name


def test_customers_buy_at_heterogeneous_rates(shop):
    completed = shop["orders"][shop["orders"]["status"] == "completed"]
    per_customer = completed.groupby("customer_id").size()
    assert per_customer.median() <= 3
    assert (per_customer >= 5).mean() > 0.1
    assert per_customer.max() >= 20


def test_sector_gaps_fall_in_their_ranges(shop):
    orders = shop["orders"].merge(shop["order_lines"][["order_id", "category"]], on="order_id")
    sectors = {c: s for s, p in simulator.SECTOR_PROFILES.items() for c in p.categories}
    orders["sector"] = orders["category"].map(sectors)
    orders["day"] = pd.to_datetime(orders["ordered_at"]).dt.normalize()
    days = orders.drop_duplicates(["customer_id", "day"]).sort_values(["customer_id", "day"])
    days["gap"] = days.groupby("customer_id")["day"].diff().dt.days
    median_gap = days.groupby("sector")["gap"].median()
    # Exponential waits around the customer's rate: medians sit below the means.
    assert 5 <= median_gap["grocery"] <= 30
    assert 80 <= median_gap["fashion"] <= 365
    assert median_gap["grocery"] < median_gap["beauty"] < median_gap["fashion"]


def test_contact_and_consent_have_realistic_gaps(shop):
    customers = shop["customers"]
    assert 0.3 < (customers["phone"] == "").mean() < 0.5
    assert (customers["email"] == "").mean() > 0.01
    consents = shop["consents"]
    withdrawn = consents[consents["status"] == "withdrawn"]["customer_id"].nunique()
    assert withdrawn > 0
    never_asked = set(customers["customer_id"]) - set(consents["customer_id"])
    assert len(never_asked) > 0.15 * len(customers)
    sms = consents[consents["channel"] == "sms"]["customer_id"]
    assert customers.set_index("customer_id").loc[sms, "phone"].ne("").all()


def test_phones_are_valid_numbers(shop):
    sample = shop["customers"].query("phone != ''").head(300)
    for phone, country in zip(sample["phone"], sample["country"], strict=True):
        assert phonenumbers.is_valid_number(phonenumbers.parse(phone, country)), phone


def test_engagement_carts_and_loyalty_are_there(shop):
    events = shop["engagement_events"]
    assert set(events["event_type"]) >= {"sent", "delivered", "open", "click", "unsubscribe"}
    assert len(events) / len(shop["customers"]) < 15
    assert (shop["carts"]["status"] == "abandoned").sum() > 0
    assert set(shop["loyalty_points"]["entry_type"]) == {"earned", "spent", "expiring"}


def test_nothing_happens_after_the_simulated_day(shop):
    for table, column in [("orders", "ordered_at"), ("engagement_events", "occurred_at"),
                          ("carts", "created_at"), ("loyalty_points", "occurred_at")]:  # fmt: skip
        latest = pd.to_datetime(shop[table][column]).max()
        assert latest.date() <= AS_OF, table


def test_dirty_rows_cover_every_kind():
    shop = simulator.simulate_shop(
        simulator.SimulationConfig(customers=1000, seed=2, as_of=AS_OF, dirty_rate=0.01)
    )
    orders, customers = shop["orders"], shop["customers"]
    assert orders["order_id"].duplicated().sum() >= 1
    assert orders["total"].str.startswith("-").sum() >= 1
    assert orders["total"].str.contains("€").sum() >= 1
    assert orders["ordered_at"].str.startswith("2026-13").sum() >= 1
    assert orders["customer_id"].str.startswith("GHOST").sum() >= 1
    assert (pd.to_datetime(orders["ordered_at"], errors="coerce", utc=True).dt.date > AS_OF).sum()
    assert (~customers["email"].str.contains("@") & (customers["email"] != "")).sum() >= 1
    assert (customers["phone"] == "+39 12").sum() >= 1


def test_campaign_responses_carry_the_known_uplift():
    config = simulator.SimulationConfig(seed=4, baseline_reactivation=0.05, campaign_uplift=0.1)
    targets = pd.DataFrame({"customer_id": [f"c{i}" for i in range(20000)]})
    targets["group"] = np.where(np.arange(20000) % 2 == 0, "treatment", "holdout")
    orders = simulator.simulate_campaign_responses(targets, date(2026, 9, 1), 30, config)["orders"]
    back = set(orders["customer_id"])
    treated = targets[targets["group"] == "treatment"]["customer_id"].isin(back).mean()
    held = targets[targets["group"] == "holdout"]["customer_id"].isin(back).mean()
    assert treated - held == pytest.approx(0.1, abs=0.015)
    assert held == pytest.approx(0.05, abs=0.01)
    again = simulator.simulate_campaign_responses(targets, date(2026, 9, 1), 30, config)["orders"]
    pd.testing.assert_frame_equal(orders, again)
    days = pd.to_datetime(orders["ordered_at"]).dt.date
    assert days.min() >= date(2026, 9, 1) and days.max() < date(2026, 10, 1)


def test_each_campaign_has_its_own_true_uplift_and_the_truth_is_exact():
    config = simulator.SimulationConfig(
        seed=5, baseline_reactivation=0.05, campaign_uplifts={"a": 0.02, "b": 0.12}
    )
    n = 40000
    targets = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "campaign_id": np.where(np.arange(n) // 10 % 2 == 0, "a", "b"),
            "group": np.select(
                [np.arange(n) % 10 == 1, np.arange(n) % 10 == 3],
                ["holdout", "global_control"],
                "treatment",
            ),
        }
    )
    start = date(2026, 9, 1)
    orders = simulator.simulate_campaign_responses(targets, start, 30, config)["orders"]
    back = targets["customer_id"].isin(set(orders["customer_id"]))
    for campaign_id, uplift in (("a", 0.02), ("b", 0.12)):
        mine = targets["campaign_id"] == campaign_id
        treated = back[mine & (targets["group"] == "treatment")].mean()
        held = back[mine & (targets["group"] != "treatment")].mean()
        assert treated - held == pytest.approx(uplift, abs=0.012)
    # The truth: who bought anyway is reactivated with or without the campaign.
    natural = set(targets["customer_id"].iloc[::7])
    effects = simulator.true_effects(targets, start, config, natural)
    lifted = effects["revenue_effect"] > 0
    assert not (effects["rate_effect"].astype(bool) & effects["customer_id"].isin(natural)).any()
    # A treated customer lifted by the campaign is exactly one who came back.
    treated = effects["group"] == "treatment"
    assert back[treated & lifted].all()
    assert not (back[~treated & lifted]).any()
    truths = simulator.true_uplifts(effects)
    assert truths["a"]["rate"] == pytest.approx(0.02 * 6 / 7, abs=0.006)
    assert truths["b"]["rate"] == pytest.approx(0.12 * 6 / 7, abs=0.01)
    assert truths["b"]["revenue"] == pytest.approx(0.12 * 65, rel=0.1)  # values 30 to 100
    # The program: 8 of the 9 non-control entrants of each campaign are treated.
    expected = (8 / 9) * effects["rate_effect"].mean()
    assert truths["global control"]["rate"] == pytest.approx(expected)


def test_write_shop_in_one_chunk_writes_what_simulate_shop_returns(tmp_path):
    settings = simulator.SimulationConfig(customers=600, seed=4, as_of=AS_OF, dirty_rate=0.01)
    rows = simulator.write_shop(settings, tmp_path, chunk_customers=1000)
    expected = simulator.simulate_shop(settings)
    for raw_table in contract.TABLES:
        written = pd.read_csv(tmp_path / f"{raw_table.stem}.csv", dtype=str, keep_default_na=False)
        frame = expected[raw_table.name][raw_table.column_names].astype(object)
        assert (written.to_numpy() == frame.to_numpy()).all(), raw_table.name
        assert rows[raw_table.name] == len(frame)


def test_write_shop_in_chunks_numbers_ids_across_chunks(tmp_path):
    settings = simulator.SimulationConfig(customers=900, seed=4, as_of=AS_OF)
    rows = simulator.write_shop(settings, tmp_path, chunk_customers=250)
    again = simulator.write_shop(settings, tmp_path / "again", chunk_customers=250)
    assert rows == again
    for raw_table in contract.TABLES:
        path = tmp_path / f"{raw_table.stem}.csv"
        assert path.read_bytes() == (tmp_path / "again" / path.name).read_bytes()
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        assert len(frame) == rows[raw_table.name]
        key = list(raw_table.primary_key)
        assert not frame.duplicated(key).any(), raw_table.name
    customers = pd.read_csv(tmp_path / "customers.csv", dtype=str)
    orders = pd.read_csv(tmp_path / "orders.csv", dtype=str)
    assert len(customers) == 900 and customers["customer_id"].iloc[-1] == "C00000900"
    assert set(orders["customer_id"]) <= set(customers["customer_id"])
    lines = pd.read_csv(tmp_path / "order_lines.csv", dtype=str)
    assert set(lines["order_id"]) == set(orders["order_id"])


def test_next_day_orders_come_from_existing_customers_on_that_day():
    settings = simulator.SimulationConfig(customers=5000, seed=4, as_of=AS_OF)
    day = date(2026, 11, 21)
    frames = simulator.simulate_next_day_orders(settings, day, 40)
    orders, lines = frames["orders"], frames["order_lines"]
    assert len(orders) == 40 and orders["customer_id"].is_unique
    assert orders["customer_id"].str.fullmatch(r"C\d{8}").all()
    assert (orders["customer_id"].str[1:].astype(int) <= 5000).all()
    assert orders["ordered_at"].str.startswith("2026-11-21T").all()
    assert set(lines["order_id"]) == set(orders["order_id"])
    totals = (
        (lines["quantity"].astype(float) * lines["unit_price"].astype(float))
        .groupby(lines["order_id"])
        .sum()
    )
    assert np.allclose(totals.reindex(orders["order_id"]).to_numpy(), orders["total"].astype(float))
    again = simulator.simulate_next_day_orders(settings, day, 40)
    pd.testing.assert_frame_equal(orders, again["orders"])


def test_text_formatting_matches_the_reference_formats():
    seconds = np.array([0, 1_790_000_000.7, 1_700_000_000])
    assert simulator._timestamps(seconds).tolist() == [
        "1970-01-01T00:00:00Z", "2026-09-21T14:13:20Z", "2023-11-14T22:13:20Z",
    ]  # fmt: skip
    # Amounts as "%.2f" writes them after rounding to cents, which the simulator used to call.
    amounts = np.concatenate(
        [[0.005, 12.345, -3.1, 1000], np.random.default_rng(0).lognormal(3, 2, 10_000)]
    )
    reference = np.char.mod("%.2f", np.round(amounts, 2))
    assert simulator._money(amounts).tolist() == reference.tolist()
