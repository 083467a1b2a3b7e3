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
from scipy.special import betaln, expit, gammaln

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
    jacobi_matrix = np.diag(diagonal) + np.diag(off_diagonal, 1) + np.diag(off_diagonal, -1)
    nodes, vectors = np.linalg.eigh(jacobi_matrix)
    weights = vectors[0] ** 2
    p = np.clip((nodes + 1) / 2, 1e-300, 1.0)
    return p, weights / weights.sum()


def expected_purchases_if_alive(params: BgNbdParams, t, x, T) -> np.ndarray:
    """E[purchases in (T, T+t] | alive at T, x, T], by quadrature over p."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x = np.asarray(x, dtype=float)
    T = np.broadcast_to(np.asarray(T, dtype=float), x.shape)
    t = np.broadcast_to(np.asarray(t, dtype=float), x.shape)
    result = np.empty(x.shape, dtype=float)
    # Customers with the same frequency share the posterior of p, hence the nodes.
    for frequency in np.unique(x):
        rows = x == frequency
        p, weights = _jacobi_nodes(a, b + frequency)
        scale = (t[rows] / (alpha + T[rows]))[:, None] * p[None, :]
        # 1 - (1 + s)^-(r+x) without cancellation, divided by p.
        integrand = -np.expm1(-(r + frequency) * np.log1p(scale)) / p[None, :]
        result[rows] = integrand @ weights
    return result


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
