"""A shop shaped like a real retailer's export goes through `winback_daily` end to end.

No categories, a quarter guest orders, credit notes, fee lines (POSTAGE, CARRIAGE, Bank
Charges, Manual) and heavy-tailed spend over one year (winback.simulation.real_shop):
nothing quarantined for an empty optional column or a guest checkout, scores written with
a recorded fit, bands that separate the silent from the active, audiences built, and no
message naming a fee item or a placeholder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import psycopg
import pytest
from conftest import create_database, run_daily_dag, using_database

from winback.simulation import real_shop, simulator

DAY = date(2026, 11, 20)
FEE_NAMES = [name for _, name, _ in real_shop.FEE_PRODUCTS]


def test_the_profile_has_the_shape_of_the_real_export():
    frames = real_shop.simulate_real_shop()
    orders, lines, products = frames["orders"], frames["order_lines"], frames["products"]
    assert (products["category"] == "").all() and (lines["category"] == "").all()
    assert 0.2 < (orders["customer_id"] == "").mean() < 0.3
    assert (orders["order_id"].str.startswith("C") & (orders["status"] == "refunded")).sum() > 0
    assert lines["product_id"].isin([p for p, _, _ in real_shop.FEE_PRODUCTS]).mean() > 0.05
    totals = orders["total"].astype(float).sort_values(ascending=False)
    assert totals.head(len(totals) // 100).sum() > 0.15 * totals.sum()  # heavy tail
    assert (frames["customers"]["country"] == "").sum() > 0
    assert (real_shop.simulate_real_shop()["orders"] == orders).all().all(), (
        "deterministic for a seed"
    )


@dataclass
class RealShopRun:
    url: str
    frames: dict
    log: Path


@pytest.fixture(scope="module")
def real_shop_run(session_database, tmp_path_factory) -> RealShopRun:
    from winback.local import airflow_env, dbt_runner

    landing = tmp_path_factory.mktemp("real_shop_landing")
    frames = real_shop.simulate_real_shop(real_shop.RealShopConfig(as_of=DAY))
    simulator.write_landing_files(frames, landing / DAY.isoformat())
    log = tmp_path_factory.mktemp("real_shop_logs") / f"winback_daily_{DAY}.log"
    with using_database(create_database("real_shop")) as url:
        dbt_runner.write_manifest()
        airflow_env.migrate_metadata_db()
        result = run_daily_dag(landing, DAY, log)
    text = log.read_text(errors="replace")
    assert result.returncode == 0, text[-6000:]
    assert "Marking task as FAILED" not in text, text[-6000:]
    return RealShopRun(url, frames, log)


@pytest.mark.slow
def test_guest_orders_and_empty_optional_columns_load_without_quarantine(real_shop_run):
    frames = real_shop_run.frames
    with psycopg.connect(real_shop_run.url) as conn:
        quarantined = conn.execute("select count(*) from raw.quarantine").fetchone()[0]
        guests, orders = conn.execute(
            "select count(*) filter (where customer_id is null), count(*) from raw.orders"
        ).fetchone()
        lines = conn.execute("select count(*) from raw.order_lines").fetchone()[0]
        in_models = conn.execute(
            "select count(*) from marts.customer_order_summary where customer_id is null"
        ).fetchone()[0]
    assert quarantined == 0
    assert orders == len(frames["orders"]) and lines == len(frames["order_lines"])
    assert guests == (frames["orders"]["customer_id"] == "").sum()
    assert in_models == 0


@pytest.mark.slow
def test_scores_are_written_with_a_recorded_fit_and_bands_spread(real_shop_run):
    with psycopg.connect(real_shop_run.url) as conn:
        fits = conn.execute(
            "select model, params, settings is not null, fallback, is_degenerate"
            " from winback.model_fits order by model_fit_id"
        ).fetchall()
        bands = dict(
            conn.execute(
                "select churn_risk_band, count(*) from winback.customer_scores group by 1"
            ).fetchall()
        )
        silent_low = conn.execute(
            "select count(*) from winback.customer_scores c"
            " join marts.customer_order_summary s using (customer_id)"
            " where c.churn_risk_band = 'low' and s.repeat_purchase_days > 0"
            " and s.days_since_last_order >= 4 * s.recency_days::float8 / s.repeat_purchase_days"
        ).fetchone()[0]
    assert {f[0] for f in fits} == {"bgnbd", "gamma_gamma"} and all(f[2] for f in fits)
    assert all(f[1] is not None or f[3] is not None for f in fits), fits
    assert len(bands) >= 3, bands
    assert max(bands.values()) < 0.9 * sum(bands.values()), bands
    assert silent_low < 0.05 * sum(bands.values())


@pytest.mark.slow
def test_audiences_are_built_and_no_message_names_a_fee_or_a_placeholder(real_shop_run):
    with psycopg.connect(real_shop_run.url) as conn:
        audience = conn.execute(
            "select count(*) from winback.campaign_audiences where run_date = %s", (DAY,)
        ).fetchone()[0]
        texts = [
            f"{subject or ''}\n{body or ''}"
            for subject, body in conn.execute(
                "select payload->>'subject', payload->>'body' from winback.outbox"
            ).fetchall()
        ]
        last_chosen = conn.execute(
            "select count(*) from marts.customer_features where last_purchased_products is not null"
        ).fetchone()[0]
    assert audience > 0 and texts and last_chosen > 0
    fee = re.compile(r"\b(" + "|".join(re.escape(n) for n in FEE_NAMES) + r")\b")
    placeholder = re.compile(r"None|uncategori[sz]ed|\{\{|\}\}|chose: \.|like: \.|of \?")
    assert not [t for t in texts if fee.search(t)]
    assert not [t for t in texts if placeholder.search(t)]
    assert any("Last time you chose:" in t for t in texts)
    longest = max(t.split("Last time you chose: ")[1].split(".\n")[0].count(",") for t in texts
                  if "Last time you chose: " in t)  # fmt: skip
    assert longest <= 2, "at most three products named"


@pytest.mark.slow
def test_the_summary_says_what_happened(real_shop_run):
    from winback import summary

    with using_database(real_shop_run.url), psycopg.connect(real_shop_run.url) as conn:
        text = summary.render(summary.collect(conn, DAY))
    print(text)  # the figures of the run, with pytest -s
    guests = (real_shop_run.frames["orders"]["customer_id"] == "").sum()
    assert f"{guests:,} guest checkouts" in text
    assert "6 of 6 valid campaigns active today" in text
    assert "customers past each threshold" in text
    assert "bgnbd fit:" in text and "gamma_gamma fit:" in text
    assert "churn bands:" in text
