"""Scoring on the real PostgreSQL: CDNOW reproduction, compressed fits, stale models."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from conftest import create_database, using_database
from lifetimes import BetaGeoFitter

from winback.ingest import loader
from winback.local import dbt_runner
from winback.scoring import bgnbd
from winback.scoring import scores as scoring
from winback.simulation import cdnow, simulator
from winback.warehouse import db


@pytest.fixture(scope="module")
def cdnow_warehouse(session_database, tmp_path_factory):
    """The CDNOW sample through the project's path: files → loader → dbt → summary."""
    landing = tmp_path_factory.mktemp("cdnow")
    load_day = cdnow.CDNOW_END
    simulator.write_landing_files(cdnow.cdnow_frames(sample=True), landing / load_day.isoformat())
    with using_database(create_database("cdnow")) as url:
        with db.connect() as conn:
            report = loader.load_day(conn, landing, load_day)
        assert report.rows_quarantined == 0
        code = dbt_runner.run_dbt(
            [
                "run",
                "--select",
                "+customer_order_summary",
                "--vars",
                f"{{as_of_date: {cdnow.CDNOW_CALIBRATION_END}}}",
            ]
        )
        assert code == 0
        yield url


def test_cdnow_reproduces_fader_hardie_lee(cdnow_warehouse):
    settings = scoring.ScoringSettings(time_unit="week", bgnbd_penalizer=0.0,
                                       gamma_gamma_penalizer=0.0)  # fmt: skip
    with using_database(cdnow_warehouse), db.connect() as conn:
        summary = scoring.read_compressed_summary(conn, settings)
        params, fit = scoring.fit_bgnbd(summary, 0.0)
        spend, spend_fit = scoring.fit_gamma_gamma(scoring.read_compressed_spend(conn), 0.0)
    assert summary["weight"].sum() == 2357
    assert params.r == pytest.approx(0.243, rel=5e-3)
    assert params.alpha == pytest.approx(4.414, rel=5e-3)
    assert params.a == pytest.approx(0.793, rel=5e-3)
    assert params.b == pytest.approx(2.426, rel=5e-3)
    assert fit.log_likelihood == pytest.approx(-9582.4, rel=5e-4)
    assert spend_fit.customers == 946
    assert spend.p == pytest.approx(6.25, rel=5e-3)
    assert spend.q == pytest.approx(3.74, rel=5e-3)
    assert spend.v == pytest.approx(15.44, rel=5e-3)
    # lifetimes, fitted on the same compressed rows, reaches the same optimum.
    reference = BetaGeoFitter().fit(
        summary["frequency"], summary["recency"], summary["T"], weights=summary["weight"]
    )
    for name in ("r", "alpha", "a", "b"):
        assert getattr(params, name) == pytest.approx(reference.params_[name], rel=1e-5)
    reference_params = bgnbd.BgNbdParams(*(reference.params_[k] for k in ("r", "alpha", "a", "b")))
    reference_ll = float(
        bgnbd.log_likelihood(reference_params, summary["frequency"], summary["recency"],
                             summary["T"]) @ summary["weight"]
    )  # fmt: skip
    assert fit.log_likelihood == pytest.approx(reference_ll, rel=1e-6)


def test_cdnow_backtest_on_the_39_week_holdout(cdnow_warehouse):
    """Fit weeks 1-39, predict weeks 40-78 from the whole log (which dbt's customer_order_days
    serves as of 1998-06-30)."""
    settings = scoring.ScoringSettings(time_unit="week", bgnbd_penalizer=0.0,
                                       backtest_holdout_days=273)  # fmt: skip
    with using_database(cdnow_warehouse):
        code = dbt_runner.run_dbt(
            [
                "run",
                "--select",
                "int_order_days",
                "customer_order_days",
                "--vars",
                "{as_of_date: 1998-06-30}",
            ]
        )
        assert code == 0
        with db.connect() as conn:
            backtest = scoring.run_backtest(conn, date(1998, 6, 30), settings)
    assert backtest["calibration_end"] == "1997-09-30"
    assert backtest["customers"] == 2357
    # FHL (2005) report 1,788 actual repeat transactions in weeks 40-78 for the sample.
    actual, predicted = backtest["actual_repeat_purchases"], backtest["predicted_repeat_purchases"]
    assert 1500 < actual < 1900
    assert abs(predicted - actual) / actual < 0.15
    assert [b["repeat_purchases"] for b in backtest["by_calibration_repeat_purchases"]][-1] == "7+"


