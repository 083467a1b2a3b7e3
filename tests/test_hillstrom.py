"""A public randomized experiment measured with winback's own code (docs/measurement.md).

Kevin Hillstrom's MineThatData e-mail challenge (2008): 64,000 customers split at random
into a Mens e-mail, a Womens e-mail and a no e-mail arm. tests/data holds each arm's size
and every purchaser's spend; each e-mail arm is loaded as a campaign window against the
no e-mail arm as its holdout and measured in the warehouse. The published conversion rates
and spend per customer come back, and every interval equals an independent computation.
"""

from __future__ import annotations

import json
import math
from datetime import date, timedelta
from pathlib import Path

import pytest
from scipy.stats import norm, ttest_ind

from winback.measurement import windows as measurement
from winback.simulation import measurement_validation

DATA = Path(__file__).parent / "data" / "hillstrom_2008_conversions.json"
START, END = date(2026, 9, 1), date(2026, 9, 14)  # two weeks, as the experiment tracked
# Published (Hillstrom 2008): conversion rate and spend per customer of each arm.
PUBLISHED = {
    "Mens E-Mail": (0.0125, 1.42),
    "Womens E-Mail": (0.0088, 1.08),
    "No E-Mail": (0.0057, 0.65),
}


def wilson(successes: int, n: int) -> tuple[float, float]:
    z = norm.ppf(0.975)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.fixture(scope="module")
def arms() -> dict[str, dict]:
    return json.loads(DATA.read_text())["arms"]


@pytest.fixture
def experiment(conn, arms):
    """Both e-mail arms as campaigns, the no e-mail arm as each one's holdout."""
    measurement_validation.reset_measurement_tables(conn)
    customers, audience, orders = [], [], []
    for arm, campaigns, group in [
        ("Mens E-Mail", ["hillstrom_mens"], "treatment"),
        ("Womens E-Mail", ["hillstrom_womens"], "treatment"),
        ("No E-Mail", ["hillstrom_mens", "hillstrom_womens"], "holdout"),
    ]:
        size, spends = arms[arm]["customers"], arms[arm]["spends"]
        ids = [f"{arm[:1]}{i}" for i in range(size)]
        customers += ids
        audience += [(c, cid, group) for c in campaigns for cid in ids]
        orders += [(f"o-{cid}", cid, spend) for cid, spend in zip(ids, spends, strict=False)]
    day = START + timedelta(days=3)
    with conn.cursor() as cur:
        with cur.copy(
            "copy raw.customers (customer_id, country, created_at, _load_date, _source_file,"
            " _source_line) from stdin"
        ) as copy:
            for cid in customers:
                copy.write_row((cid, "US", "2008-01-01", "2008-01-01", "hillstrom", 1))
        with cur.copy(
            "copy winback.campaign_audiences (run_date, campaign_id, customer_id, channel,"
            " assigned_group, lifecycle_stage) from stdin"
        ) as copy:
            for campaign, cid, group in audience:
                copy.write_row((START, campaign, cid, "email", group, "at_risk"))
        with cur.copy(
            "copy raw.orders (order_id, customer_id, ordered_at, status, total, currency,"
            " _load_date, _source_file, _source_line) from stdin"
        ) as copy:
            for order_id, cid, spend in orders:
                copy.write_row((order_id, cid, day, "completed", spend, "USD", day, "h", 1))
    conn.commit()
    return conn


@pytest.mark.parametrize(
    "campaign, arm", [("hillstrom_mens", "Mens E-Mail"), ("hillstrom_womens", "Womens E-Mail")]
)
def test_the_published_rates_and_uplift_come_back_to_the_last_digit(
    experiment, arms, campaign, arm
):
    overall = measurement.measure_window(experiment, campaign, START, END, 0)[0]
    treated, held = arms[arm], arms["No E-Mail"]
    n1, x1, n0, x0 = (
        treated["customers"],
        len(treated["spends"]),
        held["customers"],
        len(held["spends"]),
    )
    assert (overall.treatment.customers, overall.treatment.reactivated) == (n1, x1)
    assert (overall.holdout.customers, overall.holdout.reactivated) == (n0, x0)
    result = overall.result
    # The published figures, as Hillstrom rounded them.
    assert round(result.treatment_rate, 4) == PUBLISHED[arm][0]
    assert round(result.holdout_rate, 4) == PUBLISHED["No E-Mail"][0]
    assert round(overall.revenue.treatment_mean, 2) == PUBLISHED[arm][1]
    assert round(overall.revenue.holdout_mean, 2) == PUBLISHED["No E-Mail"][1]

    # Independent computations: Newcombe's method 10 from two Wilson intervals ...
    p1, p0 = x1 / n1, x0 / n0
    (l1, u1), (l0, u0) = wilson(x1, n1), wilson(x0, n0)
    low = p1 - p0 - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = p1 - p0 + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    assert result.absolute == pytest.approx(p1 - p0, rel=1e-12)
    assert (result.absolute_interval.low, result.absolute_interval.high) == pytest.approx(
        (low, high), rel=1e-12
    )
    # ... Katz's log interval for the ratio, the pooled z test ...
    se = math.sqrt(1 / x1 - 1 / n1 + 1 / x0 - 1 / n0)
    katz = (p1 / p0 * math.exp(-1.959963984540054 * se) - 1,
            p1 / p0 * math.exp(1.959963984540054 * se) - 1)  # fmt: skip
    assert (result.relative_interval.low, result.relative_interval.high) == pytest.approx(
        katz, rel=1e-9
    )
    pooled = (x1 + x0) / (n1 + n0)
    z = (p1 - p0) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    assert result.p_value == pytest.approx(2 * norm.sf(z), rel=1e-9)
    # ... and SciPy's Welch test for the revenue per customer.
    spend1 = treated["spends"] + [0.0] * (n1 - x1)
    spend0 = held["spends"] + [0.0] * (n0 - x0)
    welch = ttest_ind(spend1, spend0, equal_var=False).confidence_interval(0.95)
    assert (overall.revenue.interval.low, overall.revenue.interval.high) == pytest.approx(
        (welch.low, welch.high), rel=1e-9
    )
    row = overall.row()
    assert float(row["incremental_revenue"]) == pytest.approx(
        sum(spend1) - n1 * sum(spend0) / n0, rel=1e-9
    )
    assert row["holdout_customers_needed"] is None  # 21,306 in the holdout: plenty
