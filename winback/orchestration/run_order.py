"""Days in order, one at a time: the warehouse is held by one run of winback_daily at once.

winback's days are not independent: journeys advance once per day, the lifecycle history
and the incremental models assume days in order. Airflow keeps a DAG's scheduled runs to
`max_active_runs`, but a backfill has its own limit, and nothing stops a backfill day
from running beside the scheduled run. So the first task of every run claims the
warehouse here, and the last one gives it back:

* one run holds the claim at a time (`winback.warehouse_claim`, one row); a second run
  waits while the holder is queued or running, and takes over a claim whose holder ended
  without giving it back only when that holder succeeded (marked so by hand);
* a claim whose holder **failed** stays: the failed day is unfinished, and no later day
  may advance journeys from the state it left. The waiting run is refused with the day to
  rerun (a cleared rerun of the failed day, with the same run id, takes its claim back);
* a scheduled or backfill run of day D also waits while the run of the day before it
  (Airflow's previous run by logical date) is queued or running, and is refused when that
  run failed, so a backfill's days go in date order even with a `--max-active-runs`
  above 1. A manual run (`airflow dags test`, a trigger) is a deliberate act on one day:
  it waits for the warehouse like any run but does not look at the day before;
* `build_audiences`, the step that advances journeys, checks in its own transaction that
  no other run holds the claim (`require_claim`), so two overlapping runs can never both
  advance journeys, whatever started them.

Nothing here imports Airflow: the DAG passes what Airflow knows (the previous run and
a way to ask a run's state) as plain values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

import psycopg

from winback.warehouse import tables

log = logging.getLogger(__name__)

# Airflow's run states, as the Task SDK reports them.
UNFINISHED_STATES = ("queued", "running")
# A stable key for pg_advisory_xact_lock: claims are decided one at a time.
_CLAIM_LOCK_KEY = 0x57494E4241434B  # "WINBACK"
# Run types whose days form a series (Airflow's DagRunType values).
ORDERED_RUN_TYPES = ("scheduled", "backfill")


class RunOrderError(RuntimeError):
    """This run may not go on: an earlier day failed, or another run holds the warehouse."""


@dataclass(frozen=True)
class PreviousRun:
    """Airflow's run of the day before (by logical date), as the task saw it."""

    run_id: str
    run_date: date
    state: str


@dataclass(frozen=True)
class Holder:
    run_id: str
    run_date: date
    run_type: str
    claimed_at: datetime


def ensure_claim_tables(conn: psycopg.Connection) -> None:
    # Two runs starting at once would race on `create table if not exists`.
    conn.execute("select pg_advisory_xact_lock(%s)", (_CLAIM_LOCK_KEY,))
    tables.ensure_schema(conn)


def _ensure_committed_tables(conn: psycopg.Connection) -> None:
    """The tables, committed, so the claim's own transaction below is a real one."""
    ensure_claim_tables(conn)
    if not conn.autocommit:
        conn.commit()


def current_holder(conn: psycopg.Connection) -> Holder | None:
    row = conn.execute(
        "select run_id, run_date, run_type, claimed_at from winback.warehouse_claim"
    ).fetchone()
    return Holder(*row) if row else None


def _run_type(run_type) -> str:
    return str(getattr(run_type, "value", run_type) or "manual")


def claim(
    conn: psycopg.Connection,
    run_date: date,
    run_id: str,
    run_type,
    previous_run: PreviousRun | None = None,
    run_state: Callable[[str], str | None] | None = None,
) -> bool:
    """Claim the warehouse for this run: True once held, False to wait and ask again.

    `previous_run` is Airflow's run of the previous logical date (None when there is
    none); `run_state(run_id)` asks Airflow for a run's state (None: no such run).
    Raises `RunOrderError` when waiting cannot help: the previous day, or the run that
    holds the warehouse, failed.
    """
    run_type = _run_type(run_type)
    _ensure_committed_tables(conn)
    if run_type in ORDERED_RUN_TYPES and previous_run is not None:
        if previous_run.state in UNFINISHED_STATES:
            log.info(
                "day %s waits for the day before it: run %s (%s) is %s",
                run_date,
                previous_run.run_id,
                previous_run.run_date,
                previous_run.state,
            )
            return False
        if previous_run.state == "failed":
            raise RunOrderError(
                f"day {run_date} refused: the run of the day before it, {previous_run.run_date} "
                f"({previous_run.run_id}), failed. Days run in order: rerun "
                f"{previous_run.run_date} (clear it), then this day."
            )
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (_CLAIM_LOCK_KEY,))
        holder = current_holder(conn)
        if holder is not None and holder.run_id != run_id:
            state = run_state(holder.run_id) if run_state else "running"
            if state in UNFINISHED_STATES:
                log.info(
                    "day %s waits: run %s (day %s, %s) holds the warehouse since %s",
                    run_date,
                    holder.run_id,
                    holder.run_date,
                    state,
                    holder.claimed_at,
                )
                return False
            if state == "failed":
                raise RunOrderError(
                    f"day {run_date} refused: run {holder.run_id} (day {holder.run_date}) "
                    f"failed while holding the warehouse (since {holder.claimed_at}). Rerun "
                    f"day {holder.run_date} (clear it) so it finishes, or mark that run "
                    "successful once you have dealt with it; then this day can run."
                )
            log.warning(
                "run %s (day %s) ended (%s) without giving the warehouse back: taken over",
                holder.run_id,
                holder.run_date,
                state or "no longer in Airflow",
            )
        conn.execute(
            """
            insert into winback.warehouse_claim (run_id, run_date, run_type)
            values (%s, %s, %s)
            on conflict (singleton) do update set
                run_id = excluded.run_id,
                run_date = excluded.run_date,
                run_type = excluded.run_type,
                claimed_at = case when winback.warehouse_claim.run_id = excluded.run_id
                    then winback.warehouse_claim.claimed_at else now() end
            """,
            (run_id, run_date, run_type),
        )
        conn.execute(
            """
            insert into winback.daily_runs (run_id, run_date, run_type, claimed_at)
            values (%s, %s, %s, now())
            on conflict (run_id) do update set claimed_at = now(), finished_at = null
            """,
            (run_id, run_date, run_type),
        )
    log.info("run %s (%s, day %s) holds the warehouse", run_id, run_type, run_date)
    return True