# Before the tests below: `cdnow_warehouse` points `conn` at the CDNOW database while it
# lives, and `summary_table` replaces its marts.
def test_cdnow_with_the_default_settings_reproduces_lifetimes_published_fits(cdnow_warehouse):
    """lifetimes' Quickstart (docs/Quickstart.md) publishes, on this sample: BG/NBD r 0.2426,
    alpha 4.4135 (weeks), a 0.7929, b 2.4258, and Gamma-Gamma p 6.25, q 3.74, v 15.45 on
    its 946 repeat buyers, both unpenalised. The shipped settings (include/scoring.yaml,
    days) must find them; alpha in days is 7 x alpha in weeks."""
    import dataclasses

    settings = dataclasses.replace(scoring.load_settings(), backtest_holdout_days=0)
    assert settings == dataclasses.replace(scoring.ScoringSettings(), backtest_holdout_days=0)
    with using_database(cdnow_warehouse), db.connect() as conn:
        result = scoring.score_customers(conn, cdnow.CDNOW_CALIBRATION_END, settings)
        conn.commit()
        rows = conn.execute(
            "select model, params, settings, is_degenerate, fallback, churn_band_source"
            " from winback.model_fits order by model_fit_id desc limit 2"
        ).fetchall()
    fits = {row[0]: row[1:] for row in rows}
    bg, bg_settings, degenerate, fallback, band_source = fits["bgnbd"]
    assert bg["r"] == pytest.approx(0.2426, rel=2e-3)
    assert bg["alpha"] / 7 == pytest.approx(4.4135, rel=2e-3)
    assert bg["a"] == pytest.approx(0.7929, rel=2e-3)
    assert bg["b"] == pytest.approx(2.4258, rel=2e-3)
    assert (degenerate, fallback, band_source) == (False, None, "p_alive")
    assert bg_settings["bgnbd_penalizer"] == 0 and bg_settings["time_unit"] == "day"
    spend, _, _, spend_fallback, _ = fits["gamma_gamma"]
    assert result.gamma_gamma.customers == 946 and spend_fallback is None
    assert spend["p"] == pytest.approx(6.25, abs=0.01)
    assert spend["q"] == pytest.approx(3.74, abs=0.01)
    assert spend["v"] == pytest.approx(15.45, abs=0.02)


def test_compressed_and_row_by_row_fits_agree():
    from lifetimes.generate_data import beta_geometric_nbd_model

    np.random.seed(5)
    n = 3000
    generated = beta_geometric_nbd_model(39, 0.25, 4.4, 0.8, 2.4, size=n)
    rows = pd.DataFrame(
        {  # whole weeks, as data counted in days or weeks is: many customers share a triple
            "frequency": generated["frequency"].astype(float),
            "recency": np.floor(generated["recency"]).astype(float),
            "T": generated["T"].astype(float),
        }
    )
    compressed = rows.groupby(["frequency", "recency", "T"]).size().rename("weight").reset_index()
    assert len(compressed) < 0.6 * n
    params, _ = scoring.fit_bgnbd(compressed.astype(float), 0.0)
    row_by_row = BetaGeoFitter().fit(rows["frequency"], rows["recency"], rows["T"])
    for name in ("r", "alpha", "a", "b"):
        assert getattr(params, name) == pytest.approx(row_by_row.params_[name], rel=1e-3)


