"""Uplift statistics: interval correctness against known values and by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from winback.measurement import uplift


def test_wilson_matches_a_published_value():
    # Newcombe (1998), table I, example (a): 81/263 -> 0.2553 to 0.3662.
    interval = uplift.wilson_interval(81, 263)
    assert interval.low == pytest.approx(0.2553, abs=5e-4)
    assert interval.high == pytest.approx(0.3662, abs=5e-4)


def test_newcombe_difference_matches_a_published_value():
    # Newcombe (1998), table II, example (a): 56/70 - 48/80 -> 0.0524 to 0.3339.
    result = uplift.uplift(56, 70, 48, 80)
    assert result.absolute == pytest.approx(0.2)
    assert result.absolute_interval.low == pytest.approx(0.0524, abs=5e-4)
    assert result.absolute_interval.high == pytest.approx(0.3339, abs=5e-4)


def test_zero_successes_still_give_a_finite_interval():
    result = uplift.uplift(0, 50, 0, 10)
    assert result.absolute == 0 and result.relative is None
    assert result.absolute_interval.low < 0 < result.absolute_interval.high


def test_coverage_is_close_to_nominal_at_small_rates():
    rng = np.random.default_rng(11)
    p_holdout, true_uplift, n_treatment, n_holdout = 0.04, 0.03, 2000, 300
    covered = 0
    runs = 400
    for _ in range(runs):
        treated = rng.binomial(n_treatment, p_holdout + true_uplift)
        held = rng.binomial(n_holdout, p_holdout)
        covered += uplift.uplift(treated, n_treatment, held, n_holdout).absolute_interval.contains(
            true_uplift
        )
    assert covered / runs >= 0.92


def test_required_holdout_share_grows_as_the_uplift_shrinks():
    big = uplift.required_holdout_share(20_000, 0.04, 0.03)
    small = uplift.required_holdout_share(20_000, 0.04, 0.01)
    assert big is not None and small is not None and big < small <= 0.5


def test_a_too_small_audience_cannot_be_measured():
    assert uplift.required_holdout_share(200, 0.04, 0.005) is None


def test_the_required_share_actually_has_the_power():
    share = uplift.required_holdout_share(10_000, 0.05, 0.02)
    rng = np.random.default_rng(3)
    holdout = int(10_000 * share)
    treatment = 10_000 - holdout
    detected = sum(
        uplift.uplift(
            rng.binomial(treatment, 0.07), treatment, rng.binomial(holdout, 0.05), holdout
        ).p_value
        < 0.05
        for _ in range(300)
    )
    assert 0.72 <= detected / 300 <= 0.9


def test_sample_shortfall_uses_the_power_helper():
    # Large enough: no advice.
    assert uplift.sample_shortfall(4000, 1000, 0.05, 0.03) is None
    # A tiny holdout: the holdout the audience needs, less the one it has.
    short = uplift.sample_shortfall(3000, 20, 0.05, 0.03)
    share = uplift.required_holdout_share(3020, 0.05, 0.03)
    assert short.holdout == math.ceil(share * 3020) - 20 and short.audience is None
    # Too small an audience for any split: the smallest audience an even split measures.
    short = uplift.sample_shortfall(40, 10, 0.05, 0.03)
    assert short.holdout is None
    assert uplift.required_holdout_share(50 + short.audience, 0.05, 0.03) is not None
    assert uplift.required_holdout_share(50 + short.audience - 1, 0.05, 0.03) is None


def test_mean_difference_with_a_group_without_revenue_is_not_certain():
    result = uplift.mean_difference([50.0, 0.0, 0.0, 0.0], [0.0] * 4)
    assert result.difference == 12.5
    assert result.interval.low < 0 < result.interval.high
    assert uplift.mean_difference([0.0] * 3, [0.0] * 3).interval == uplift.Interval(0, 0)