def hold_again(conn: psycopg.Connection, run_date: date, run_id: str, run_type) -> None:
    """Make sure this run still holds the warehouse, taking it back when it is free.

    A retry of the load step after a refused delivery (which gave the claim back) calls
    this first; raises `RunOrderError` when another run took the warehouse meanwhile.
    """
    _ensure_committed_tables(conn)
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (_CLAIM_LOCK_KEY,))
        holder = current_holder(conn)
        if holder is not None and holder.run_id == run_id:
            return
        if holder is not None:
            raise RunOrderError(
                f"run {holder.run_id} (day {holder.run_date}) took the warehouse while day "
                f"{run_date} waited for its delivery; rerun {run_date} once it has finished"
            )
        conn.execute(
            "insert into winback.warehouse_claim (run_id, run_date, run_type) values (%s, %s, %s)",
            (run_id, run_date, _run_type(run_type)),
        )
    log.info("run %s (day %s) holds the warehouse again", run_id, run_date)


def require_claim(conn: psycopg.Connection, run_id: str | None) -> None:
    """Inside a transaction: refuse when another run holds the warehouse.

    Locks the claim row until the caller's transaction ends, so no claim changes hands
    while journeys advance. Without a run id (the CLI, tests) only another run's claim
    refuses; with one, this run must hold it.
    """
    # Not `ensure_claim_tables` each time: its lock would make claims wait for the audiences.
    if conn.execute("select to_regclass('winback.warehouse_claim') is null").fetchone()[0]:
        ensure_claim_tables(conn)
    row = conn.execute("select run_id, run_date from winback.warehouse_claim for share").fetchone()
    if row is None:
        if run_id is not None:
            raise RunOrderError(
                f"run {run_id} does not hold the warehouse: its first task claims it "
                "(wait_for_earlier_days) before journeys may advance"
            )
        return
    if row[0] != run_id:
        raise RunOrderError(
            f"run {row[0]} (day {row[1]}) holds the warehouse: only it may advance journeys "
            f"now, not {run_id or 'this process'}"
        )


def release(conn: psycopg.Connection, run_id: str) -> bool:
    """Give the warehouse back at the end of a successful run; True if this run held it."""
    _ensure_committed_tables(conn)
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (_CLAIM_LOCK_KEY,))
        released = conn.execute(
            "delete from winback.warehouse_claim where run_id = %s", (run_id,)
        ).rowcount
        conn.execute(
            "update winback.daily_runs set finished_at = now() where run_id = %s", (run_id,)
        )
    if released:
        log.info("run %s finished: the warehouse is free", run_id)
    else:
        log.warning("run %s finished without holding the warehouse", run_id)
    return bool(released)


def release_manual_claim(conn: psycopg.Connection) -> Holder | None:
    """Free a claim left by a manual run (`airflow dags test` stopped midway).

    For `winback demo`, which replays its days from the start; returns what it freed.
    A scheduled or backfill run's claim is left alone.
    """
    _ensure_committed_tables(conn)
    holder = current_holder(conn)
    if holder is None or holder.run_type != "manual":
        return None
    release(conn, holder.run_id)
    log.warning(
        "freed the warehouse claim of manual run %s (day %s, since %s)",
        holder.run_id,
        holder.run_date,
        holder.claimed_at,
    )
    return holder