@pytest.fixture
def summary_table(conn):
    conn.execute("drop schema if exists marts cascade")
    conn.execute("drop schema if exists winback cascade")
    conn.execute(
        "create schema marts; create table marts.customer_order_summary (customer_id text,"
        " repeat_purchase_days int, recency_days int, customer_age_days int,"
        " first_order_date date, last_order_date date, mean_repeat_order_value numeric,"
        " average_order_value numeric)"
    )
    rng = np.random.default_rng(9)
    # Mean spend as Gamma-Gamma draws it (p = 6, q = 4, v = 20): customers differ, so the
    # unpenalised fit has a finite optimum.
    spend_rng = np.random.default_rng(10)
    for i in range(400):
        freq = int(rng.poisson(2))
        age = int(rng.integers(100, 700))
        recency = int(age * rng.uniform(0.1, 1)) if freq else 0
        rng.random()
        nu = spend_rng.gamma(4.0, 1 / 20.0)
        mean_spend = spend_rng.gamma(6.0 * freq, 1 / (nu * freq)) if freq else None
        conn.execute(
            "insert into marts.customer_order_summary values (%s, %s, %s, %s, '2025-01-01',"
            " '2026-01-01', %s, %s)",
            (f"c{i}", freq, recency, age, mean_spend, 45.0),
        )
    conn.commit()
    return conn


def test_scores_are_written_finite_and_banded(summary_table):
    result = scoring.score_customers(
        summary_table, date(2026, 11, 20), scoring.ScoringSettings(backtest_holdout_days=0)
    )
    assert result.customers_scored == 400 and not result.is_stale
    frame = pd.DataFrame(
        summary_table.execute(
            "select p_alive, expected_purchases_30d, expected_purchases_365d, clv, churn_risk_band,"
            " expected_order_value from winback.customer_scores"
        ).fetchall(),
        columns=["p_alive", "e30", "e365", "clv", "band", "value"],
    )
    assert frame["p_alive"].between(0, 1).all()
    assert (frame["e365"].astype(float) >= frame["e30"].astype(float)).all()
    assert set(frame["band"]) <= {"low", "medium", "high", "very_high"}
    fits = summary_table.execute("select model, converged from winback.model_fits").fetchall()
    assert sorted(fits) == [("bgnbd", True), ("gamma_gamma", True)]


def test_each_customer_gets_the_scores_of_the_direct_per_customer_formulas(summary_table):
    """The grid-and-join write equals computing every customer on their own."""
    settings = scoring.ScoringSettings(backtest_holdout_days=0)
    result = scoring.score_customers(summary_table, date(2026, 11, 20), settings)
    bg = bgnbd.BgNbdParams(**result.bgnbd.params)
    spend = bgnbd.GammaGammaParams(**result.gamma_gamma.params)
    rows = summary_table.execute(
        "select s.repeat_purchase_days, s.recency_days, s.customer_age_days,"
        " coalesce(s.mean_repeat_order_value, 0), c.p_alive, c.expected_purchases_30d,"
        " c.expected_purchases_365d, c.expected_order_value, c.clv,"
        " c.expected_next_purchase_date - c.as_of_date"
        " from marts.customer_order_summary s join winback.customer_scores c using (customer_id)"
    ).fetchall()
    assert len(rows) == 400
    x, t_x, T, m, p_alive, e30, e365, value, clv, wait = (
        np.array(column, dtype=float) for column in zip(*rows, strict=True)
    )
    assert p_alive == pytest.approx(bgnbd.p_alive(bg, x, t_x, T), rel=1e-12)
    for days, written in ((30, e30), (365, e365)):
        direct = bgnbd.conditional_expected_purchases(bg, days, x, t_x, T)
        assert written == pytest.approx(direct, rel=1e-9)
    direct_value = bgnbd.gamma_gamma_expected_value(spend, x, m)
    assert value == pytest.approx(np.round(direct_value, 2), abs=0.006)
    monthly = [
        bgnbd.conditional_expected_purchases(bg, 30 * month, x, t_x, T) for month in range(13)
    ]
    direct_clv = sum(
        (monthly[month] - monthly[month - 1]) * direct_value / 1.01**month for month in range(1, 13)
    )
    assert clv == pytest.approx(direct_clv, abs=0.006)
    median_wait = bgnbd.median_time_to_next_purchase_if_alive(bg, x, T)
    assert wait == pytest.approx(np.minimum(np.round(median_wait), 36500))


