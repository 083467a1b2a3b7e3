"""Churn and value scoring: BG/NBD and Gamma-Gamma with lifetimes, for every customer.

The fits run on compressed data: customers with identical (frequency, recency, T) are
grouped in SQL and fitted once with lifetimes' `weights`, so the fit costs the same for a
thousand customers or ten million. Predictions use the stable forms in `winback.scoring.bgnbd` and
are computed and written (COPY) in chunks, so memory stays flat.

Every fit is recorded in `winback.model_fits` with its parameters, log-likelihood, data
window, time taken, a back-test and the settings it ran with. The two models succeed or
fail independently (docs/scoring.md):

* a BG/NBD fit that fails (no convergence, non-finite parameters) keeps the previous
  model: scores are computed with it and marked stale with the reason; with no previous
  model the run fails rather than write garbage;
* a Gamma-Gamma fit that fails or is unusable (q <= 1 has no finite population mean)
  falls back to `spend_fallback` (each customer's own mean order value by default) and
  never touches the BG/NBD scores;
* a BG/NBD fit that converged to a degenerate optimum (a or b at its bound, P(alive) at 1
  for nearly every repeat buyer) is flagged: the churn bands then come from each
  customer's own purchase rhythm (`churn_band_sql`), not from P(alive).

Settings (penalizers, time unit, fallbacks, degeneracy limits) are read from
`include/scoring.yaml` (`load_settings`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

from winback.scoring import bgnbd
from winback.warehouse import relations, tables
from winback.warehouse.copy import binary_copy_block, copy_out_columns

log = logging.getLogger(__name__)

SUMMARY_TABLE = relations.CUSTOMER_ORDER_SUMMARY
ORDER_DAYS_TABLE = relations.CUSTOMER_ORDER_DAYS
DAYS_PER_UNIT = {"day": 1.0, "week": 7.0}
DAYS_PER_MONTH = 30.0

SCORE_COLUMNS = [
    "customer_id",
    "p_alive",
    "expected_purchases_30d",
    "expected_purchases_90d",
    "expected_purchases_365d",
    "expected_next_purchase_date",
    "expected_order_value",
    "clv",
    "churn_risk_band",
    "model_fit_id",
    "is_stale",
    "stale_reason",
    "as_of_date",
    "scored_at",
]

# P(alive) bands, from the marketer's point of view: below 0.3 the customer is more
# likely gone than not, by a wide margin.
CHURN_RISK_BANDS = ((0.8, "low"), (0.5, "medium"), (0.3, "high"), (0.0, "very_high"))


# Own-gap bands (used when the BG/NBD fit is degenerate): days since the last purchase
# over the customer's usual gap between purchase days, the first ratio it stays below.
# Silent for twice the usual gap or more is `very_high`, never `low`.
OWN_GAP_BANDS = ((1.0, "low"), (1.5, "medium"), (2.0, "high"))

SPEND_FALLBACKS = ("own_mean", "previous_fit")
SETTINGS_ENV = "WINBACK_SCORING_CONFIG"


class ScoringError(RuntimeError):
    pass


@dataclass(frozen=True)
class ScoringSettings:
    """What a user may change about scoring; every field is documented in docs/scoring.md.

    No penalty by default: lifetimes' L2 penalty is on the raw parameters, and
    Gamma-Gamma's v is in the shop's currency, so one penalizer pulls a shop pricing in
    yen and one pricing in pounds to different models (on a UK retailer's log, 0.001 took
    v from 487 to 11 and q below 1). The published CDNOW fits are unpenalised.
    """

    time_unit: str = "day"  # 'day' or 'week'; the same unit for fits and predictions
    bgnbd_penalizer: float = 0.0
    gamma_gamma_penalizer: float = 0.0
    # A Gamma-Gamma fit that failed or has q <= 1: 'own_mean' (each customer's own mean
    # order value) or 'previous_fit' (the last usable fit; the own mean without one).
    spend_fallback: str = "own_mean"
    # A BG/NBD fit that does not converge is tried once more with this penalty before the
    # previous model is kept (0 switches the retry off). Without a penalty a and b may run
    # off to infinity together (a dropout probability the same for every customer); this
    # penalty cannot depend on the currency, as BG/NBD has no money in it, and lifetimes
    # measures alpha in units of the longest customer age.
    bgnbd_retry_penalizer: float = 0.001
    # A BG/NBD fit is degenerate when a or b is below `degenerate_parameter_bound`, or
    # when at least `degenerate_share` of repeat buyers have P(alive) >=
    # `degenerate_p_alive` (one-time buyers always have P(alive) = 1 in BG/NBD).
    degenerate_parameter_bound: float = 1e-6
    degenerate_p_alive: float = 0.999
    degenerate_share: float = 0.95
    # The usual gap of a customer with one purchase day, when no repeat buyer gives the
    # shop's median gap (own-gap bands only).
    default_gap_days: int = 90
    clv_horizon_months: int = 12
    monthly_discount_rate: float = 0.01
    chunk_size: int = 250_000
    backtest_holdout_days: int = 180  # 0 switches the back-test off
    # The back-test is a second fit and a pass over every purchase day: it runs when none
    # ran in the last `backtest_every_days` days up to the run date (1: every day), and
    # whenever the data moved, the customers fitted or a BG/NBD parameter changing by more
    # than `backtest_on_change` (a share) against the back-tested fit. Otherwise that
    # fit's back-test stands, and model_fits says which (`backtest_decision`).
    backtest_every_days: int = 7
    backtest_on_change: float = 0.1
    # Start each fit from the last converged one of the same time unit: same optimum,
    # fewer iterations (tests/test_scoring.py checks both starts agree).
    warm_start: bool = True

    def __post_init__(self) -> None:
        if self.time_unit not in DAYS_PER_UNIT:
            raise ValueError(f"time_unit must be one of {sorted(DAYS_PER_UNIT)}")
        if self.spend_fallback not in SPEND_FALLBACKS:
            raise ValueError(f"spend_fallback must be one of {list(SPEND_FALLBACKS)}")
        for name in ("bgnbd_penalizer", "gamma_gamma_penalizer", "bgnbd_retry_penalizer"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0 < self.degenerate_share <= 1 or not 0 < self.degenerate_p_alive <= 1:
            raise ValueError("degenerate_share and degenerate_p_alive must be in (0, 1]")
        if self.default_gap_days < 1:
            raise ValueError("default_gap_days must be >= 1")
        if self.backtest_every_days < 1:
            raise ValueError("backtest_every_days must be >= 1")
        if not self.backtest_on_change > 0:
            raise ValueError("backtest_on_change must be > 0")

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def days_per_unit(self) -> float:
        return DAYS_PER_UNIT[self.time_unit]


def load_settings(path: Path | str | None = None) -> ScoringSettings:
    """The scoring settings of `path`, `$WINBACK_SCORING_CONFIG` or `include/scoring.yaml`.

    A missing file means the defaults; an unknown key or a bad value is an error that
    names it (a typo must not silently score with the defaults).
    """
    import yaml

    from winback import config

    chosen = Path(path or os.environ.get(SETTINGS_ENV) or config.INCLUDE_DIR / "scoring.yaml")
    if not chosen.exists():
        if path or os.environ.get(SETTINGS_ENV):
            raise ScoringError(f"scoring settings file {chosen} does not exist")
        return ScoringSettings()
    values = yaml.safe_load(chosen.read_text()) or {}
    if not isinstance(values, dict):
        raise ScoringError(f"{chosen}: expected a mapping of setting: value")
    known = {f.name: f.type for f in fields(ScoringSettings)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ScoringError(f"{chosen}: unknown scoring settings {unknown}; known: {sorted(known)}")
    try:
        return ScoringSettings(**values)
    except (TypeError, ValueError) as error:
        raise ScoringError(f"{chosen}: {error}") from None


@dataclass
class FitResult:
    model: str
    params: dict | None
    log_likelihood: float | None
    customers: int
    distinct_rows: int
    seconds: float
    converged: bool
    message: str = ""
    model_fit_id: int | None = None
    iterations: int | None = None
    warm_start: bool = False  # started from the previous model's parameters
    warm_start_model_fit_id: int | None = None  # the fit it started from
    is_degenerate: bool = False
    degenerate_reason: str | None = None
    fallback: str | None = None  # what the scores used instead of this fit, if anything
    churn_band_source: str | None = None  # BG/NBD only: 'p_alive' or 'own_gap'


@dataclass
class ScoringResult:
    as_of: date
    customers_scored: int
    bgnbd: FitResult
    gamma_gamma: FitResult | None
    is_stale: bool
    stale_reason: str | None
    backtest: dict | None = None
    seconds: float = 0.0
    backtest_decision: BacktestDecision | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    churn_band_source: str = "p_alive"
    band_counts: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading


def read_compressed_summary(
    conn: psycopg.Connection, settings: ScoringSettings, summary_table: str = SUMMARY_TABLE
) -> pd.DataFrame:
    """One row per distinct (frequency, recency, T): the fit's input and the prediction grid.

    frequency, recency and T are in the time unit; recency_days and age_days are the
    warehouse's integer days, the key that customers are joined back on.
    """
    columns = copy_out_columns(
        conn,
        f"""
        select repeat_purchase_days::int4, recency_days::int4, customer_age_days::int4,
               count(*)::float8
        from {summary_table}
        group by 1, 2, 3
        """,
        {"frequency": ">i4", "recency_days": ">i4", "age_days": ">i4", "weight": ">f8"},
    )
    frame = pd.DataFrame(columns)
    frame["frequency"] = frame["frequency"].astype(float)
    unit = settings.days_per_unit
    frame["recency"] = frame["recency_days"] / unit
    frame["T"] = frame["age_days"] / unit
    return frame


def read_compressed_spend(
    conn: psycopg.Connection, summary_table: str = SUMMARY_TABLE
) -> pd.DataFrame:
    """(frequency, mean repeat spend, customers) of repeat buyers with positive spend."""
    columns = copy_out_columns(
        conn,
        f"""
        select repeat_purchase_days::float8,
               round(mean_repeat_order_value, 6)::float8,
               count(*)::float8
        from {summary_table}
        where repeat_purchase_days > 0 and mean_repeat_order_value > 0
        group by repeat_purchase_days, round(mean_repeat_order_value, 6)
        """,
        {"frequency": ">f8", "monetary": ">f8", "weight": ">f8"},
    )
    return pd.DataFrame(columns)


# --------------------------------------------------------------------------- fitting


def _failure_message(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def fit_bgnbd(
    data: pd.DataFrame, penalizer: float, start: bgnbd.BgNbdParams | None = None
) -> tuple[bgnbd.BgNbdParams | None, FitResult]:
    """Maximum-likelihood BG/NBD on compressed rows; never raises on a failed fit.

    `bgnbd.fit_bgnbd` minimises lifetimes' own objective (tests/test_bgnbd.py checks the
    two reach the same optimum) with exact gradients; `start`, the previous model, only
    shortens the way there.
    """
    started = time.perf_counter()
    customers = int(data["weight"].sum())
    stopped_at = None  # where a search that did not converge stopped, if it is finite
    try:
        frequency, recency, age, weight = (
            data[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T", "weight")
        )
        params, outcome = bgnbd.fit_bgnbd(frequency, recency, age, weight, penalizer, start)
        if not outcome.converged:
            if params.is_valid():
                stopped_at = params.as_dict()
            raise ScoringError(f"did not converge: {outcome.message}")
        if not params.is_valid():
            raise ScoringError(f"non-finite or non-positive parameters {params.as_dict()}")
        ll = float(bgnbd.log_likelihood(params, frequency, recency, age) @ weight)
        if not np.isfinite(ll):
            raise ScoringError("the log-likelihood is not finite")
        result = FitResult(
            "bgnbd", params.as_dict(), ll, customers, len(data),
            time.perf_counter() - started, True, iterations=outcome.iterations,
            warm_start=start is not None,
        )  # fmt: skip
        return params, result
    except Exception as error:  # noqa: BLE001 - any failure keeps the previous model
        message = _failure_message(error)
        log.warning("BG/NBD fit failed: %s", message)
        return None, FitResult(
            "bgnbd", stopped_at, None, customers, len(data), time.perf_counter() - started,
            False, message,
        )  # fmt: skip


def at_bound(fit: FitResult, settings: ScoringSettings) -> bgnbd.BgNbdParams | None:
    """The parameters of a search that ran into a bound (a or b towards 0), else None.

    Such a search cannot converge: the likelihood keeps rising, ever more slowly, as a
    or b shrinks, towards the limit where nobody drops out. Its parameters are that limit
    (usable for expected purchases), and the fit is flagged degenerate.
    """
    if fit.params is None or fit.converged:
        return None
    params = bgnbd.BgNbdParams(**fit.params)
    bound = settings.degenerate_parameter_bound
    return params if params.is_valid() and min(params.a, params.b) < bound else None


def fit_gamma_gamma(
    data: pd.DataFrame, penalizer: float, start: bgnbd.GammaGammaParams | None = None
) -> tuple[bgnbd.GammaGammaParams | None, FitResult]:
    """Maximum-likelihood Gamma-Gamma on (frequency, mean spend, customers) rows."""
    started = time.perf_counter()
    customers = int(data["weight"].sum())
    try:
        if len(data) < 3:
            raise ScoringError("fewer than three distinct repeat buyers to fit")
        frequency, monetary, weight = (
            data[c].to_numpy(dtype=float) for c in ("frequency", "monetary", "weight")
        )
        params, outcome = bgnbd.fit_gamma_gamma(frequency, monetary, weight, penalizer, start)
        if not outcome.converged:
            raise ScoringError(f"did not converge: {outcome.message}")
        if not params.is_valid():
            raise ScoringError(f"non-finite or non-positive parameters {params.as_dict()}")
        ll = float(bgnbd.gamma_gamma_log_likelihood(params, frequency, monetary) @ weight)
        return params, FitResult(
            "gamma_gamma", params.as_dict(), ll, customers, len(data),
            time.perf_counter() - started, True, iterations=outcome.iterations,
            warm_start=start is not None,
        )  # fmt: skip
    except Exception as error:  # noqa: BLE001 - see fit_bgnbd
        message = _failure_message(error)
        log.warning("Gamma-Gamma fit failed: %s", message)
        return None, FitResult(
            "gamma_gamma", None, None, customers, len(data), time.perf_counter() - started,
            False, message,
        )  # fmt: skip


# --------------------------------------------------------------------------- predicting


# The band of a P(alive), in SQL, from the thresholds above (the first that p reaches).
CHURN_RISK_BAND_SQL = (
    "case "
    + " ".join(
        f"when g.p_alive >= {threshold!r} then '{name}'" for threshold, name in CHURN_RISK_BANDS
    )
    + " end"
)


GRID_COLUMNS = [
    "triple_key",
    "p_alive",
    "expected_purchases_30d",
    "expected_purchases_90d",
    "expected_purchases_365d",
    "days_to_next_purchase",
    "discounted_purchases",
]


# Customers meet their grid row on one bigint, (frequency << 40) | (recency << 20) | age:
# PostgreSQL hashes the grid on a key it knows is unique. On the three columns it took
# them as independent, expected few matches, and at 10M customers hashed (or sorted) the
# customers' side instead, in batches spilled to disk.
KEY_BITS = 20
TRIPLE_KEY_SQL = (
    f"((s.repeat_purchase_days::bigint << {2 * KEY_BITS})"
    f" | (s.recency_days::bigint << {KEY_BITS}) | s.customer_age_days::bigint)"
)


def triple_key(frequency, recency_days, age_days) -> np.ndarray:
    """TRIPLE_KEY_SQL in numpy; refuses values the key cannot hold apart."""
    frequency, recency_days, age_days = (
        np.asarray(v, dtype=np.int64) for v in (frequency, recency_days, age_days)
    )
    limit = 1 << KEY_BITS
    for name, values, top in (
        ("frequency", frequency, 1 << (63 - 2 * KEY_BITS)),
        ("recency_days", recency_days, limit),
        ("age_days", age_days, limit),
    ):
        if len(values) and (values.min() < 0 or values.max() >= top):
            raise ScoringError(f"{name} outside [0, {top}): cannot key the scoring grid")
    return (frequency << (2 * KEY_BITS)) | (recency_days << KEY_BITS) | age_days


def predict_grid(
    grid: pd.DataFrame, params: bgnbd.BgNbdParams, settings: ScoringSettings
) -> pd.DataFrame:
    """What BG/NBD says about each distinct (frequency, recency, T) of the grid.

    Everything here depends on those three numbers only, so it is computed once per
    distinct triple, not once per customer. `discounted_purchases` is the expected
    number of purchases month by month over the CLV horizon, each month discounted
    (lifetimes' CLV method): CLV = discounted_purchases × expected order value.
    """
    unit = settings.days_per_unit
    x, t_x, T = (grid[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))
    alive = bgnbd.p_alive(params, x, t_x, T)
    # What an alive customer will buy depends on (frequency, T) only, and the grid has far
    # fewer pairs than triples: integrate once per pair and horizon, then spread back.
    frequency_days = grid["frequency"].to_numpy(dtype=np.int64)
    age_days = grid["age_days"].to_numpy(dtype=np.int64)
    pair_keys, first_row, inverse = np.unique(
        frequency_days * (int(age_days.max()) + 1) + age_days,
        return_index=True, return_inverse=True,
    )  # fmt: skip
    months = range(1, settings.clv_horizon_months + 1)
    horizon_days = [30, 90, 365, *(month * DAYS_PER_MONTH for month in months)]
    distinct_days, horizon_column = np.unique(horizon_days, return_inverse=True)
    if_alive = bgnbd.expected_purchases_if_alive_over_horizons(
        params, distinct_days / unit, x[first_row], T[first_row]
    )[inverse]
    expected = alive[:, None] * if_alive  # (triples, distinct horizons)

    out = pd.DataFrame(
        {
            "triple_key": triple_key(
                frequency_days, grid["recency_days"].to_numpy(dtype=np.int64), age_days
            ),
            "p_alive": alive,
        }
    )
    for days, column in zip((30, 90, 365), horizon_column[:3], strict=True):
        out[f"expected_purchases_{days}d"] = expected[:, column]
    wait_units = bgnbd.median_time_to_next_purchase_if_alive(params, x, T)
    out["days_to_next_purchase"] = np.minimum(np.round(wait_units * unit), 365 * 100).astype(int)
    discounted = np.zeros(len(grid))
    previous = np.zeros(len(grid))
    for month, column in zip(months, horizon_column[3:], strict=True):
        cumulative = expected[:, column]
        discounted += (cumulative - previous) / (1 + settings.monthly_discount_rate) ** month
        previous = cumulative
    out["discounted_purchases"] = discounted
    return out


# --------------------------------------------------------------------------- the stage


def _previous_fit(conn, model: str, time_unit: str | None = None) -> tuple[int, dict] | None:
    """The last converged, usable fit of `model` (of that time unit, when given)."""
    row = conn.execute(
        "select model_fit_id, params from winback.model_fits where model = %s and converged"
        " and fallback is null and (%s::text is null or time_unit = %s::text)"
        " order by fitted_at desc, model_fit_id desc limit 1",
        (model, time_unit, time_unit),
    ).fetchone()
    return (row[0], row[1]) if row else None


def _warm_starts(
    conn, settings: ScoringSettings
) -> tuple[tuple[bgnbd.BgNbdParams, int] | None, tuple[bgnbd.GammaGammaParams, int] | None]:
    """The previous usable fits to start from, with their ids (None: a cold start)."""
    if not settings.warm_start:
        return None, None
    previous_bgnbd = _previous_fit(conn, "bgnbd", settings.time_unit)
    previous_spend = _previous_fit(conn, "gamma_gamma")
    return (
        (bgnbd.BgNbdParams(**previous_bgnbd[1]), previous_bgnbd[0]) if previous_bgnbd else None,
        (bgnbd.GammaGammaParams(**previous_spend[1]), previous_spend[0])
        if previous_spend
        else None,
    )


@dataclass(frozen=True)
class BacktestDecision:
    """Whether today's fit is back-tested, why, and which fit's back-test stands for it
    (None until it is recorded, on a day it runs: then it is today's own)."""

    runs: bool
    reason: str
    standing_fit_id: int | None = None


def last_backtest(conn, as_of: date, settings: ScoringSettings) -> dict | None:
    """The latest back-tested BG/NBD fit up to `as_of` with today's time unit and holdout
    (its id, run date, customers and parameters), or None."""
    row = conn.execute(
        "select model_fit_id, as_of_date, customers, params from winback.model_fits"
        " where model = 'bgnbd' and backtest is not null and converged and time_unit = %s"
        " and as_of_date <= %s"
        " and (settings->>'backtest_holdout_days')::int = %s"
        " order by as_of_date desc, model_fit_id desc limit 1",
        (settings.time_unit, as_of, settings.backtest_holdout_days),
    ).fetchone()
    if row is None:
        return None
    return {"model_fit_id": row[0], "as_of_date": row[1], "customers": row[2], "params": row[3]}


def backtest_decision(
    last: dict | None,
    as_of: date,
    customers: int,
    params: bgnbd.BgNbdParams,
    settings: ScoringSettings,
) -> BacktestDecision:
    """Run the back-test today? Yes without an earlier one, when the last is
    `backtest_every_days` old or more, or when the customers or a parameter moved by more
    than `backtest_on_change` since; else the last one stands, and the reason says so."""
    if last is None:
        return BacktestDecision(True, "no earlier back-test")
    age = (as_of - last["as_of_date"]).days
    if age >= settings.backtest_every_days:
        return BacktestDecision(
            True, f"the last, of fit {last['model_fit_id']}, is {age} days old"
            f" (every {settings.backtest_every_days})",
        )  # fmt: skip
    limit = settings.backtest_on_change
    customer_change = abs(customers - last["customers"]) / max(last["customers"], 1)
    if customer_change > limit:
        return BacktestDecision(
            True, f"customers fitted changed {customer_change:.1%} since fit"
            f" {last['model_fit_id']} (> {limit:.0%})",
        )  # fmt: skip
    moved = {
        name: abs(value - last["params"][name]) / max(abs(last["params"][name]), 1e-12)
        for name, value in params.as_dict().items()
    }
    name, change = max(moved.items(), key=lambda item: item[1])
    if change > limit:
        return BacktestDecision(
            True, f"{name} moved {change:.1%} since fit {last['model_fit_id']} (> {limit:.0%})"
        )
    return BacktestDecision(
        False,
        f"the back-test of fit {last['model_fit_id']} ({last['as_of_date']}, {age} days ago)"
        f" stands: customers {customer_change:.1%} and parameters {change:.1%} apart"
        f" (<= {limit:.0%})",
        last["model_fit_id"],
    )


def _record_fit(
    conn,
    fit: FitResult,
    as_of: date,
    settings: ScoringSettings,
    penalizer: float,
    window: tuple,
    backtest: dict | None = None,
    decision: BacktestDecision | None = None,
) -> int:
    """Insert the fit into the registry; a fit back-tested today stands for itself."""
    row = conn.execute(
        """
        insert into winback.model_fits
            (as_of_date, model, params, log_likelihood, customers, distinct_rows,
             first_order_date, last_order_date, time_unit, penalizer, seconds, converged,
             message, backtest, settings, is_degenerate, degenerate_reason, fallback,
             churn_band_source, warm_start_model_fit_id, backtest_model_fit_id,
             backtest_reason)
        values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                %s, %s, %s)
        returning model_fit_id
        """,
        (
            as_of, fit.model, json.dumps(fit.params) if fit.params else None, fit.log_likelihood,
            fit.customers, fit.distinct_rows, window[0], window[1], settings.time_unit,
            penalizer, fit.seconds, fit.converged, fit.message or None,
            json.dumps(backtest) if backtest else None, json.dumps(settings.as_dict()),
            fit.is_degenerate, fit.degenerate_reason, fit.fallback, fit.churn_band_source,
            fit.warm_start_model_fit_id, decision.standing_fit_id if decision else None,
            decision.reason if decision else None,
        ),
    ).fetchone()  # fmt: skip
    if backtest is not None:
        conn.execute(
            "update winback.model_fits set backtest_model_fit_id = model_fit_id"
            " where model_fit_id = %s",
            (row[0],),
        )
    return int(row[0])


def degeneracy(
    params: bgnbd.BgNbdParams, grid: pd.DataFrame, settings: ScoringSettings
) -> str | None:
    """Why a converged BG/NBD fit says nothing about churn, or None when it does.

    A dropout probability (a / (a + b)) pinned at a bound, or P(alive) at ~1 for nearly
    every repeat buyer, leaves every customer in the `low` band however long they have
    been silent: the fit is flagged and the bands come from the own-gap rule instead.
    One-time buyers are left out of the share: BG/NBD gives them P(alive) = 1 always.
    """
    reasons = []
    bound = settings.degenerate_parameter_bound
    at_bound = [f"{name} = {value:.3g}" for name, value in (("a", params.a), ("b", params.b))
                if value < bound]  # fmt: skip
    if at_bound:
        reasons.append(f"{' and '.join(at_bound)} at the bound (< {bound:g})")
    repeat = grid[grid["frequency"] > 0]
    if len(repeat):
        alive = bgnbd.p_alive(
            params, *(repeat[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))
        )
        weight = repeat["weight"].to_numpy(dtype=float)
        share = float(weight[alive >= settings.degenerate_p_alive].sum() / weight.sum())
        if share >= settings.degenerate_share:
            reasons.append(
                f"P(alive) >= {settings.degenerate_p_alive:g} for {share:.1%} of repeat buyers"
            )
    return "; ".join(reasons) or None


def shop_usual_gap_days(grid: pd.DataFrame, settings: ScoringSettings) -> float:
    """The median (over repeat buyers) of each one's mean gap between purchase days: the
    usual gap given to customers with one purchase day under the own-gap bands."""
    repeat = grid[grid["frequency"] > 0]
    if repeat.empty:
        return float(settings.default_gap_days)
    gaps = (repeat["recency_days"] / repeat["frequency"]).to_numpy(dtype=float)
    order = np.argsort(gaps, kind="stable")
    cumulative = np.cumsum(repeat["weight"].to_numpy(dtype=float)[order])
    median = gaps[order][np.searchsorted(cumulative, cumulative[-1] / 2)]
    return max(float(median), 1.0)


def churn_band_sql(source: str) -> str:
    """The SQL of a customer's churn band: from P(alive), or from their own rhythm.

    Own gap: days since the last purchase (T - recency) over the customer's usual gap
    (their mean gap between purchase days, recency / repeat purchase days; the shop's
    usual gap, %(shop_gap_days)s, for one purchase day), banded by OWN_GAP_BANDS.
    """
    if source == "p_alive":
        return CHURN_RISK_BAND_SQL
    usual_gap = (
        "greatest(case when s.repeat_purchase_days > 0 then"
        " s.recency_days::float8 / s.repeat_purchase_days"
        " else %(shop_gap_days)s::float8 end, 1)"
    )
    silence = "(s.customer_age_days - s.recency_days)::float8"
    whens = " ".join(
        f"when {silence} < {ratio!r} * {usual_gap} then '{name}'" for ratio, name in OWN_GAP_BANDS
    )
    return f"case {whens} else 'very_high' end"


def score_customers(
    conn: psycopg.Connection,
    as_of: date,
    settings: ScoringSettings | None = None,
    summary_table: str = SUMMARY_TABLE,
) -> ScoringResult:
    """Fit, record the fit, and replace `winback.customer_scores` for `as_of`."""
    settings = settings or ScoringSettings()
    started = time.perf_counter()
    tables.ensure_schema(conn)
    window = conn.execute(
        f"select min(first_order_date), max(last_order_date) from {summary_table}"
    ).fetchone()

    timings: dict[str, float] = {}
    mark = time.perf_counter()
    compressed = read_compressed_summary(conn, settings, summary_table)
    if compressed.empty:
        raise ScoringError(f"{summary_table} is empty: no customer has a completed order")
    spend_data = read_compressed_spend(conn, summary_table)
    timings["read compressed"], mark = time.perf_counter() - mark, time.perf_counter()
    bgnbd_warm, spend_warm = _warm_starts(conn, settings)
    bgnbd_start = bgnbd_warm[0] if bgnbd_warm else None
    spend_start = spend_warm[0] if spend_warm else None
    bgnbd_penalizer = settings.bgnbd_penalizer
    params, bgnbd_fit = fit_bgnbd(compressed, bgnbd_penalizer, start=bgnbd_start)
    params = params or at_bound(bgnbd_fit, settings)
    retry = settings.bgnbd_retry_penalizer
    if params is None and retry > 0 and retry != bgnbd_penalizer:
        first_message = bgnbd_fit.message
        params, bgnbd_fit = fit_bgnbd(compressed, retry, start=bgnbd_start)
        bgnbd_penalizer = retry
        bgnbd_fit.message = (
            f"with penalizer {settings.bgnbd_penalizer:g}: {first_message}; refitted with "
            f"penalizer {retry:g}" + (f": {bgnbd_fit.message}" if bgnbd_fit.message else "")
        )
        params = params or at_bound(bgnbd_fit, settings)
    spend, spend_fit = fit_gamma_gamma(
        spend_data, settings.gamma_gamma_penalizer, start=spend_start
    )
    if bgnbd_fit.warm_start:
        bgnbd_fit.warm_start_model_fit_id = bgnbd_warm[1]
    if spend_fit.warm_start:
        spend_fit.warm_start_model_fit_id = spend_warm[1]
    timings["fit"], mark = time.perf_counter() - mark, time.perf_counter()

    backtest = decision = None
    if params is not None and settings.backtest_holdout_days > 0:
        decision = backtest_decision(
            last_backtest(conn, as_of, settings), as_of, bgnbd_fit.customers, params, settings
        )
        log.info("back-test %s: %s", "runs" if decision.runs else "skipped", decision.reason)
        if decision.runs:
            backtest = run_backtest(conn, as_of, settings)
            timings["back-test"], mark = time.perf_counter() - mark, time.perf_counter()

    stale_reasons = []
    is_stale = params is None  # scores from an older model than today's data
    if params is None:
        previous = _previous_fit(conn, "bgnbd")
        if previous is None:
            _record_fit(conn, bgnbd_fit, as_of, settings, bgnbd_penalizer, window)
            raise ScoringError(
                f"the BG/NBD fit failed ({bgnbd_fit.message}) and there is no previous model: "
                "no scores written"
            )
        kept_fit_id, stored = previous
        params = bgnbd.BgNbdParams(**stored)
        bgnbd_fit.fallback = f"previous_fit {kept_fit_id}"
        stale_reasons.append(f"BG/NBD fit failed ({bgnbd_fit.message}); model {kept_fit_id} kept")
    bgnbd_fit.degenerate_reason = degeneracy(params, compressed, settings)
    bgnbd_fit.is_degenerate = bgnbd_fit.degenerate_reason is not None
    bgnbd_fit.churn_band_source = "own_gap" if bgnbd_fit.is_degenerate else "p_alive"
    if bgnbd_fit.is_degenerate:
        log.warning(
            "BG/NBD fit is degenerate (%s): churn bands come from each customer's own gap",
            bgnbd_fit.degenerate_reason,
        )

    # The monetary model stands alone: failed or unusable, it falls back without touching
    # the BG/NBD scores.
    if spend is not None and not np.isfinite(spend.population_mean()):
        spend_fit.message = f"q = {spend.q:.4g} <= 1: no finite population mean spend; not used" + (
            f" ({spend_fit.message})" if spend_fit.message else ""
        )
        spend = None
    if spend is None:
        previous = (
            _previous_fit(conn, "gamma_gamma")
            if settings.spend_fallback == "previous_fit"
            else None
        )
        if previous is not None:
            spend = bgnbd.GammaGammaParams(**previous[1])
            spend_fit.fallback = f"previous_fit {previous[0]}"
            stale_reasons.append(f"Gamma-Gamma not usable; model {previous[0]} kept")
        else:
            spend_fit.fallback = "own_mean"
            stale_reasons.append(
                f"Gamma-Gamma not usable ({spend_fit.message}): expected value is the own mean"
            )
    stale_reason = "; ".join(stale_reasons) or None

    bgnbd_fit.model_fit_id = _record_fit(
        conn, bgnbd_fit, as_of, settings, bgnbd_penalizer, window, backtest, decision
    )
    spend_fit.model_fit_id = _record_fit(
        conn, spend_fit, as_of, settings, settings.gamma_gamma_penalizer, window
    )
    model_fit_id = bgnbd_fit.model_fit_id
    if bgnbd_fit.fallback:
        model_fit_id = int(bgnbd_fit.fallback.split()[-1])

    scored = _write_scores(
        conn, as_of, settings, compressed, params, spend, model_fit_id, is_stale, stale_reason,
        summary_table, timings, bgnbd_fit.churn_band_source,
    )  # fmt: skip
    band_counts = dict(
        conn.execute(
            "select churn_risk_band, count(*) from winback.customer_scores group by 1 order by 1"
        ).fetchall()
    )
    log.info(
        "scored %d customers with BG/NBD %s (LL %.1f) in %.1fs; bands %s from %s",
        scored, params.as_dict(), bgnbd_fit.log_likelihood or float("nan"),
        time.perf_counter() - started, band_counts, bgnbd_fit.churn_band_source,
    )  # fmt: skip
    return ScoringResult(
        as_of, scored, bgnbd_fit, spend_fit, is_stale, stale_reason, backtest,
        time.perf_counter() - started, decision, timings, bgnbd_fit.churn_band_source,
        band_counts,
    )  # fmt: skip


GRID_DDL = """
drop table if exists scoring_grid;
create temporary table scoring_grid (
    triple_key bigint not null,
    p_alive double precision not null,
    expected_purchases_30d double precision not null,
    expected_purchases_90d double precision not null,
    expected_purchases_365d double precision not null,
    days_to_next_purchase integer not null,
    discounted_purchases double precision not null
) on commit drop
"""

# Every grid column is fixed-width, so a chunk becomes PostgreSQL's binary COPY format with
# one numpy structured array: formatting doubles as CSV text cost more than predicting them.
GRID_COLUMN_TYPES = {
    "triple_key": ">i8",
    "p_alive": ">f8",
    "expected_purchases_30d": ">f8",
    "expected_purchases_90d": ">f8",
    "expected_purchases_365d": ">f8",
    "days_to_next_purchase": ">i4",
    "discounted_purchases": ">f8",
}


# Gamma-Gamma's expected spend per order (bgnbd.gamma_gamma_expected_value), per customer in
# SQL: repeat buyers get (v + m·x)·p / (p·x + q - 1), the others the population mean
# p·v / (q - 1). Without a spend model, each customer's own mean order value. In double
# precision: numeric arithmetic on a million rows cost seconds; the two money columns are
# rounded to cents and become numeric once, at the end.
ORDER_VALUE_SQL = """
case
    when not %(has_spend_model)s then s.average_order_value::float8
    when s.repeat_purchase_days > 0 then
        (%(v)s + coalesce(s.mean_repeat_order_value::float8, 0) * s.repeat_purchase_days)
        * %(p)s / greatest(%(p)s * s.repeat_purchase_days + %(q)s - 1, 1e-9)
    else %(population_mean)s
end
"""


# The name PostgreSQL gives the primary key of winback.customer_scores (warehouse.tables).
SCORES_KEY = "customer_scores_pkey"


def _cents(expression: str) -> str:
    """A double precision amount rounded to whole cents, as numeric with two decimals.

    Through bigint: PostgreSQL turns a double into numeric by printing and parsing it,
    an integer directly, and one numeric multiplication by 0.01 is cheap.
    """
    return f"(round(({expression}) * 100)::bigint * 0.01)"


def _write_scores(
    conn, as_of, settings, grid, params, spend, model_fit_id, is_stale, stale_reason,
    summary_table, timings, band_source="p_alive",
) -> int:  # fmt: skip
    """Replace the scores in one transaction: readers see the old or the new, never half.

    Python predicts the distinct (frequency, recency, T) grid only and COPYs it, chunk by
    chunk, into a temporary table; PostgreSQL joins every customer to their grid row and
    writes `customer_scores` itself, so no per-customer row crosses the connection.
    """
    if spend is not None and not np.isfinite(spend.population_mean()):
        raise ScoringError(  # score_customers never passes one: a guard for other callers
            f"Gamma-Gamma q = {spend.q:.4g} <= 1 has no finite population mean"
        )
    total_rows = len(grid)
    mark = time.perf_counter()
    with conn.transaction():
        conn.execute(GRID_DDL)
        statement = "copy scoring_grid ({}) from stdin (format binary)".format(
            ", ".join(GRID_COLUMNS)
        )
        for start in range(0, total_rows, settings.chunk_size):
            predicted = predict_grid(grid.iloc[start : start + settings.chunk_size], params,
                                     settings)  # fmt: skip
            numeric = predicted[GRID_COLUMNS].to_numpy(dtype=float)
            if not np.isfinite(numeric).all():
                raise ScoringError("a prediction is not finite: refusing to write scores")
            with conn.cursor() as writer, writer.copy(statement) as copy:
                copy.write(binary_copy_block(predicted, GRID_COLUMN_TYPES))
        conn.execute("analyze scoring_grid")  # its size and unique key, for the join's plan
        timings["predict and copy grid"], mark = time.perf_counter() - mark, time.perf_counter()
        # TRUNCATE gives the table a new file in this transaction, so with wal_level minimal
        # PostgreSQL writes it without WAL; the primary key is dropped first and rebuilt from
        # the finished table (one sort) instead of taking a million single insertions.
        conn.execute("truncate winback.customer_scores")
        conn.execute(f"alter table winback.customer_scores drop constraint if exists {SCORES_KEY}")
        # Hash the grid (see TRIPLE_KEY_SQL): never sort every customer for a merge join.
        merge_join_setting = conn.execute("show enable_mergejoin").fetchone()[0]
        conn.execute("set local enable_mergejoin = off")
        spend_params = spend.as_dict() if spend is not None else {"p": 1.0, "q": 2.0, "v": 1.0}
        written = conn.execute(
            f"""
            insert into winback.customer_scores ({", ".join(SCORE_COLUMNS)})
            select s.customer_id, g.p_alive, g.expected_purchases_30d,
                   g.expected_purchases_90d, g.expected_purchases_365d,
                   %(as_of)s::date + g.days_to_next_purchase,
                   {_cents("v.order_value")},
                   {_cents("g.discounted_purchases * v.order_value")},
                   {churn_band_sql(band_source)}, %(model_fit_id)s, %(is_stale)s, %(stale_reason)s,
                   %(as_of)s::date, now()
            from {summary_table} s
            join scoring_grid g on g.triple_key = {TRIPLE_KEY_SQL}
            cross join lateral (select {ORDER_VALUE_SQL} as order_value) v
            """,
            {
                "as_of": as_of,
                "model_fit_id": model_fit_id,
                "is_stale": is_stale,
                "stale_reason": stale_reason,
                "has_spend_model": spend is not None,
                "shop_gap_days": shop_usual_gap_days(grid, settings),
                "population_mean": spend.population_mean() if spend is not None else 0.0,
                **spend_params,
            },
        ).rowcount
        conn.execute(
            f"alter table winback.customer_scores add constraint {SCORES_KEY}"
            " primary key (customer_id)"
        )
        # SET LOCAL lasts until the caller's transaction ends: give its later queries theirs.
        conn.execute("select set_config('enable_mergejoin', %s, true)", (merge_join_setting,))
        customers = int(grid["weight"].sum())
        if written != customers:
            raise ScoringError(f"wrote {written} scores for {customers} customers")
        # With a spend model every customer has an order value (ORDER_VALUE_SQL); without
        # one it is their own average, which the summary may lack.
        missing_value = (
            spend is None
            and conn.execute(
                "select count(*) from winback.customer_scores where clv is null"
            ).fetchone()[0]
        )
        if missing_value:
            raise ScoringError(f"{missing_value} customers have no order value to price CLV")
        conn.execute("drop table scoring_grid")
    timings["write customer scores"] = time.perf_counter() - mark
    return written


# --------------------------------------------------------------------------- back-test


def run_backtest(
    conn: psycopg.Connection,
    as_of: date,
    settings: ScoringSettings,
    order_days_table: str = ORDER_DAYS_TABLE,
) -> dict | None:
    """Fit on purchases before as_of - holdout, predict the holdout's repeat purchases.

    Returns predicted versus actual repeat purchase days in the holdout, in total and by
    number of repeat purchases in the calibration period (0, 1, ..., 7+).
    """
    holdout_days = settings.backtest_holdout_days
    cutoff = as_of - timedelta(days=holdout_days)
    unit = settings.days_per_unit
    rows = conn.execute(
        f"""
        with calibration as (
            select customer_id,
                   count(*) filter (where order_date <= %(cutoff)s) - 1 as frequency,
                   max(order_date) filter (where order_date <= %(cutoff)s)
                       - min(order_date) as recency_days,
                   %(cutoff)s::date - min(order_date) as age_days,
                   count(*) filter (where order_date > %(cutoff)s and order_date <= %(as_of)s)
                       as holdout_days
            from {order_days_table}
            group by customer_id
            having min(order_date) <= %(cutoff)s
        )
        select frequency, recency_days / %(unit)s::float8, age_days / %(unit)s::float8,
               count(*), sum(holdout_days)
        from calibration group by 1, 2, 3
        """,
        {"cutoff": cutoff, "as_of": as_of, "unit": unit},
    ).fetchall()
    if not rows:
        return None
    data = pd.DataFrame(rows, columns=["frequency", "recency", "T", "weight", "actual"]).astype(
        float
    )
    params, fit = fit_bgnbd(data, settings.bgnbd_penalizer)
    if params is None and settings.bgnbd_retry_penalizer > 0:  # as score_customers does
        params, fit = fit_bgnbd(data, settings.bgnbd_retry_penalizer)
    if params is None:
        return {"calibration_end": cutoff.isoformat(), "error": fit.message}
    predicted = bgnbd.conditional_expected_purchases(
        params, holdout_days / unit, data["frequency"], data["recency"], data["T"]
    )
    data["predicted"] = predicted * data["weight"]
    data["bucket"] = np.minimum(data["frequency"], 7).astype(int)
    by_bucket = data.groupby("bucket").agg(
        customers=("weight", "sum"), actual=("actual", "sum"), predicted=("predicted", "sum")
    )
    return {
        "calibration_end": cutoff.isoformat(),
        "holdout_end": as_of.isoformat(),
        "params": params.as_dict(),
        "customers": int(data["weight"].sum()),
        "actual_repeat_purchases": float(data["actual"].sum()),
        "predicted_repeat_purchases": round(float(data["predicted"].sum()), 2),
        "by_calibration_repeat_purchases": [
            {
                "repeat_purchases": f"{bucket}+" if bucket == 7 else str(bucket),
                "customers": int(row.customers),
                "actual": float(row.actual),
                "predicted": round(float(row.predicted), 2),
            }
            for bucket, row in by_bucket.iterrows()
        ],
    }


def fit_alert(result: ScoringResult) -> str | None:
    """What a person should know about today's fits (degenerate, fallen back), or None."""
    lines = []
    if result.bgnbd.is_degenerate:
        lines.append(
            f"BG/NBD fit {result.bgnbd.model_fit_id} is degenerate "
            f"({result.bgnbd.degenerate_reason}); churn bands come from each customer's "
            "own gap between purchases"
        )
    for fit in (result.bgnbd, result.gamma_gamma):
        if fit is not None and fit.fallback:
            lines.append(
                f"{fit.model} fit {fit.model_fit_id} not used ({fit.message}): "
                f"scores use {fit.fallback}"
            )
    return "\n".join(lines) or None


def result_summary(result: ScoringResult) -> dict:
    """What the Airflow task keeps as its return value."""
    return {
        "as_of": result.as_of.isoformat(),
        "customers_scored": result.customers_scored,
        "bgnbd": asdict(result.bgnbd),
        "gamma_gamma": asdict(result.gamma_gamma) if result.gamma_gamma else None,
        "is_stale": result.is_stale,
        "stale_reason": result.stale_reason,
        "churn_band_source": result.churn_band_source,
        "band_counts": result.band_counts,
        "backtest": asdict(result.backtest_decision) if result.backtest_decision else None,
        "backtest_total": {
            k: result.backtest.get(k)
            for k in ("actual_repeat_purchases", "predicted_repeat_purchases")
        }
        if result.backtest
        else None,
        "seconds": round(result.seconds, 2),
        # Where the seconds went (read, fit, back-test, write): bench_daily's score stage.
        "timings": {stage: round(seconds, 2) for stage, seconds in result.timings.items()},
    }
