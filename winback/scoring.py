"""Churn and value scoring: BG/NBD and Gamma-Gamma with lifetimes, for every customer.

The fits run on compressed data: customers with identical (frequency, recency, T) are
grouped in SQL and fitted once with lifetimes' `weights`, so the fit costs the same for a
thousand customers or ten million. Predictions use the stable forms in `winback.bgnbd` and
are computed and written (COPY) in chunks, so memory stays flat.

Every fit is recorded in `winback.model_fits` with its parameters, log-likelihood, data
window, time taken and a back-test. A fit that fails (no convergence, non-finite
parameters) keeps the previous model: scores are computed with it and marked stale with
the reason; with no previous model the run fails rather than write garbage.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd
import psycopg

from winback import bgnbd

log = logging.getLogger(__name__)

SUMMARY_TABLE = "marts.customer_order_summary"
ORDER_DAYS_TABLE = "intermediate.int_order_days"
DAYS_PER_UNIT = {"day": 1.0, "week": 7.0}
DAYS_PER_MONTH = 30.0

SCHEMA_DDL = """
create schema if not exists winback;
create table if not exists winback.model_fits (
    model_fit_id bigserial primary key,
    fitted_at timestamptz not null default now(),
    as_of_date date not null,
    model text not null check (model in ('bgnbd', 'gamma_gamma')),
    params jsonb,
    log_likelihood double precision,
    customers bigint not null,
    distinct_rows bigint not null,
    first_order_date date,
    last_order_date date,
    time_unit text not null,
    penalizer double precision not null,
    seconds double precision not null,
    converged boolean not null,
    message text,
    backtest jsonb
);
comment on table winback.model_fits is
    'One row per model fit: parameters, log-likelihood, data window, time, back-test.';
