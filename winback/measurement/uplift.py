"""Statistics of a campaign against its holdout: uplift with its uncertainty, holdout size.

Reactivation rates are small (a few percent) and holdouts are often small too, where the
textbook Wald interval for a difference of proportions undercovers badly. We use
Newcombe's hybrid score interval (method 10 of Newcombe 1998), built from the two Wilson
intervals, which keeps close to nominal coverage down to a handful of successes; the
relative uplift uses the Katz log interval for a ratio of proportions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import norm


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class Uplift:
    treatment_rate: float
    holdout_rate: float
    absolute: float  # treatment rate - holdout rate
    absolute_interval: Interval
    relative: float | None  # treatment rate / holdout rate - 1
    relative_interval: Interval | None
    p_value: float


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    if trials <= 0:
        raise ValueError("a rate needs at least one customer")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} outside [0, {trials}]")
    z = norm.ppf(0.5 + confidence / 2)
    p = successes / trials
    denominator = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denominator
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def uplift(
    treatment_successes: int,
    treatment_size: int,
    holdout_successes: int,
    holdout_size: int,
    confidence: float = 0.95,
) -> Uplift:
    """Absolute and relative uplift of treatment over holdout, with confidence intervals."""
    p1 = treatment_successes / treatment_size
    p0 = holdout_successes / holdout_size
    w1 = wilson_interval(treatment_successes, treatment_size, confidence)
    w0 = wilson_interval(holdout_successes, holdout_size, confidence)
    difference = p1 - p0
    absolute_interval = Interval(
        difference - math.sqrt((p1 - w1.low) ** 2 + (w0.high - p0) ** 2),
        difference + math.sqrt((w1.high - p1) ** 2 + (p0 - w0.low) ** 2),
    )

    relative = relative_interval = None
    if treatment_successes > 0 and holdout_successes > 0:
        z = norm.ppf(0.5 + confidence / 2)
        log_ratio = math.log(p1 / p0)
        se = math.sqrt(
            1 / treatment_successes - 1 / treatment_size + 1 / holdout_successes - 1 / holdout_size
        )
        relative = p1 / p0 - 1
        relative_interval = Interval(
            math.exp(log_ratio - z * se) - 1, math.exp(log_ratio + z * se) - 1
        )

    pooled = (treatment_successes + holdout_successes) / (treatment_size + holdout_size)
    pooled_se = math.sqrt(pooled * (1 - pooled) * (1 / treatment_size + 1 / holdout_size))
    p_value = 2 * norm.sf(abs(difference) / pooled_se) if pooled_se > 0 else 1.0
    return Uplift(p1, p0, difference, absolute_interval, relative, relative_interval, p_value)


def required_holdout_share(
    audience_size: int,
    baseline_rate: float,
    minimum_uplift: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float | None:
    """The smallest holdout share that detects `minimum_uplift` (absolute) with `power`.

    None when even an even split of this audience cannot: the campaign cannot be measured
    at that size, whatever its holdout.
    """
    if not 0 < baseline_rate < 1 or minimum_uplift <= 0 or baseline_rate + minimum_uplift >= 1:
        raise ValueError("need 0 < baseline < baseline + uplift < 1")
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    p0, p1 = baseline_rate, baseline_rate + minimum_uplift

    def detectable(share: float) -> bool:
        holdout = audience_size * share
        treatment = audience_size - holdout
        if holdout < 1 or treatment < 1:
            return False
        se = math.sqrt(p1 * (1 - p1) / treatment + p0 * (1 - p0) / holdout)
        return z * se <= minimum_uplift

    # The standard error falls as the holdout grows towards an even split.
    if not detectable(0.5):
        return None
    low, high = 0.0, 0.5
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (low, middle) if detectable(middle) else (middle, high)
    return high


@dataclass(frozen=True)
class MeanDifference:
    """Treatment mean minus holdout mean of a per-customer amount, with its interval."""

    treatment_mean: float
    holdout_mean: float
    difference: float
    interval: Interval


def _mean_and_variance(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, variance


def mean_difference(
    treatment: list[float], holdout: list[float], confidence: float = 0.95
) -> MeanDifference:
    """Welch's interval for the difference of two means (revenue per customer, say).

    Revenue per customer is mostly zeros with a few orders, so a small group can show no
    revenue at all and a sample variance of zero, which would claim a certainty the data
    do not have. As the Wilson interval does for a rate with no successes, such a group is
    given the variance it would have with one buyer spending the mean amount of the
    buyers seen in either group. The degrees of freedom are Welch-Satterthwaite's.
    """
    from scipy.stats import t

    if not treatment or not holdout:
        raise ValueError("a mean difference needs at least one customer in each group")
    spenders = [v for v in (*treatment, *holdout) if v != 0]
    typical = sum(abs(v) for v in spenders) / len(spenders) if spenders else 0.0
    parts = []
    means = []
    for values in (treatment, holdout):
        mean, variance = _mean_and_variance(values)
        if all(v == 0 for v in values):
            n = len(values)
            variance = typical**2 / n  # one buyer of `typical` among n: variance ≈ typical²/n
        means.append(mean)
        parts.append((variance / len(values), len(values)))
    difference = means[0] - means[1]
    se_squared = sum(part for part, _ in parts)
    if se_squared == 0:
        return MeanDifference(means[0], means[1], difference, Interval(difference, difference))
    denominator = sum(part**2 / (n - 1) for part, n in parts if n > 1)
    freedom = se_squared**2 / denominator if denominator > 0 else 1.0
    half = t.ppf(0.5 + confidence / 2, freedom) * math.sqrt(se_squared)
    return MeanDifference(
        means[0], means[1], difference, Interval(difference - half, difference + half)
    )


@dataclass(frozen=True)
class Shortfall:
    """How many more customers a measurement needs to show `minimum_uplift`.

    `holdout` more holdout customers (the treatment as it is), or, when no holdout share of
    this audience could show it, `audience` more customers in all, split evenly.
    """

    holdout: int | None
    audience: int | None


def sample_shortfall(
    treatment_customers: int,
    holdout_customers: int,
    baseline_rate: float,
    minimum_uplift: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> Shortfall | None:
    """None when the groups are large enough, else how many more customers are needed.

    Uses `required_holdout_share`: the holdout this audience needs, less the one it has;
    when the holdout is already at least that large (the treatment is what is short), the
    audience that an even split would need.
    """
    if baseline_rate + minimum_uplift >= 1:
        raise ValueError("need baseline + uplift < 1")
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    p0, p1 = baseline_rate, baseline_rate + minimum_uplift
    if treatment_customers and holdout_customers:
        se = math.sqrt(p1 * (1 - p1) / treatment_customers + p0 * (1 - p0) / holdout_customers)
        if z * se <= minimum_uplift:
            return None
    audience = treatment_customers + holdout_customers
    share = required_holdout_share(audience, baseline_rate, minimum_uplift, alpha, power)
    if share is not None and math.ceil(share * audience) > holdout_customers:
        return Shortfall(holdout=math.ceil(share * audience) - holdout_customers, audience=None)
    # No holdout of this audience is enough: the smallest audience an even split measures.
    low, high = max(audience, 1), max(audience, 1) * 2
    while required_holdout_share(high, baseline_rate, minimum_uplift, alpha, power) is None:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if required_holdout_share(middle, baseline_rate, minimum_uplift, alpha, power) is None:
            low = middle
        else:
            high = middle
    return Shortfall(holdout=None, audience=max(0, high - audience))
