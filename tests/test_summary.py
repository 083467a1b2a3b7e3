"""The run summary says what happened on a real shop's day: guest orders, fits, bands,
lifecycle thresholds, and which campaigns were not active and why."""

from __future__ import annotations

from datetime import date

from winback import summary


def test_the_summary_names_inactive_campaigns_degenerate_fits_and_thresholds():
    run = summary.RunSummary(date(2026, 9, 1))
    run.campaigns = [{"campaign_id": "we_miss_you"}, {"campaign_id": "winter"}]
    run.inactive_campaigns = [("we_miss_you", "starts on 2026-10-08"), ("bad.yaml", "refused: x")]
    run.orders_loaded = (300, 100, 12_000.0, 2_500.0)
    run.scored_customers, run.mean_p_alive = 10, 0.99
    run.churn_bands = [("low", 4), ("very_high", 6)]
    run.fits = {
        "bgnbd": {"params": {"r": 0.8, "alpha": 69.1, "a": 2.5e-16, "b": 1.3e-7},
                  "is_degenerate": True, "degenerate_reason": "a = 2.5e-16 at the bound",
                  "fallback": None, "churn_band_source": "own_gap", "message": None},
        "gamma_gamma": {"params": {"p": 2.1, "q": 0.84, "v": 11.0}, "is_degenerate": False,
                        "degenerate_reason": None, "fallback": "own_mean",
                        "churn_band_source": None, "message": "q = 0.84 <= 1"},
    }  # fmt: skip
    run.stages = [("active", 5), ("lost", 3)]
    run.lifecycle_thresholds = summary._lifecycle_thresholds(dict(run.stages))
    text = summary.render(run)
    assert "300 of customers, 100 guest checkouts" in text
    assert "2,500.00 of it from guests" in text
    assert "churn bands: low 4, very_high 6" in text
    assert "DEGENERATE (a = 2.5e-16 at the bound): churn bands from own_gap" in text
    assert "scores use own_mean" in text
    assert "1 of 2 valid campaigns active today; not active:" in text
    assert "we_miss_you: starts on 2026-10-08" in text and "bad.yaml: refused: x" in text
    assert "lost (2.0 x own threshold): 3" in text and "at_risk (0.75 x own threshold): 3" in text
