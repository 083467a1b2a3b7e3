"""What a running task can learn from Airflow about the DAG's other runs (Task SDK).

Used by winback_daily's first task (`winback.pipeline.wait_for_earlier_days`): the run of
the previous logical date, and any run's state by its id, as plain values for
`winback.orchestration.run_order`, which holds no Airflow imports.
"""

from __future__ import annotations

from collections.abc import Callable


def previous_run(ti) -> dict | None:
    """Airflow's previous run of this DAG by logical date (any type), or None."""
    run = ti.get_previous_dagrun()
    if run is None:
        return None
    return {"run_id": run.run_id, "logical_date": run.logical_date, "state": run.state}


def run_state_lookup(ti, dag_id: str) -> Callable[[str], str | None]:
    """`run_id -> state` through the execution API; None for a run Airflow no longer has."""
    from airflow.sdk.exceptions import AirflowRuntimeError

    def state(run_id: str) -> str | None:
        try:
            value = ti.get_dagrun_state(dag_id, run_id)
        except AirflowRuntimeError as error:
            if "not found" in str(error).lower() or "not_found" in str(error).lower():
                return None
            raise
        return str(getattr(value, "value", value))

    return state
