"""A history of every winback task run, kept in the warehouse: `winback.task_runs`.

Airflow keeps durations in its own metadata database, which data engineers rarely query
and which a deployment may purge. This table sits beside the data it explains, so "how
long did scoring take last Tuesday, and how much memory did it use" is one SQL query.
Fed by the listener in `plugins/winback_listeners.py`.
"""

from __future__ import annotations

import logging
import resource
import time

from winback.warehouse import db, tables

log = logging.getLogger(__name__)

_started: dict[tuple[str, str, str], float] = {}


def _key(task_instance) -> tuple[str, str, str]:
    return (task_instance.dag_id, task_instance.run_id, task_instance.task_id)


def task_started(task_instance) -> None:
    _started[_key(task_instance)] = time.time()


def task_finished(task_instance, state: str) -> None:
    """Record the run; never raises, since bookkeeping must not fail a task."""
    if not str(task_instance.dag_id).startswith("winback"):
        return
    finished = time.time()
    started = _started.pop(_key(task_instance), finished)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    logical_date = getattr(task_instance, "logical_date", None)
    try:
        with db.connect() as conn:
            tables.ensure_schema(conn)
            conn.execute(
                """
                insert into winback.task_runs
                    (dag_id, run_id, task_id, try_number, logical_date, state, started_at,
                     finished_at, duration_seconds, peak_rss_mb)
                values (%s, %s, %s, %s, %s, %s, to_timestamp(%s), to_timestamp(%s), %s, %s)
                on conflict (dag_id, run_id, task_id, try_number) do update set
                    state = excluded.state, finished_at = excluded.finished_at,
                    duration_seconds = excluded.duration_seconds,
                    peak_rss_mb = excluded.peak_rss_mb
                """,
                (
                    task_instance.dag_id,
                    task_instance.run_id,
                    task_instance.task_id,
                    getattr(task_instance, "try_number", 1) or 1,
                    logical_date.date() if logical_date is not None else None,
                    state,
                    started,
                    finished,
                    finished - started,
                    peak_rss_mb,
                ),
            )
    except Exception as error:  # noqa: BLE001 - see docstring
        log.warning("could not record the task run: %s", type(error).__name__)