create table if not exists winback.customer_scores (
    customer_id text primary key,
    p_alive double precision,
    expected_purchases_30d double precision,
    expected_purchases_90d double precision,
    expected_purchases_365d double precision,
    expected_next_purchase_date date,
    expected_order_value numeric,
    clv numeric,
    churn_risk_band text,
    model_fit_id bigint,
    is_stale boolean not null default false,
    stale_reason text,
    as_of_date date,
    scored_at timestamptz
);
"""

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


class ScoringError(RuntimeError):
    pass


@dataclass(frozen=True)
class ScoringSettings:
    time_unit: str = "day"  # 'day' or 'week'; the same unit for fits and predictions
    bgnbd_penalizer: float = 0.001
    gamma_gamma_penalizer: float = 0.001
    clv_horizon_months: int = 12
    monthly_discount_rate: float = 0.01
    chunk_size: int = 250_000
    backtest_holdout_days: int = 180  # 0 switches the back-test off

    def __post_init__(self) -> None:
        if self.time_unit not in DAYS_PER_UNIT:
            raise ValueError(f"time_unit must be one of {sorted(DAYS_PER_UNIT)}")

    @property
    def days_per_unit(self) -> float:
        return DAYS_PER_UNIT[self.time_unit]


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
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


# --------------------------------------------------------------------------- reading


def read_compressed_summary(
    conn: psycopg.Connection, settings: ScoringSettings, summary_table: str = SUMMARY_TABLE
) -> pd.DataFrame:
    """(frequency, recency, T, customers) in the time unit: one row per distinct triple."""
    unit = settings.days_per_unit
    rows = conn.execute(
        f"""
        select repeat_purchase_days as frequency,
               recency_days / %(unit)s::float8 as recency,
               customer_age_days / %(unit)s::float8 as age,
               count(*) as customers
        from {summary_table}
        group by 1, 2, 3
        """,
        {"unit": unit},
    ).fetchall()
    return pd.DataFrame(rows, columns=["frequency", "recency", "T", "weight"]).astype(float)


def read_compressed_spend(
    conn: psycopg.Connection, summary_table: str = SUMMARY_TABLE
) -> pd.DataFrame:
    """(frequency, mean repeat spend, customers) of repeat buyers with positive spend."""
    rows = conn.execute(
        f"""
        select repeat_purchase_days as frequency,
               round(mean_repeat_order_value, 6) as monetary,
               count(*) as customers
        from {summary_table}
        where repeat_purchase_days > 0 and mean_repeat_order_value > 0
        group by 1, 2
        """
    ).fetchall()
    return pd.DataFrame(rows, columns=["frequency", "monetary", "weight"]).astype(float)


# --------------------------------------------------------------------------- fitting


def fit_bgnbd(data: pd.DataFrame, penalizer: float) -> tuple[bgnbd.BgNbdParams | None, FitResult]:
    """Fit BG/NBD with lifetimes on compressed rows; never raises on a failed fit."""
    from lifetimes import BetaGeoFitter

    started = time.perf_counter()
    customers = int(data["weight"].sum())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitter = BetaGeoFitter(penalizer_coef=penalizer)
            fitter.fit(data["frequency"], data["recency"], data["T"], weights=data["weight"])
        params = bgnbd.BgNbdParams(*(float(fitter.params_[k]) for k in ("r", "alpha", "a", "b")))
        if not params.is_valid():
            raise ScoringError(f"non-finite or non-positive parameters {params.as_dict()}")
        ll = float(
            (
                bgnbd.log_likelihood(params, data["frequency"], data["recency"], data["T"])
                * data["weight"]
            ).sum()
        )
        if not np.isfinite(ll):
            raise ScoringError("the log-likelihood is not finite")
        result = FitResult(
            "bgnbd", params.as_dict(), ll, customers, len(data),
            time.perf_counter() - started, True,
        )  # fmt: skip
        return params, result
    except Exception as error:  # noqa: BLE001 - any failure keeps the previous model
        message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        log.warning("BG/NBD fit failed: %s", message)
        return None, FitResult(
            "bgnbd", None, None, customers, len(data), time.perf_counter() - started, False,
            message,
        )  # fmt: skip


def fit_gamma_gamma(
    data: pd.DataFrame, penalizer: float
) -> tuple[bgnbd.GammaGammaParams | None, FitResult]:
    from lifetimes import GammaGammaFitter

    started = time.perf_counter()
    customers = int(data["weight"].sum())
    try:
        if len(data) < 3:
            raise ScoringError("fewer than three distinct repeat buyers to fit")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitter = GammaGammaFitter(penalizer_coef=penalizer)
            fitter.fit(data["frequency"], data["monetary"], weights=data["weight"])
        params = bgnbd.GammaGammaParams(*(float(fitter.params_[k]) for k in ("p", "q", "v")))
        if not params.is_valid():
            raise ScoringError(f"non-finite or non-positive parameters {params.as_dict()}")
        ll = float(
            (
                bgnbd.gamma_gamma_log_likelihood(params, data["frequency"], data["monetary"])
                * data["weight"]
            ).sum()
        )
        return params, FitResult(
            "gamma_gamma", params.as_dict(), ll, customers, len(data),
            time.perf_counter() - started, True,
        )  # fmt: skip
    except Exception as error:  # noqa: BLE001 - see fit_bgnbd
        message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        log.warning("Gamma-Gamma fit failed: %s", message)
        return None, FitResult(
            "gamma_gamma", None, None, customers, len(data), time.perf_counter() - started,
            False, message,
        )  # fmt: skip


# --------------------------------------------------------------------------- predicting


def churn_risk_band(p_alive: np.ndarray) -> np.ndarray:
    bands = np.full(p_alive.shape, CHURN_RISK_BANDS[-1][1], dtype=object)
    for threshold, name in reversed(CHURN_RISK_BANDS):
        bands[p_alive >= threshold] = name
    return bands


def predict(
    frame: pd.DataFrame,
    params: bgnbd.BgNbdParams,
    spend: bgnbd.GammaGammaParams | None,
    settings: ScoringSettings,
    as_of: date,
) -> pd.DataFrame:
    """Scores for a chunk of customers (frequency, recency, T in the time unit)."""
    unit = settings.days_per_unit
    x, t_x, T = frame["frequency"].to_numpy(), frame["recency"].to_numpy(), frame["T"].to_numpy()
    alive = bgnbd.p_alive(params, x, t_x, T)
    # What an alive customer will buy depends on (frequency, T) only, and customers share
    # far fewer pairs than they are: integrate once per pair, then spread back.
    pairs, inverse = np.unique(np.column_stack([x, T]), axis=0, return_inverse=True)
    inverse = inverse.ravel()

    def if_alive(horizon_units: float) -> np.ndarray:
        return bgnbd.expected_purchases_if_alive(params, horizon_units, pairs[:, 0], pairs[:, 1])[
            inverse
        ]

    out = pd.DataFrame({"customer_id": frame["customer_id"].to_numpy(), "p_alive": alive})
    for days in (30, 90, 365):
        out[f"expected_purchases_{days}d"] = alive * if_alive(days / unit)
    wait_units = bgnbd.median_time_to_next_purchase_if_alive(params, x, T)
    wait_days = np.minimum(np.round(wait_units * unit), 365 * 100).astype(int)
    out["expected_next_purchase_date"] = pd.Timestamp(as_of) + pd.to_timedelta(wait_days, unit="D")
    out["expected_next_purchase_date"] = out["expected_next_purchase_date"].dt.date
    if spend is not None:
        value = bgnbd.gamma_gamma_expected_value(spend, x, frame["monetary"].to_numpy())
    else:  # no spend model yet: each customer's own mean order value
        value = frame["average_order_value"].to_numpy(dtype=float)
    out["expected_order_value"] = np.round(value, 2)
    # CLV: expected purchases month by month, valued and discounted (lifetimes' method).
    clv = np.zeros(len(frame))
    previous = np.zeros(len(frame))
    for month in range(1, settings.clv_horizon_months + 1):
        cumulative = alive * if_alive(month * DAYS_PER_MONTH / unit)
        clv += (cumulative - previous) * value / (1 + settings.monthly_discount_rate) ** month
        previous = cumulative
    out["clv"] = np.round(clv, 2)
    out["churn_risk_band"] = churn_risk_band(alive)
    return out


# --------------------------------------------------------------------------- the stage


def _previous_fit(conn, model: str) -> tuple[int, dict] | None:
    row = conn.execute(
        "select model_fit_id, params from winback.model_fits where model = %s and converged"
        " order by fitted_at desc, model_fit_id desc limit 1",
        (model,),
    ).fetchone()
    return (row[0], row[1]) if row else None


def _record_fit(
    conn,
    fit: FitResult,
    as_of: date,
    settings: ScoringSettings,
    penalizer: float,
    window: tuple,
    backtest: dict | None = None,
) -> int:
    row = conn.execute(
        """
        insert into winback.model_fits
            (as_of_date, model, params, log_likelihood, customers, distinct_rows,
             first_order_date, last_order_date, time_unit, penalizer, seconds, converged,
             message, backtest)
        values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        returning model_fit_id
        """,
        (
            as_of, fit.model, json.dumps(fit.params) if fit.params else None, fit.log_likelihood,
            fit.customers, fit.distinct_rows, window[0], window[1], settings.time_unit,
            penalizer, fit.seconds, fit.converged, fit.message or None,
            json.dumps(backtest) if backtest else None,
        ),
    ).fetchone()  # fmt: skip
    return int(row[0])


def score_customers(
    conn: psycopg.Connection,
    as_of: date,
    settings: ScoringSettings | None = None,
    summary_table: str = SUMMARY_TABLE,
) -> ScoringResult:
    """Fit, record the fit, and replace `winback.customer_scores` for `as_of`."""
    settings = settings or ScoringSettings()
    started = time.perf_counter()
    conn.execute(SCHEMA_DDL)
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
    params, bgnbd_fit = fit_bgnbd(compressed, settings.bgnbd_penalizer)
    spend, spend_fit = fit_gamma_gamma(spend_data, settings.gamma_gamma_penalizer)
    timings["fit"], mark = time.perf_counter() - mark, time.perf_counter()

    backtest = None
    if params is not None and settings.backtest_holdout_days > 0:
        backtest = run_backtest(conn, as_of, settings)
        timings["back-test"], mark = time.perf_counter() - mark, time.perf_counter()
    bgnbd_fit.model_fit_id = _record_fit(
        conn, bgnbd_fit, as_of, settings, settings.bgnbd_penalizer, window, backtest
    )
    spend_fit.model_fit_id = _record_fit(
        conn, spend_fit, as_of, settings, settings.gamma_gamma_penalizer, window
    )

    stale_reasons = []
    model_fit_id = bgnbd_fit.model_fit_id
    is_stale = params is None  # scores from an older model than today's data
    if params is None:
        previous = _previous_fit(conn, "bgnbd")
        if previous is None:
            raise ScoringError(
                f"the BG/NBD fit failed ({bgnbd_fit.message}) and there is no previous model: "
                "no scores written"
            )
        model_fit_id, stored = previous
        params = bgnbd.BgNbdParams(**stored)
        stale_reasons.append(f"BG/NBD fit failed ({bgnbd_fit.message}); model {model_fit_id} kept")
    if spend is None:
        previous = _previous_fit(conn, "gamma_gamma")
        if previous is not None:
            spend = bgnbd.GammaGammaParams(**previous[1])
            stale_reasons.append(f"Gamma-Gamma fit failed; model {previous[0]} kept")
        else:
            stale_reasons.append("no Gamma-Gamma model: expected value is the own mean")
    stale_reason = "; ".join(stale_reasons) or None

    scored = _write_scores(
        conn, as_of, settings, params, spend, model_fit_id, is_stale, stale_reason, summary_table
    )
    timings["predict and write"] = time.perf_counter() - mark
    log.info(
        "scored %d customers with BG/NBD %s (LL %.1f) in %.1fs",
        scored, params.as_dict(), bgnbd_fit.log_likelihood or float("nan"),
        time.perf_counter() - started,
    )  # fmt: skip
    return ScoringResult(
        as_of, scored, bgnbd_fit, spend_fit, is_stale, stale_reason, backtest,
        time.perf_counter() - started, timings,
    )  # fmt: skip


def _write_scores(
    conn, as_of, settings, params, spend, model_fit_id, is_stale, stale_reason, summary_table
) -> int:
    """Replace the scores in one transaction: readers see the old or the new, never half."""
    unit = settings.days_per_unit
    # Constant per run: formatted once here, not a million times by to_csv.
    scored_at = pd.Timestamp.now(tz="UTC").isoformat()
    total = 0
    with conn.transaction():
        conn.execute("truncate winback.customer_scores")
        with conn.cursor(name="score_reader") as reader:
            reader.itersize = settings.chunk_size
            reader.execute(
                f"""
                select customer_id, repeat_purchase_days, recency_days / %(unit)s::float8,
                       customer_age_days / %(unit)s::float8, mean_repeat_order_value,
                       average_order_value
                from {summary_table} order by customer_id
                """,
                {"unit": unit},
            )
            while True:
                rows = reader.fetchmany(settings.chunk_size)
                if not rows:
                    break
                frame = pd.DataFrame(
                    rows,
                    columns=["customer_id", "frequency", "recency", "T", "monetary",
                             "average_order_value"],
                )  # fmt: skip
                for column in ("frequency", "recency", "T", "monetary", "average_order_value"):
                    frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
                scores = predict(frame, params, spend, settings, as_of)
                numeric = scores.select_dtypes("number").to_numpy(dtype=float)
                if not np.isfinite(numeric).all():
                    raise ScoringError("a prediction is not finite: refusing to write scores")
                scores["model_fit_id"] = model_fit_id
                scores["is_stale"] = is_stale
                scores["stale_reason"] = stale_reason
                scores["as_of_date"] = as_of.isoformat()
                scores["scored_at"] = scored_at
                statement = "copy winback.customer_scores ({}) from stdin (format csv)".format(
                    ", ".join(SCORE_COLUMNS)
                )
                # One CSV block per chunk: row-by-row write_row costs 7 s per million rows.
                with conn.cursor() as writer, writer.copy(statement) as copy:
                    copy.write(scores[SCORE_COLUMNS].to_csv(index=False, header=False))
                total += len(scores)
    return total


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


def result_summary(result: ScoringResult) -> dict:
    """What the Airflow task keeps as its return value."""
    return {
        "as_of": result.as_of.isoformat(),
        "customers_scored": result.customers_scored,
        "bgnbd": asdict(result.bgnbd),
        "gamma_gamma": asdict(result.gamma_gamma) if result.gamma_gamma else None,
        "is_stale": result.is_stale,
        "stale_reason": result.stale_reason,
        "backtest_total": {
            k: result.backtest.get(k)
            for k in ("actual_repeat_purchases", "predicted_repeat_purchases")
        }
        if result.backtest
        else None,
        "seconds": round(result.seconds, 2),
    }