def test_a_failed_fit_keeps_the_previous_model_and_marks_scores_stale(summary_table, monkeypatch):
    settings = scoring.ScoringSettings(backtest_holdout_days=0)
    first = scoring.score_customers(summary_table, date(2026, 11, 19), settings)

    def failing_fit(data, penalizer, start=None):
        return None, scoring.FitResult("bgnbd", None, None, 400, 10, 0.1, False, "did not converge")

    monkeypatch.setattr(scoring, "fit_bgnbd", failing_fit)
    second = scoring.score_customers(summary_table, date(2026, 11, 20), settings)
    assert second.is_stale and "did not converge" in second.stale_reason
    stale = summary_table.execute(
        "select bool_and(is_stale), min(model_fit_id), max(model_fit_id)"
        " from winback.customer_scores"
    ).fetchone()
    assert stale == (True, first.bgnbd.model_fit_id, first.bgnbd.model_fit_id)


def test_a_search_that_does_not_converge_keeps_the_previous_model(summary_table, monkeypatch):
    settings = scoring.ScoringSettings(backtest_holdout_days=0)
    first = scoring.score_customers(summary_table, date(2026, 11, 19), settings)
    monkeypatch.setattr(bgnbd, "CONVERGED_GRADIENT", 0.0)  # no search can reach it
    monkeypatch.setattr(bgnbd, "ACCEPTED_GRADIENT", 0.0)
    second = scoring.score_customers(summary_table, date(2026, 11, 20), settings)
    assert not second.bgnbd.converged and "did not converge" in second.bgnbd.message
    assert second.is_stale and f"model {first.bgnbd.model_fit_id} kept" in second.stale_reason
    kept = summary_table.execute(
        "select count(*), min(model_fit_id), bool_and(is_stale) from winback.customer_scores"
    ).fetchone()
    assert kept == (400, first.bgnbd.model_fit_id, True)


def test_the_second_fit_starts_from_the_first_and_finds_the_same_model(summary_table):
    # A small BG/NBD penalty, as the retry uses: unpenalised, this 400-customer table's
    # likelihood is flat toward a, b -> infinity (no drop-out), and where a search stops
    # on that ridge depends on its start, which is not what this test is about.
    settings = scoring.ScoringSettings(backtest_holdout_days=0, bgnbd_penalizer=0.001)
    first = scoring.score_customers(summary_table, date(2026, 11, 19), settings)
    second = scoring.score_customers(summary_table, date(2026, 11, 20), settings)
    assert not first.bgnbd.warm_start and second.bgnbd.warm_start
    assert second.bgnbd.iterations < first.bgnbd.iterations
    for name, value in first.bgnbd.params.items():
        assert second.bgnbd.params[name] == pytest.approx(value, rel=1e-5)
    for name, value in first.gamma_gamma.params.items():
        assert second.gamma_gamma.params[name] == pytest.approx(value, rel=1e-5)


def test_no_previous_model_means_no_scores_at_all(summary_table, monkeypatch):
    monkeypatch.setattr(
        scoring,
        "fit_bgnbd",
        lambda data, penalizer, start=None: (
            None,
            scoring.FitResult("bgnbd", None, None, 1, 1, 0, False, "x"),
        ),
    )
    with pytest.raises(scoring.ScoringError, match="no previous model"):
        scoring.score_customers(summary_table, date(2026, 11, 20), scoring.ScoringSettings())


