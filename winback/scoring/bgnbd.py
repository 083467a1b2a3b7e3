"""BG/NBD and Gamma-Gamma quantities in numerically stable forms.

lifetimes' closed form of the conditional expected number of purchases goes through the
Gaussian hypergeometric function 2F1(r+x, b+x; a+b+x-1; t/(α+T+t)) and divides by a-1: it
returns NaN when a + b < 1 and overflows for frequencies in the hundreds or thousands
(lifetimes issues #302, #442, #332). We compute the same expectation another way.

Given the customer is still alive at T, the posterior of the purchase rate is
λ ~ Gamma(r+x, α+T) and of the dropout probability p ~ Beta(a, b+x), independently. An
alive customer with (λ, p) makes (1 - exp(-λ p t)) / p purchases in the next t in
expectation; averaging over λ first gives

    E[X(t) | x, t_x, T] = P(alive) · E_p[ (1 - ((α+T) / (α+T+p t))^(r+x)) / p ],

a one-dimensional integral over p ~ Beta(a, b+x) of a smooth, bounded function, which
Gauss-Jacobi quadrature (weight p^(a-1) (1-p)^(b+x-1)) evaluates to machine precision for
any a, b > 0 and any frequency. P(alive) is computed in log space. Both agree with
lifetimes' direct forms wherever those are finite (tests/test_bgnbd.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh_tridiagonal
from scipy.optimize import minimize
from scipy.special import betaln, digamma, expit, gammaln

QUADRATURE_NODES = 48


@dataclass(frozen=True)
class BgNbdParams:
    r: float
    alpha: float
    a: float
    b: float

    def as_dict(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}

    def is_valid(self) -> bool:
        values = np.array([self.r, self.alpha, self.a, self.b])
        return bool(np.all(np.isfinite(values)) and np.all(values > 0))


@dataclass(frozen=True)
class GammaGammaParams:
    p: float
    q: float
    v: float

    def as_dict(self) -> dict[str, float]:
        return {"p": self.p, "q": self.q, "v": self.v}

    def is_valid(self) -> bool:
        values = np.array([self.p, self.q, self.v])
        return bool(np.all(np.isfinite(values)) and np.all(values > 0))

    def population_mean(self) -> float:
        """Mean spend per order of a customer we know nothing about (needs q > 1)."""
        return self.p * self.v / (self.q - 1) if self.q > 1 else float("nan")


def log_likelihood(params: BgNbdParams, x, t_x, T) -> np.ndarray:
    """Per-customer BG/NBD log-likelihood (Fader, Hardie & Lee 2005, eq. 6), in log space."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    common = gammaln(r + x) - gammaln(r) + r * np.log(alpha) - betaln(a, b)
    alive_term = betaln(a, b + x) - (r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        dropped_term = np.where(
            x > 0,
            betaln(a + 1, np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return common + np.logaddexp(alive_term, dropped_term)


def p_alive(params: BgNbdParams, x, t_x, T) -> np.ndarray:
    """P(still a customer at T | x, t_x, T), never NaN: 1 / (1 + exp(log odds of dropout))."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_odds_dropped = (
            np.log(a)
            - np.log(np.maximum(b + x - 1, 1e-300))
            + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
        )
    return np.where(x > 0, expit(-log_odds_dropped), 1.0)


@functools.lru_cache(maxsize=4096)
def _jacobi_nodes(a: float, b_plus_x: float) -> tuple[np.ndarray, np.ndarray]:
    """Gauss nodes on (0, 1) and weights for the Beta(a, b+x) distribution.

    Golub-Welsch on the three-term recurrence of the Jacobi polynomials with weight
    (1-y)^alpha (1+y)^beta, alpha = b+x-1 and beta = a-1 (p = (1+y)/2). The weights come
    from the eigenvectors, so they are already normalised: scipy's `roots_jacobi` scales
    them by 2^(alpha+beta+1) B(...), which overflows once b+x passes about a thousand.
    """
    alpha, beta = b_plus_x - 1.0, a - 1.0
    n = np.arange(QUADRATURE_NODES, dtype=float)
    total = 2 * n + alpha + beta
    with np.errstate(divide="ignore", invalid="ignore"):
        diagonal = (beta**2 - alpha**2) / (total * (total + 2))
    if abs(alpha + beta) < 1e-12:  # the n = 0 term is 0/0 there; its limit:
        diagonal[0] = (beta - alpha) / (alpha + beta + 2)
    k = n[1:]
    total_k = 2 * k + alpha + beta
    off_diagonal = np.sqrt(
        4
        * k
        * (k + alpha)
        * (k + beta)
        * (k + alpha + beta)
        / (total_k**2 * (total_k + 1) * (total_k - 1))
    )
    # The tridiagonal solver, not a dense eigh: a few microseconds, and no BLAS threads.
    nodes, vectors = eigh_tridiagonal(diagonal, off_diagonal)
    weights = vectors[0] ** 2
    p = np.clip((nodes + 1) / 2, 1e-300, 1.0)
    return p, weights / weights.sum()


def expected_purchases_if_alive(params: BgNbdParams, t, x, T) -> np.ndarray:
    """E[purchases in (T, T+t] | alive at T, x, T], by quadrature over p."""
    x = np.asarray(x, dtype=float)
    T = np.broadcast_to(np.asarray(T, dtype=float), x.shape)
    t = np.broadcast_to(np.asarray(t, dtype=float), x.shape)
    result = np.empty(x.shape, dtype=float)
    for frequency, rows, p, weights in _by_frequency(params, x):
        scale = (t[rows] / (params.alpha + T[rows]))[:, None] * p[None, :]
        result[rows] = _integrand(params.r + frequency, scale, p) @ weights
    return result


def expected_purchases_if_alive_over_horizons(params: BgNbdParams, horizons, x, T) -> np.ndarray:
    """expected_purchases_if_alive for every horizon at once: an array (len(x), horizons)."""
    x, T = np.asarray(x, dtype=float), np.asarray(T, dtype=float)
    horizons = np.asarray(horizons, dtype=float)
    result = np.empty((len(x), len(horizons)), dtype=float)
    for frequency, rows, p, weights in _by_frequency(params, x):
        # (customers, horizons, nodes)
        scale = (horizons[None, :, None] / (params.alpha + T[rows])[:, None, None]) * p
        result[rows] = _integrand(params.r + frequency, scale, p) @ weights
    return result


def _by_frequency(params: BgNbdParams, x: np.ndarray):
    """Customers with the same frequency share the posterior of p, hence the nodes."""
    order = np.argsort(x, kind="stable")
    frequencies, starts = np.unique(x[order], return_index=True)
    bounds = np.append(starts, len(x))
    for i, frequency in enumerate(frequencies):
        p, weights = _jacobi_nodes(params.a, params.b + frequency)
        yield frequency, order[bounds[i] : bounds[i + 1]], p, weights


def _integrand(r_plus_x: float, scale: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(1 - (1 + s)^-(r+x)) / p, without cancellation."""
    return -np.expm1(-r_plus_x * np.log1p(scale)) / p


def conditional_expected_purchases(params: BgNbdParams, t, x, t_x, T) -> np.ndarray:
    """E[X(t) | x, t_x, T]: the expected purchases in the next t, finite for any input."""
    return p_alive(params, x, t_x, T) * expected_purchases_if_alive(params, t, x, T)


def median_time_to_next_purchase_if_alive(params: BgNbdParams, x, T) -> np.ndarray:
    """Median wait for the next purchase of an alive customer: P(none in t) = 1/2.

    With λ ~ Gamma(r+x, α+T), P(no purchase in t) = ((α+T)/(α+T+t))^(r+x).
    """
    x, T = np.asarray(x, dtype=float), np.asarray(T, dtype=float)
    return (params.alpha + T) * np.expm1(np.log(2) / (params.r + x))


def gamma_gamma_expected_value(params: GammaGammaParams, x, mean_value) -> np.ndarray:
    """Expected spend per order: Gamma-Gamma for repeat buyers, the population mean else."""
    x = np.asarray(x, dtype=float)
    mean_value = np.nan_to_num(np.asarray(mean_value, dtype=float))
    individual = (
        (params.v + mean_value * x) * params.p / np.maximum(params.p * x + params.q - 1, 1e-9)
    )
    return np.where(x > 0, individual, params.population_mean())


def gamma_gamma_log_likelihood(params: GammaGammaParams, x, mean_value) -> np.ndarray:
    """Per-customer Gamma-Gamma log-likelihood of the mean spend (Fader & Hardie 2013)."""
    p, q, v = params.p, params.q, params.v
    x, m = np.asarray(x, dtype=float), np.asarray(mean_value, dtype=float)
    return (
        gammaln(p * x + q)
        - gammaln(p * x)
        - gammaln(q)
        + q * np.log(v)
        + (p * x - 1) * np.log(m)
        + (p * x) * np.log(x)
        - (p * x + q) * np.log(x * m + v)
    )


# --------------------------------------------------------------------------- fitting
#
# Maximum likelihood on compressed rows, with exact gradients. lifetimes minimises the same
# objectives (mean negative log-likelihood over the weighted rows plus penalizer × the sum
# of the squared parameters, BG/NBD's α in its time scale 1/max(T)) with autograd through
# every row; here every term that depends on the frequency alone (the gamma and beta
# functions and their digammas) is computed once per distinct frequency, and each
# evaluation returns the objective and its gradient together.


def _dot(u: np.ndarray, v: np.ndarray) -> float:
    """Σ u v over rows, without BLAS: its threads fight over a shared machine's cores and
    change the order of the sum from run to run; numpy's own loop does neither."""
    return float(np.einsum("i,i->", u, v))


@dataclass(frozen=True)
class FitOutcome:
    """What an optimiser run found: parameters in the data's time unit and how it went."""

    params: tuple[float, ...]
    mean_negative_log_likelihood: float  # the penalized objective at the optimum
    converged: bool
    iterations: int
    evaluations: int
    message: str


class BgNbdObjective:
    """lifetimes' BG/NBD objective on weighted rows: value and gradient in log-parameters.

    Per row (Fader, Hardie & Lee 2005, eq. 6, rearranged as lifetimes does):

        LL = C(x) + logaddexp(-(r+x) ln(α+T), [x>0] (ln a - ln(b+x-1) - (r+x) ln(α+t_x)))
        C(x) = lnΓ(r+x) - lnΓ(r) + r ln α + ln B(a, b+x) - ln B(a, b)

    C and its derivatives depend on x only: computed per distinct frequency, then summed
    with the total weight of each frequency. The logaddexp's share between its two terms
    (the posterior probability of "alive at T" against "dropped after the last purchase")
    weights the derivatives of the two terms.
    """

    def __init__(self, x, t_x, T, weights, penalizer: float = 0.0):
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        weights = np.asarray(weights, dtype=float)
        self.scale = 1.0 / T.max()  # lifetimes' time scale, so the penalizer means the same
        self.penalizer = penalizer
        self.total_weight = weights.sum()
        self.frequencies, frequency_index = np.unique(x, return_inverse=True)
        self.frequency_weight = np.bincount(frequency_index, weights=weights)
        self.repeat_frequencies = self.frequencies > 0
        # The "alive at T" term, -(r+x) ln(α+T), sums over rows as Σ_T f(T) Σ w (r+x): by age.
        self.ages, age_index = np.unique(T * self.scale, return_inverse=True)
        self.weight_by_age = np.bincount(age_index, weights=weights)
        self.weighted_x_by_age = np.bincount(age_index, weights=weights * x)
        # The "dropped after t_x" term exists for repeat buyers only, row by row.
        repeat = x > 0
        self.recencies, self.recency_index = np.unique(
            t_x[repeat] * self.scale, return_inverse=True
        )
        self.repeat_age_index = age_index[repeat]
        self.repeat_frequency_index = frequency_index[repeat]
        self.repeat_x = x[repeat]
        self.repeat_weights = weights[repeat]

    def value_and_gradient(self, log_params: np.ndarray) -> tuple[float, np.ndarray]:
        r, alpha, a, b = np.exp(log_params)
        xs, fw, w = self.frequencies, self.frequency_weight, self.repeat_weights
        total = self.total_weight
        log_alpha_ages = np.log(alpha + self.ages)
        inverse_alpha_ages = 1.0 / (alpha + self.ages)
        weight_x_ages = r * self.weight_by_age + self.weighted_x_by_age  # Σ w (r+x) per age

        # Repeat buyers: LL gains softplus(d), d = ln(a / (b+x-1)) - (r+x) ln((α+t_x) / (α+T)),
        # the log-odds of "dropped after t_x" against "alive at T"; s = expit(d) is its share.
        b_x_1 = np.where(self.repeat_frequencies, b + xs - 1, 1.0)
        log_a_over_b_x_1 = np.log(a) - np.log(b_x_1)
        r_x = r + self.repeat_x
        log_ratio = (
            np.log(alpha + self.recencies)[self.recency_index]
            - log_alpha_ages[self.repeat_age_index]
        )
        d = log_a_over_b_x_1[self.repeat_frequency_index] - r_x * log_ratio
        small = np.exp(-np.abs(d))  # in (0, 1]: softplus and expit without overflow
        softplus = np.maximum(d, 0.0) + np.log1p(small)
        share = np.where(d >= 0, 1.0, small) / (1.0 + small)
        weighted_share = w * share

        per_x = gammaln(r + xs) - gammaln(r) + r * np.log(alpha) + betaln(a, b + xs) - betaln(a, b)
        log_likelihood = fw @ per_x - weight_x_ages @ log_alpha_ages + _dot(w, softplus)

        digamma_ab = digamma(a + b)
        digamma_abx = digamma(a + b + xs)
        share_by_x = np.bincount(
            self.repeat_frequency_index, weights=weighted_share, minlength=len(xs)
        )
        inverse_ratio = (1.0 / (alpha + self.recencies))[self.recency_index] - inverse_alpha_ages[
            self.repeat_age_index
        ]
        d_r = (
            fw @ (digamma(r + xs) - digamma(r) + np.log(alpha))
            - self.weight_by_age @ log_alpha_ages
            - _dot(weighted_share, log_ratio)
        )
        d_alpha = (
            total * r / alpha
            - weight_x_ages @ inverse_alpha_ages
            - _dot(weighted_share * r_x, inverse_ratio)
        )
        d_a = fw @ (digamma_ab - digamma_abx) + share_by_x.sum() / a
        d_b = fw @ (
            digamma(b + xs) - digamma(b) + digamma_ab - digamma_abx
        ) - share_by_x @ np.where(self.repeat_frequencies, 1.0 / b_x_1, 0.0)
        params = np.array([r, alpha, a, b])
        gradient = np.array([d_r, d_alpha, d_a, d_b])
        value = -log_likelihood / total + self.penalizer * np.sum(params**2)
        # d/d(ln θ) = θ d/dθ
        log_gradient = params * (-gradient / total + 2 * self.penalizer * params)
        return float(value), log_gradient

    def to_params(self, log_params: np.ndarray) -> BgNbdParams:
        r, alpha, a, b = np.exp(log_params)
        return BgNbdParams(float(r), float(alpha / self.scale), float(a), float(b))

    def to_log_params(self, params: BgNbdParams) -> np.ndarray:
        return np.log([params.r, params.alpha * self.scale, params.a, params.b])


class GammaGammaObjective:
    """lifetimes' Gamma-Gamma objective on weighted (frequency, mean spend) rows.

    Per row, lnΓ(px+q) - lnΓ(px) - lnΓ(q) + q ln v + (px-1) ln m + px ln x - (px+q) ln(xm+v),
    rearranged without its large cancelling logarithms as

        lnΓ(px+q) - lnΓ(px) - lnΓ(q) - ln m - px ln(1 + v/(xm)) - q ln(1 + xm/v);

    the gamma functions depend on x only, so they are computed per distinct frequency.
    """

    def __init__(self, x, mean_value, weights, penalizer: float = 0.0):
        x, m = np.asarray(x, dtype=float), np.asarray(mean_value, dtype=float)
        weights = np.asarray(weights, dtype=float)
        self.penalizer = penalizer
        self.total_weight = weights.sum()
        self.frequencies, frequency_index = np.unique(x, return_inverse=True)
        self.frequency_weight = np.bincount(frequency_index, weights=weights)
        self.total_spend = x * m
        self.weights = weights
        self.weighted_x = weights * x
        self.weighted_spend = weights * self.total_spend
        self.weighted_log_m = _dot(weights, np.log(m))

    def value_and_gradient(self, log_params: np.ndarray) -> tuple[float, np.ndarray]:
        p, q, v = np.exp(log_params)
        xs, fw, total = self.frequencies, self.frequency_weight, self.total_weight
        xm = self.total_spend
        log_v_share = np.log1p(v / xm)  # ln((xm+v) / xm)
        log_xm_share = np.log1p(xm / v)  # ln((xm+v) / v)
        per_x = gammaln(p * xs + q) - gammaln(p * xs) - gammaln(q)
        log_likelihood = (
            fw @ per_x
            - self.weighted_log_m
            - p * _dot(self.weighted_x, log_v_share)
            - q * _dot(self.weights, log_xm_share)
        )
        digamma_pxq = digamma(p * xs + q)
        d_p = fw @ (xs * (digamma_pxq - digamma(p * xs))) - _dot(self.weighted_x, log_v_share)
        d_q = fw @ (digamma_pxq - digamma(q)) - _dot(self.weights, log_xm_share)
        inverse_total = 1.0 / (xm + v)
        d_v = q / v * _dot(self.weighted_spend, inverse_total) - p * _dot(
            self.weighted_x, inverse_total
        )
        params = np.array([p, q, v])
        gradient = np.array([d_p, d_q, d_v])
        value = -log_likelihood / total + self.penalizer * np.sum(params**2)
        log_gradient = params * (-gradient / total + 2 * self.penalizer * params)
        return float(value), log_gradient

    def to_params(self, log_params: np.ndarray) -> GammaGammaParams:
        return GammaGammaParams(*(float(v) for v in np.exp(log_params)))

    def to_log_params(self, params: GammaGammaParams) -> np.ndarray:
        return np.log([params.p, params.q, params.v])


# lifetimes starts every fit from exp(0.1) for each parameter (in its time scale).
COLD_START = 0.1
# Other starting points (log-parameters) tried when the search from the first one does not
# converge; the best converged fit wins.
OTHER_STARTS = (-1.0, 1.0, -2.5)
# L-BFGS-B runs until the largest gradient component of the mean negative log-likelihood
# (in log-parameters) is below SEARCH_GRADIENT_TOLERANCE or it can no longer decrease it.
SEARCH_GRADIENT_TOLERANCE = 1e-9
RESTARTS = 2
# Convergence is judged as numerical analysts do, whatever the optimiser's status text
# (SciPy's L-BFGS-B says ABNORMAL_TERMINATION_IN_LNSRCH when its line search can improve no
# further, which at a tiny gradient is an optimum reached to rounding precision):
# a fit has converged when the largest gradient component is below CONVERGED_GRADIENT
# (lifetimes' own criterion: its BFGS stops at 1e-7), or when it is below
# ACCEPTED_GRADIENT and the last iteration changed the objective by less than
# RELATIVE_CHANGE_TOLERANCE of its value. At 1e-4 on the mean negative log-likelihood
# of the log-parameters, the distance to the exact optimum is far inside the parameters'
# standard errors for any history the model can be fitted to.
CONVERGED_GRADIENT = 1e-7
ACCEPTED_GRADIENT = 1e-4
RELATIVE_CHANGE_TOLERANCE = 1e-10


def _search(objective, x: np.ndarray) -> tuple[np.ndarray, float, float, float, int, int, str]:
    """L-BFGS-B from `x`, restarted where it stopped while short of CONVERGED_GRADIENT.

    Returns (x, objective, largest gradient, last relative change, iterations,
    evaluations, the optimiser's message).
    """
    iterations = evaluations = 0
    values: list[float] = []

    def record(intermediate_result) -> None:  # SciPy passes the state by this name
        values.append(float(intermediate_result.fun))

    result = None
    gradient = float("inf")
    for _attempt in range(1 + RESTARTS):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            result = minimize(
                objective.value_and_gradient,
                x,
                jac=True,
                method="L-BFGS-B",
                callback=record,
                options={
                    "maxiter": 1000, "maxcor": 20, "ftol": 1e-15,
                    "gtol": SEARCH_GRADIENT_TOLERANCE,
                },
            )  # fmt: skip
        iterations, evaluations = iterations + int(result.nit), evaluations + int(result.nfev)
        finite = np.all(np.isfinite(result.x)) and np.all(np.isfinite(result.jac))
        gradient = float(np.max(np.abs(result.jac))) if finite else float("inf")
        if not finite:
            break
        x = result.x
        if gradient <= CONVERGED_GRADIENT:
            break
    values.append(float(result.fun))
    change = (
        abs(values[-2] - values[-1]) / max(abs(values[-1]), 1e-300)
        if len(values) > 1
        else float("inf")
    )
    return result.x, float(result.fun), gradient, change, iterations, evaluations, result.message


def _converged(value: float, gradient: float, change: float) -> bool:
    if not np.isfinite(value):
        return False
    return gradient <= CONVERGED_GRADIENT or (
        gradient <= ACCEPTED_GRADIENT and change <= RELATIVE_CHANGE_TOLERANCE
    )


def minimise(objective, start: np.ndarray | None, size: int) -> tuple[np.ndarray, FitOutcome]:
    """L-BFGS-B on the log-parameters from `start` (lifetimes' cold start when None).

    A search that stops short of CONVERGED_GRADIENT (a line search lost in rounding noise
    on a flat ridge, as Gamma-Gamma's p, q, v have) is restarted where it stopped with a
    fresh curvature memory, at most RESTARTS times; one that still has not converged (see
    CONVERGED_GRADIENT) is tried again from OTHER_STARTS in turn: the first converged fit is
    returned, else the best one found (marked not converged).
    """
    first = np.full(size, COLD_START) if start is None else np.asarray(start, dtype=float)
    iterations = evaluations = 0
    best = None
    for x in [first, *(np.full(size, s) for s in OTHER_STARTS)]:
        found = _search(objective, x)
        iterations, evaluations = iterations + found[4], evaluations + found[5]
        converged = _converged(found[1], found[2], found[3])
        if (
            best is None
            or (converged and not best[1])
            or (converged == best[1] and found[1] < best[0][1])
        ):
            best = (found, converged)
        if converged:
            break
    (x, value, gradient, change, _i, _e, message), converged = best
    outcome = FitOutcome(
        tuple(float(v) for v in np.exp(x)), value, converged, iterations, evaluations,
        f"{message} (largest gradient {gradient:.1e}, last relative change {change:.1e})",
    )  # fmt: skip
    return x, outcome


def fit_bgnbd(
    x, t_x, T, weights, penalizer: float = 0.0, start: BgNbdParams | None = None
) -> tuple[BgNbdParams, FitOutcome]:
    """Maximum-likelihood BG/NBD on weighted rows; `start` warm-starts from a previous fit."""
    objective = BgNbdObjective(x, t_x, T, weights, penalizer)
    initial = objective.to_log_params(start) if start is not None and start.is_valid() else None
    log_params, outcome = minimise(objective, initial, 4)
    return objective.to_params(log_params), outcome


def fit_gamma_gamma(
    x, mean_value, weights, penalizer: float = 0.0, start: GammaGammaParams | None = None
) -> tuple[GammaGammaParams, FitOutcome]:
    """Maximum-likelihood Gamma-Gamma on weighted repeat buyers (x > 0, mean spend > 0)."""
    objective = GammaGammaObjective(x, mean_value, weights, penalizer)
    initial = objective.to_log_params(start) if start is not None and start.is_valid() else None
    log_params, outcome = minimise(objective, initial, 3)
    return objective.to_params(log_params), outcome
