"""Benchmark: winback's scoring stage, naive lifetimes and pymc-marketing, side by side.

    make bench-scoring BENCH_ARGS="--customers 1000000"   # all three (.venv-bench)
    .venv/bin/python bench/bench_scoring.py --customers 1000000   # without pymc-marketing

1. Synthetic customers are drawn from a BG/NBD process (integer days, as the warehouse
   counts them) and written to a summary table in the warehouse.
2. `winback`: `scoring.score_customers` end to end — compression in SQL read by binary
   COPY, weighted maximum-likelihood fits with exact gradients (`winback.scoring.bgnbd`, the same
   objectives as lifetimes'), stable vectorised predictions of each distinct
   (frequency, recency, T), binary COPY of that grid in chunks, and one INSERT ... SELECT
   joining every customer to it into winback.customer_scores (primary key rebuilt after).
   Its fits start cold, from lifetimes' starting point, unless --warm-start: a daily run
   starts from yesterday's model, which only shortens the fit.
3. `naive lifetimes`: every row read into pandas, BetaGeoFitter and GammaGammaFitter fit on
   every row, then lifetimes' own p_alive, expected purchases (30/90/365 days) and CLV,
   kept in memory: it writes nothing back, so the ratio flatters it.
4. `pymc-marketing` (when it imports; `make bench-scoring` builds .venv-bench with it,
   the project's .venv never has it): every row read into pandas, BetaGeoModel with its
   default priors fit by MAP (`fit(method="map")`, pymc.find_MAP), then its own p_alive and
   expected purchases (30/90/365 days) for every customer, kept in memory. It has no
   spend model in this comparison (no Gamma-Gamma, no CLV), so its ratio flatters it too.
Each runs in its own process, so its peak memory (max RSS, resource.getrusage) is its
own. The table reports wall time, peak memory, their ratios, and the log-likelihood of
each fit on all customers, all computed by one function (`winback.scoring.bgnbd.log_likelihood`).
winback's and naive lifetimes' must agree to 1e-6 relative, else the run fails: both
maximise the same likelihood. pymc-marketing's is reported, never enforced: MAP maximises
likelihood + log prior (its default priors: Weibull on r and alpha, a Pareto on a + b),
so its optimum is not the maximum-likelihood point, only close to it when data dominate.

Writing 10M customers under 4 GB peak (the design `scoring.score_customers` follows):
* no customer row ever reaches Python: the fit reads only the compressed
  (frequency, recency, T, count) rows, grouped in SQL, and the spend fit only distinct
  (frequency, mean spend) rows;
* predictions are made for that grid of distinct triples, `chunk_size` triples at a time
  (E[purchases | alive] shares its Gauss-Jacobi nodes among triples of the same
  frequency), and each chunk goes out as one binary COPY into a temporary table;
* PostgreSQL joins every customer to their triple and writes customer_scores (order value
  and CLV per customer in SQL), inside the transaction that truncated the old scores;
* so peak memory is the grid plus one chunk, independent of N; what grows with N is the
  number of distinct triples (bounded by the history length in days) and the database's
  write time (linear). Use --customers 10000000 to measure it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date

import numpy as np

AS_OF = date(2026, 11, 20)
SCHEMA = "bench_scoring"


def draw_customers(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    """BG/NBD customers with r=0.24, alpha=4.4 (per week), a=0.79, b=2.43, ages up to 2y."""
    rng = np.random.default_rng(seed)
    age = rng.integers(30, 730, size=n).astype(float)  # T in days
    rate = rng.gamma(0.24, 1 / 4.4, size=n) / 7  # per day
    dropout = rng.beta(0.79, 2.43, size=n)
    frequency = np.zeros(n)
    last = np.zeros(n)
    current = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    while alive.any():
        current = current + rng.exponential(1 / np.maximum(rate, 1e-12))
        alive &= current <= age
        # A purchase on the same day as the previous one is the same purchase day.
        new_day = alive & (np.floor(current) > last)
        frequency[new_day] += 1
        last[new_day] = np.floor(current[new_day])
        alive &= rng.random(n) >= dropout
    spend = np.where(frequency > 0, rng.gamma(6.25, 1 / 3.74, size=n) * 15.44 / 1.7, np.nan)
    return {"frequency": frequency, "recency": last, "age": age, "spend": spend}


def prepare(n: int) -> None:
    from winback.warehouse import db

    customers = draw_customers(n)
    with db.connect() as conn:
        conn.execute(f"drop schema if exists {SCHEMA} cascade")
        conn.execute(
            f"create schema {SCHEMA}; create table {SCHEMA}.customer_order_summary ("
            " customer_id text primary key, repeat_purchase_days int, recency_days int,"
            " customer_age_days int, first_order_date date, last_order_date date,"
            " mean_repeat_order_value numeric, average_order_value numeric)"
        )
        with (
            conn.cursor() as cur,
            cur.copy(
                f"copy {SCHEMA}.customer_order_summary (customer_id, repeat_purchase_days,"
                " recency_days, customer_age_days, mean_repeat_order_value, average_order_value)"
                " from stdin"
            ) as copy,
        ):
            for i in range(n):
                spend = customers["spend"][i]
                copy.write_row(
                    (
                        f"c{i:08d}",
                        int(customers["frequency"][i]),
                        int(customers["recency"][i]),
                        int(customers["age"][i]),
                        None if np.isnan(spend) else round(float(spend), 2),
                        40.0,
                    )
                )
        conn.execute(f"analyze {SCHEMA}.customer_order_summary")


def run_winback(warm_start: bool = False) -> dict:
    from winback.scoring import scores as scoring
    from winback.warehouse import db

    started = time.perf_counter()
    settings = scoring.ScoringSettings(bgnbd_penalizer=0.0, gamma_gamma_penalizer=0.0,
                                       backtest_holdout_days=0, warm_start=warm_start)  # fmt: skip
    with db.connect() as conn:
        result = scoring.score_customers(
            conn, AS_OF, settings, summary_table=f"{SCHEMA}.customer_order_summary"
        )
        conn.commit()
    return {
        "seconds": time.perf_counter() - started,
        "log_likelihood": result.bgnbd.log_likelihood,
        "params": result.bgnbd.params,
        "fit_rows": result.bgnbd.distinct_rows,
        "customers": result.customers_scored,
        "timings": result.timings,
        "fit_iterations": result.bgnbd.iterations,
        "warm_start": result.bgnbd.warm_start,
    }


def run_naive() -> dict:
    import warnings

    import pandas as pd
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    from winback.scoring import bgnbd as nm
    from winback.warehouse import db

    warnings.simplefilter("ignore")
    started = time.perf_counter()
    with db.connect() as conn:
        frame = pd.DataFrame(
            conn.execute(
                f"select customer_id, repeat_purchase_days, recency_days, customer_age_days,"
                f" mean_repeat_order_value from {SCHEMA}.customer_order_summary"
            ).fetchall(),
            columns=["customer_id", "frequency", "recency", "T", "monetary"],
        )
    for column in ("frequency", "recency", "T", "monetary"):
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    model = BetaGeoFitter().fit(frame["frequency"], frame["recency"], frame["T"])
    repeat = frame[frame["frequency"] > 0]
    spend = GammaGammaFitter().fit(repeat["frequency"], repeat["monetary"])
    p_alive = model.conditional_probability_alive(frame["frequency"], frame["recency"], frame["T"])
    expected = {
        days: model.conditional_expected_number_of_purchases_up_to_time(
            days, frame["frequency"], frame["recency"], frame["T"]
        )
        for days in (30, 90, 365)
    }
    clv = spend.customer_lifetime_value(
        model, frame["frequency"], frame["recency"], frame["T"],
        frame["monetary"].fillna(0), time=12, freq="D", discount_rate=0.01,
    )  # fmt: skip
    params = nm.BgNbdParams(*(float(model.params_[k]) for k in ("r", "alpha", "a", "b")))
    log_likelihood = float(
        nm.log_likelihood(params, frame["frequency"], frame["recency"], frame["T"]).sum()
    )
    non_finite = int(
        (~np.isfinite(np.asarray(p_alive, dtype=float))).sum()
        + sum((~np.isfinite(np.asarray(v, dtype=float))).sum() for v in expected.values())
        + (~np.isfinite(np.asarray(clv, dtype=float))).sum()
    )
    return {
        "seconds": time.perf_counter() - started,
        "log_likelihood": log_likelihood,
        "params": params.as_dict(),
        "fit_rows": len(frame),
        "customers": len(frame),
        "non_finite_predictions": non_finite,
    }


def run_pymc_marketing() -> dict:
    import logging
    import warnings

    import pandas as pd
    import pymc_marketing
    from pymc_marketing.clv import BetaGeoModel

    from winback.scoring import bgnbd as nm
    from winback.warehouse import db

    warnings.simplefilter("ignore")
    logging.getLogger("pymc").setLevel(logging.ERROR)
    modules_before = compiled_pytensor_modules()
    started = time.perf_counter()
    with db.connect() as conn:
        frame = pd.DataFrame(
            conn.execute(
                f"select customer_id, repeat_purchase_days, recency_days, customer_age_days"
                f" from {SCHEMA}.customer_order_summary"
            ).fetchall(),
            columns=["customer_id", "frequency", "recency", "T"],
        )
    for column in ("frequency", "recency", "T"):
        frame[column] = frame[column].astype(float)
    model = BetaGeoModel(data=frame)
    model.fit(method="map", progressbar=False)
    fitted = time.perf_counter()
    p_alive = model.expected_probability_alive()
    expected = {days: model.expected_purchases(future_t=days) for days in (30, 90, 365)}
    seconds = time.perf_counter() - started
    # Not timed: the checks below are the bench's, not part of what pymc-marketing does.
    point = {k: float(model.fit_result[k].values.squeeze()) for k in ("r", "alpha", "a", "b")}
    params = nm.BgNbdParams(point["r"], point["alpha"], point["a"], point["b"])
    log_likelihood = float(
        nm.log_likelihood(params, frame["frequency"], frame["recency"], frame["T"]).sum()
    )
    non_finite = int(
        (~np.isfinite(p_alive.values)).sum()
        + sum((~np.isfinite(v.values)).sum() for v in expected.values())
    )
    return {
        "seconds": seconds,
        "fit_seconds": fitted - started,
        "log_likelihood": log_likelihood,
        "params": params.as_dict(),
        "fit_rows": len(frame),
        "customers": len(frame),
        "non_finite_predictions": non_finite,
        "version": pymc_marketing.__version__,
        "compiled_modules": compiled_pytensor_modules() - modules_before,
    }


def compiled_pytensor_modules() -> int:
    """C modules in pytensor's compile cache: the first run compiles them, later runs reuse."""
    import pytensor

    path = pytensor.config.compiledir
    return len(os.listdir(path)) if os.path.isdir(path) else 0