def test_the_grid_key_is_the_same_in_numpy_and_in_sql(conn):
    triples = [(0, 0, 30), (1, 5, 700), (37, 1000, 1_048_575), (8_000_000, 0, 1)]
    expected = scoring.triple_key(*zip(*triples, strict=True))
    in_sql = [
        conn.execute(
            f"select {scoring.TRIPLE_KEY_SQL} from (select %s::int as repeat_purchase_days,"
            " %s::int as recency_days, %s::int as customer_age_days) s",
            triple,
        ).fetchone()[0]
        for triple in triples
    ]
    assert in_sql == list(expected)
    assert len(set(in_sql)) == len(triples)
    with pytest.raises(scoring.ScoringError, match="age_days"):
        scoring.triple_key([1], [0], [1 << scoring.KEY_BITS])


# --------------------------------------------------------------------------- real shops


def test_settings_come_from_a_file_and_a_typo_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "scoring.yaml"
    path.write_text("time_unit: week\ngamma_gamma_penalizer: 0.01\nspend_fallback: previous_fit\n")
    monkeypatch.setenv(scoring.SETTINGS_ENV, str(path))
    settings = scoring.load_settings()
    assert (settings.time_unit, settings.gamma_gamma_penalizer) == ("week", 0.01)
    assert settings.spend_fallback == "previous_fit" and settings.bgnbd_penalizer == 0.0
    path.write_text("gamma_gama_penalizer: 0.01\n")
    with pytest.raises(scoring.ScoringError, match="unknown scoring settings"):
        scoring.load_settings()
    path.write_text("spend_fallback: zero\n")
    with pytest.raises(scoring.ScoringError, match="spend_fallback"):
        scoring.load_settings()


def test_an_unusable_spend_fit_falls_back_to_the_own_mean_and_leaves_bgnbd_alone(
    summary_table, monkeypatch
):
    """Converged with q <= 1 (no finite mean spend): recorded, flagged, not used."""
    settings = scoring.ScoringSettings(backtest_holdout_days=0, warm_start=False)
    scoring.score_customers(summary_table, date(2026, 11, 19), settings)
    before = summary_table.execute(
        "select customer_id, p_alive, churn_risk_band from winback.customer_scores"
    ).fetchall()

    def heavy_tailed_fit(data, penalizer, start=None):
        params = bgnbd.GammaGammaParams(p=2.1, q=0.84, v=11.0)
        return params, scoring.FitResult("gamma_gamma", params.as_dict(), -1.0, 200, 150, 0.1,
                                         True)  # fmt: skip

    monkeypatch.setattr(scoring, "fit_gamma_gamma", heavy_tailed_fit)
    result = scoring.score_customers(summary_table, date(2026, 11, 20), settings)
    assert not result.is_stale and result.bgnbd.converged
    assert result.gamma_gamma.fallback == "own_mean" and "q = 0.84" in result.gamma_gamma.message
    after = summary_table.execute(
        "select customer_id, p_alive, churn_risk_band from winback.customer_scores"
    ).fetchall()
    assert sorted(after) == sorted(before)
    own_mean = summary_table.execute(
        "select count(*) filter (where c.expected_order_value <> round(s.average_order_value, 2))"
        " from winback.customer_scores c join marts.customer_order_summary s using (customer_id)"
    ).fetchone()[0]
    assert own_mean == 0
    recorded = summary_table.execute(
        "select converged, fallback from winback.model_fits where model = 'gamma_gamma'"
        " order by model_fit_id desc limit 1"
    ).fetchone()
    assert recorded == (True, "own_mean")
    assert "own_mean" in scoring.fit_alert(result)


