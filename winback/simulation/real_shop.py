"""A simulated shop shaped like a real online retailer's export, for end-to-end tests.

Modelled on the public transaction log of a UK online gift retailer (one year, prices in
GBP, a quarter of the lines from guest checkouts), whose valid data once stopped the
daily run (issue 25). Built on the default simulator's shop, then reshaped:

* no product categories at all (the columns are present and empty);
* a quarter of the orders are guest checkouts (no customer id);
* credit notes: a refunded order after some completed ones;
* fee lines: POSTAGE, CARRIAGE, Bank Charges and Manual, as products whose type is not
  given (the name rule must recognise them), on about a third of the orders;
* heavy-tailed, wholesale-like spend: each customer's prices times a log-normal factor;
* one year of history, and a few customers without a country.

The default shop (`simulator.simulate_shop`) is left exactly as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from winback.simulation import simulator

# (product_id, product_name, list price): what the retailer's export calls its fees.
FEE_PRODUCTS = (
    ("POST", "POSTAGE", 18.00),
    ("C2", "CARRIAGE", 50.00),
    ("BANK CHARGES", "Bank Charges", 15.00),
    ("M", "Manual", 2.50),
)
FEE_WEIGHTS = (0.7, 0.1, 0.05, 0.15)


@dataclass(frozen=True)
class RealShopConfig:
    customers: int = 1500
    seed: int = 25
    as_of: date = date(2026, 11, 20)
    history_days: int = 365
    guest_order_share: float = 0.25
    credit_note_share: float = 0.03  # of completed orders, followed by a credit note
    fee_line_share: float = 0.35  # orders with a fee line
    spend_sigma: float = 1.2  # log-normal spread of each customer's price level
    no_country_share: float = 0.005


def simulate_real_shop(config: RealShopConfig | None = None) -> dict[str, pd.DataFrame]:
    """One DataFrame per raw table, in the contract's columns, all values as text."""
    config = config or RealShopConfig()
    base = simulator.SimulationConfig(
        customers=config.customers,
        seed=config.seed,
        as_of=config.as_of,
        history_days=config.history_days,
    )
    frames = simulator.simulate_shop(base)
    rng = np.random.default_rng([config.seed, 25])
    products, customers = frames["products"].copy(), frames["customers"].copy()
    orders, lines = frames["orders"].copy(), frames["order_lines"].copy()

    # No categories; the shop does not say which products are merchandise either.
    products["category"] = ""
    products["product_type"] = ""
    fees = pd.DataFrame(
        {
            "product_id": [f[0] for f in FEE_PRODUCTS],
            "product_name": [f[1] for f in FEE_PRODUCTS],
            "category": "",
            "list_price": [f"{f[2]:.2f}" for f in FEE_PRODUCTS],
            "product_type": "",
        }
    )
    products = pd.concat([products, fees], ignore_index=True)
    lines["category"] = ""

    # Heavy-tailed spend: a price level per customer (wholesale buyers pay for crates).
    level = dict(
        zip(
            customers["customer_id"],
            np.clip(rng.lognormal(0.0, config.spend_sigma, len(customers)), 0.05, 200.0),
            strict=True,
        )
    )
    order_level = orders["customer_id"].map(level).fillna(1.0)
    lines["unit_price"] = (
        lines["unit_price"].astype(float)
        * lines["order_id"].map(dict(zip(orders["order_id"], order_level, strict=True)))
    ).map("{:.2f}".format)

    # Fee lines after the goods.
    with_fee = orders["order_id"][rng.random(len(orders)) < config.fee_line_share]
    next_line = lines.assign(n=lines["line_number"].astype(int)).groupby("order_id")["n"].max()
    pick = rng.choice(len(FEE_PRODUCTS), size=len(with_fee), p=FEE_WEIGHTS)
    fee_lines = pd.DataFrame(
        {
            "order_id": with_fee.to_numpy(),
            "line_number": (next_line.reindex(with_fee).to_numpy() + 1).astype(str),
            "product_id": [FEE_PRODUCTS[i][0] for i in pick],
            "category": "",
            "quantity": "1",
            "unit_price": [f"{FEE_PRODUCTS[i][2]:.2f}" for i in pick],
        }
    )
    lines = pd.concat([lines, fee_lines], ignore_index=True)

    # Credit notes: a refunded order a few days after some completed ones, for part of it.
    completed = orders[orders["status"] == "completed"]
    credited = completed[rng.random(len(completed)) < config.credit_note_share]
    credit_at = pd.to_datetime(credited["ordered_at"]) + pd.to_timedelta(
        rng.integers(1, 20, len(credited)), unit="D"
    )
    keep = credit_at.dt.date <= config.as_of
    credited, credit_at = credited[keep.to_numpy()], credit_at[keep.to_numpy()]
    credit_ids = "C" + credited["order_id"]
    first_lines = lines.drop_duplicates("order_id").set_index("order_id")
    credit_lines = first_lines.reindex(credited["order_id"]).reset_index()
    credit_lines["order_id"] = credit_ids.to_numpy()
    credit_lines["line_number"] = "1"
    credit_lines["quantity"] = "1"
    orders = pd.concat(
        [
            orders,
            credited.assign(
                order_id=credit_ids.to_numpy(),
                ordered_at=credit_at.dt.strftime("%Y-%m-%dT%H:%M:%SZ").to_numpy(),
                status="refunded",
            ),
        ],
        ignore_index=True,
    )
    lines = pd.concat([lines, credit_lines], ignore_index=True)

    # Totals from the lines, fees included.
    line_value = lines["quantity"].astype(float) * lines["unit_price"].astype(float)
    totals = line_value.groupby(lines["order_id"]).sum()
    orders["total"] = orders["order_id"].map(totals).fillna(0.0).map("{:.2f}".format)

    # A quarter of the orders are guest checkouts.
    guest = rng.random(len(orders)) < config.guest_order_share
    orders.loc[guest, "customer_id"] = ""

    # A few customers without a country (and so without a phone to normalise).
    no_country = rng.random(len(customers)) < config.no_country_share
    customers.loc[no_country, ["country", "phone"]] = ""

    frames.update(products=products, customers=customers, orders=orders, order_lines=lines)
    return {name: frame.reset_index(drop=True) for name, frame in frames.items()}