CONTENDERS = {
    "winback": run_winback,
    "winback-warm": lambda: run_winback(warm_start=True),
    "naive": run_naive,
    "pymc": run_pymc_marketing,
}


def pymc_marketing_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pymc_marketing") is not None


def child(which: str) -> None:
    result = CONTENDERS[which]()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def measure(which: str) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--child", which],
        capture_output=True, text=True, check=True, env=os.environ,
    )  # fmt: skip
    line = [x for x in output.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1, help="repeat winback to see noise")
    parser.add_argument("--no-pymc", action="store_true", help="skip pymc-marketing")
    parser.add_argument(
        "--winback-only",
        action="store_true",
        help="only winback's stage (its time and peak memory at sizes naive lifetimes can't do)",
    )
    parser.add_argument(
        "--warm-start",
        action="store_true",
        help="start winback's fits from the last model in winback.model_fits (a daily run's case)",
    )
    parser.add_argument("--child", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    started = time.perf_counter()
    prepare(args.customers)
    print(f"prepared {args.customers:,} customers in {time.perf_counter() - started:.1f}s")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    ours = [measure("winback-warm" if args.warm_start else "winback") for _ in range(args.repeats)]
    if args.winback_only:
        for result in ours:
            print(f"winback: {result['customers']:,} customers scored in {result['seconds']:.1f}s,"
                  f" peak {result['peak_rss_mb']:.0f} MB, {result['fit_rows']:,} distinct rows"
                  f" fitted ({result['fit_iterations']} BG/NBD iterations,"
                  f" {'warm' if result['warm_start'] else 'cold'} start); stages (s): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in result["timings"].items()))  # fmt: skip
        return
    naive = measure("naive")
    with_pymc = not args.no_pymc and pymc_marketing_available()
    pymc = measure("pymc") if with_pymc else None
    best = min(ours, key=lambda r: r["seconds"])
    relative_ll = abs(best["log_likelihood"] - naive["log_likelihood"]) / abs(
        naive["log_likelihood"]
    )
    rows = [("winback", best), ("naive lifetimes", naive)]
    if pymc:
        rows.append(("pymc-marketing", pymc))
    print()
    print(f"{'':<18}{'seconds':>10}{'peak MB':>10}{'fit rows':>12}{'log-likelihood':>20}"
          f"{'r':>9}{'alpha':>9}{'a':>9}{'b':>9}")  # fmt: skip
    for name, result in rows:
        p = result["params"]
        print(f"{name:<18}{result['seconds']:>10.1f}{result['peak_rss_mb']:>10.0f}"
              f"{result['fit_rows']:>12,}{result['log_likelihood']:>20.3f}"
              f"{p['r']:>9.4f}{p['alpha']:>9.3f}{p['a']:>9.4f}{p['b']:>9.4f}")  # fmt: skip
    if len(ours) > 1:
        times = [r["seconds"] for r in ours]
        print(f"winback runs: {', '.join(f'{t:.1f}s' for t in times)} "
              f"(spread {100 * (max(times) - min(times)) / min(times):.0f}%)")  # fmt: skip
    print(
        f"time ratio naive/winback: {naive['seconds'] / best['seconds']:.1f}x; "
        f"peak memory ratio naive/winback: {naive['peak_rss_mb'] / best['peak_rss_mb']:.1f}x"
    )
    print(f"log-likelihood relative difference: {relative_ll:.2e}; "
          f"naive non-finite predictions: {naive['non_finite_predictions']}")  # fmt: skip
    print(f"winback BG/NBD fit: {best['fit_iterations']} L-BFGS-B iterations, "
          f"{'warm' if best['warm_start'] else 'cold'} start")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(
        "winback stage timings (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in best["timings"].items())
    )
    if pymc:
        pymc_relative_ll = (pymc["log_likelihood"] - naive["log_likelihood"]) / abs(
            naive["log_likelihood"]
        )
        print(
            f"pymc-marketing {pymc['version']} (BetaGeoModel, MAP, default priors): "
            f"{pymc['seconds']:.1f}s, of which fit {pymc['fit_seconds']:.1f}s "
            f"(pytensor compiled {pymc['compiled_modules']} C modules its cache lacked); "
            f"time ratio pymc/winback: {pymc['seconds'] / best['seconds']:.1f}x; "
            f"peak memory ratio pymc/winback: {pymc['peak_rss_mb'] / best['peak_rss_mb']:.1f}x"
        )
        print(
            f"pymc-marketing log-likelihood minus naive's, relative: {pymc_relative_ll:+.2e} "
            "(reported, not enforced: MAP maximises likelihood + log prior); "
            f"non-finite predictions: {pymc['non_finite_predictions']}"
        )
    elif args.no_pymc:
        print("pymc-marketing: skipped (--no-pymc).")
    else:
        print("pymc-marketing: not importable in this environment, so its BetaGeoModel is not "
              "compared; `make bench-scoring` runs this bench with it in .venv-bench.")  # fmt: skip
    if relative_ll > 1e-6:
        raise SystemExit(f"log-likelihoods differ by {relative_ll:.2e} > 1e-6")


if __name__ == "__main__":
    main()