def no_dropout_shop(conn, seed: int = 3, customers: int = 800) -> None:
    """A shop built to degenerate BG/NBD: everybody keeps buying (Poisson, no dropout),
    as wholesale customers on one year of history look. The fit runs a (the dropout
    odds) to 0, and P(alive) to 1 for every repeat buyer however silent."""
    rng = np.random.default_rng(seed)
    conn.execute("drop schema if exists marts cascade")
    conn.execute("drop schema if exists winback cascade")
    conn.execute(
        "create schema marts; create table marts.customer_order_summary (customer_id text,"
        " repeat_purchase_days int, recency_days int, customer_age_days int,"
        " first_order_date date, last_order_date date, mean_repeat_order_value numeric,"
        " average_order_value numeric)"
    )
    for i in range(customers):
        age = int(rng.integers(120, 366))
        rate = rng.gamma(2.0, 1 / 60.0)
        times = np.sort(rng.uniform(0, age, rng.poisson(rate * age))).astype(int)
        days = np.unique(np.concatenate([[0], times]))
        value = float(rng.lognormal(4, 1.2))  # heavy-tailed, wholesale-like
        conn.execute(
            "insert into marts.customer_order_summary values (%s, %s, %s, %s, '2025-01-01',"
            " '2026-01-01', %s, %s)",
            (f"c{i}", len(days) - 1, int(days[-1]), age, value if len(days) > 1 else None,
             value),
        )  # fmt: skip
    conn.commit()


@pytest.mark.parametrize("penalizer", [0.0, 0.001])
def test_a_degenerate_fit_is_flagged_and_bands_come_from_the_own_gap(conn, penalizer):
    no_dropout_shop(conn)
    settings = scoring.ScoringSettings(backtest_holdout_days=0, bgnbd_penalizer=penalizer)
    result = scoring.score_customers(conn, date(2026, 11, 20), settings)
    conn.commit()
    assert result.bgnbd.is_degenerate and result.churn_band_source == "own_gap"
    assert "at the bound" in result.bgnbd.degenerate_reason or "P(alive)" in (
        result.bgnbd.degenerate_reason
    )
    flagged = conn.execute(
        "select is_degenerate, degenerate_reason, churn_band_source from winback.model_fits"
        " where model = 'bgnbd' order by model_fit_id desc limit 1"
    ).fetchone()
    assert flagged[0] and flagged[1] and flagged[2] == "own_gap"
    assert "degenerate" in scoring.fit_alert(result)
    # The own-gap bands separate the silent from the active.
    bands = dict(
        conn.execute(
            "select churn_risk_band, count(*) from winback.customer_scores group by 1"
        ).fetchall()
    )
    assert len(bands) >= 3 and bands.get("low", 0) < 0.9 * sum(bands.values())
    silent_but_low = conn.execute(
        "select count(*) from winback.customer_scores c"
        " join marts.customer_order_summary s using (customer_id)"
        " where s.repeat_purchase_days > 0 and c.churn_risk_band = 'low'"
        " and s.customer_age_days - s.recency_days"
        "     >= 2 * s.recency_days::float8 / s.repeat_purchase_days"
    ).fetchone()[0]
    assert silent_but_low == 0
    silent = conn.execute(
        "select count(*), count(*) filter (where c.churn_risk_band = 'very_high')"
        " from winback.customer_scores c join marts.customer_order_summary s using (customer_id)"
        " where s.repeat_purchase_days > 0 and s.customer_age_days - s.recency_days"
        "     >= 2 * s.recency_days::float8 / s.repeat_purchase_days"
    ).fetchone()
    assert silent[0] > 0 and silent[0] == silent[1]


def test_a_healthy_fit_is_not_flagged(summary_table):
    result = scoring.score_customers(
        summary_table, date(2026, 11, 20), scoring.ScoringSettings(backtest_holdout_days=0)
    )
    assert not result.bgnbd.is_degenerate and result.churn_band_source == "p_alive"
    assert scoring.fit_alert(result) is None


# --------------------------------------------------------------------------- back-test cadence

LAST_BACKTEST = {
    "model_fit_id": 7,
    "as_of_date": date(2026, 11, 13),
    "customers": 1000,
    "params": {"r": 0.5, "alpha": 10.0, "a": 0.8, "b": 2.0},
}
SAME_PARAMS = bgnbd.BgNbdParams(**LAST_BACKTEST["params"])


