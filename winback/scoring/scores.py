"""Churn and value scoring: BG/NBD and Gamma-Gamma with lifetimes, for every customer.

The fits run on compressed data: customers with identical (frequency, recency, T) are
grouped in SQL and fitted once with lifetimes' `weights`, so the fit costs the same for a
thousand customers or ten million. Predictions use the stable forms in `winback.scoring.bgnbd` and
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
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta

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
    # Start each fit from the last converged one of the same time unit: same optimum,
    # fewer iterations (tests/test_scoring.py checks both starts agree).
    warm_start: bool = True

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
    iterations: int | None = None
    warm_start: bool = False  # started from the previous model's parameters


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
    try:
        frequency, recency, age, weight = (
            data[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T", "weight")
        )
        params, outcome = bgnbd.fit_bgnbd(frequency, recency, age, weight, penalizer, start)
        if not outcome.converged:
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
            "bgnbd", None, None, customers, len(data), time.perf_counter() - started, False,
            message,
        )  # fmt: skip


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
    """The last converged fit of `model` (of that time unit, when given)."""
    row = conn.execute(
        "select model_fit_id, params from winback.model_fits where model = %s and converged"
        " and (%s::text is null or time_unit = %s::text)"
        " order by fitted_at desc, model_fit_id desc limit 1",
        (model, time_unit, time_unit),
    ).fetchone()
    return (row[0], row[1]) if row else None


def _warm_starts(
    conn, settings: ScoringSettings
) -> tuple[bgnbd.BgNbdParams | None, bgnbd.GammaGammaParams | None]:
    if not settings.warm_start:
        return None, None
    previous_bgnbd = _previous_fit(conn, "bgnbd", settings.time_unit)
    previous_spend = _previous_fit(conn, "gamma_gamma")
    return (
        bgnbd.BgNbdParams(**previous_bgnbd[1]) if previous_bgnbd else None,
        bgnbd.GammaGammaParams(**previous_spend[1]) if previous_spend else None,
    )


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
    bgnbd_start, spend_start = _warm_starts(conn, settings)
    params, bgnbd_fit = fit_bgnbd(compressed, settings.bgnbd_penalizer, start=bgnbd_start)
    spend, spend_fit = fit_gamma_gamma(
        spend_data, settings.gamma_gamma_penalizer, start=spend_start
    )
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
        conn, as_of, settings, compressed, params, spend, model_fit_id, is_stale, stale_reason,
        summary_table, timings,
    )  # fmt: skip
    log.info(
        "scored %d customers with BG/NBD %s (LL %.1f) in %.1fs",
        scored, params.as_dict(), bgnbd_fit.log_likelihood or float("nan"),
        time.perf_counter() - started,
    )  # fmt: skip
    return ScoringResult(
        as_of, scored, bgnbd_fit, spend_fit, is_stale, stale_reason, backtest,
        time.perf_counter() - started, timings,
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
    summary_table, timings,
) -> int:  # fmt: skip
    """Replace the scores in one transaction: readers see the old or the new, never half.

    Python predicts the distinct (frequency, recency, T) grid only and COPYs it, chunk by
    chunk, into a temporary table; PostgreSQL joins every customer to their grid row and
    writes `customer_scores` itself, so no per-customer row crosses the connection.
    """
    if spend is not None and not np.isfinite(spend.population_mean()):
        raise ScoringError(
            f"Gamma-Gamma q = {spend.q:.4g} <= 1 has no finite population mean: "
            "refusing to write scores"
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
                   {CHURN_RISK_BAND_SQL}, %(model_fit_id)s, %(is_stale)s, %(stale_reason)s,
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