@pytest.mark.parametrize(
    ("last", "as_of", "customers", "params", "runs", "says"),
    [
        (None, date(2026, 11, 14), 1000, SAME_PARAMS, True, "no earlier back-test"),
        (LAST_BACKTEST, date(2026, 11, 20), 1000, SAME_PARAMS, True, "7 days old"),
        (LAST_BACKTEST, date(2026, 11, 19), 1000, SAME_PARAMS, False, "fit 7 (2026-11-13"),
        (LAST_BACKTEST, date(2026, 11, 19), 1150, SAME_PARAMS, True, "customers fitted"),
        (LAST_BACKTEST, date(2026, 11, 19), 1050, SAME_PARAMS, False, "stands"),
        (
            LAST_BACKTEST,
            date(2026, 11, 14),
            1000,
            bgnbd.BgNbdParams(r=0.5, alpha=10.0, a=0.96, b=2.0),
            True,
            "a moved 20.0%",
        ),
    ],
)
def test_the_backtest_runs_weekly_and_when_the_data_moves(
    last, as_of, customers, params, runs, says
):
    decision = scoring.backtest_decision(last, as_of, customers, params, scoring.ScoringSettings())
    assert decision.runs is runs
    assert says in decision.reason
    assert decision.standing_fit_id == (None if runs else 7)


def test_the_registry_says_which_fit_each_score_and_backtest_came_from(summary_table):
    """Day 1 back-tests its fit; day 2 refits (warm, from day 1's) without a back-test, and
    the registry says day 1's stands; the scores come from day 2's own fit. A week later,
    or once the customers changed by more than 10%, the back-test runs again."""
    summary_table.execute(
        "create table marts.customer_order_days as"
        " select s.customer_id,"
        "  date '2026-11-20' - s.customer_age_days"
        "   + (s.recency_days * k / greatest(s.repeat_purchase_days, 1)) as order_date"
        " from marts.customer_order_summary s, generate_series(0, s.repeat_purchase_days) k"
    )
    summary_table.commit()
    settings = scoring.ScoringSettings(bgnbd_penalizer=0.001)
    first = scoring.score_customers(summary_table, date(2026, 11, 20), settings)
    second = scoring.score_customers(summary_table, date(2026, 11, 21), settings)
    assert first.backtest_decision.runs and first.backtest is not None
    assert not second.backtest_decision.runs and second.backtest is None
    assert "back-test" not in second.timings
    fits = {
        row[0]: row[1:]
        for row in summary_table.execute(
            "select model_fit_id, as_of_date, backtest is not null, backtest_model_fit_id,"
            " warm_start_model_fit_id, backtest_reason from winback.model_fits"
            " where model = 'bgnbd'"
        ).fetchall()
    }
    one, two = first.bgnbd.model_fit_id, second.bgnbd.model_fit_id
    assert fits[one][:4] == (date(2026, 11, 20), True, one, None)
    assert fits[two][:4] == (date(2026, 11, 21), False, one, one)
    assert f"the back-test of fit {one}" in fits[two][4]
    scored_by = summary_table.execute(
        "select distinct model_fit_id, as_of_date from winback.customer_scores"
    ).fetchall()
    assert scored_by == [(two, date(2026, 11, 21))]
    assert scoring.result_summary(second)["backtest"]["standing_fit_id"] == one

    week_later = scoring.score_customers(summary_table, date(2026, 11, 27), settings)
    assert week_later.backtest_decision.runs and "7 days old" in week_later.backtest_decision.reason
    summary_table.execute(
        "delete from marts.customer_order_summary where customer_id in"
        " (select customer_id from marts.customer_order_summary order by customer_id limit 80)"
    )
    summary_table.commit()
    fewer = scoring.score_customers(summary_table, date(2026, 11, 28), settings)
    assert (
        fewer.backtest_decision.runs
        and "customers fitted changed" in fewer.backtest_decision.reason
    )
