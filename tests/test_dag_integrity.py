"""DAG integrity: every DAG imports, is acyclic, tagged, retried, and parses fast."""

from __future__ import annotations

import os
import time

import pytest

from winback import config


@pytest.fixture(scope="module")
def dagbag(session_database):
    os.environ.setdefault("AIRFLOW__COSMOS__ENABLE_TELEMETRY", "False")
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(config.DAGS_DIR))


def test_every_dag_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "winback_daily" in dagbag.dag_ids


def test_every_dag_is_tagged_and_documented(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md, f"{dag_id} has no doc_md"


def test_every_task_retries_or_says_why_not(dagbag):
    from cosmos.constants import PRODUCER_WATCHER_TASK_ID

    # A DAG without retries in default_args must not crash this test: read it safely.
    for dag_id, dag in dagbag.dags.items():
        assert (dag.default_args or {}).get("retries", 0) >= 1, f"{dag_id}: no default retries"
        for task in dag.tasks:
            # Gates and dbt tests must not retry: a failed check is a verdict, not a glitch.
            # So is a dbt group's build (cosmos' producer task): it runs the group's tests.
            verdict = task.task_id.startswith("check_") or task.task_id.endswith(
                (".test", "_test", PRODUCER_WATCHER_TASK_ID)
            )
            if verdict or task.task_id == "summarize":
                assert task.retries == 0, f"{dag_id}.{task.task_id} retries a verdict"
                continue
            assert task.retries >= 1, f"{dag_id}.{task.task_id} never retries"


def test_no_cycles_and_the_stages_run_in_order(dagbag):
    dag = dagbag.dags["winback_daily"]
    order = [t.task_id for t in dag.topological_sort()]
    position = {task_id: i for i, task_id in enumerate(order)}
    stages = ["load_raw_files", "score_customers", "build_audiences", "sync_outbox", "summarize"]
    assert [position[s] for s in stages] == sorted(position[s] for s in stages)
    dbt_tasks = [t for t in order if t.startswith("dbt_customers.")]
    assert dbt_tasks, "cosmos rendered no dbt tasks"
    assert all(position[t] < position["score_customers"] for t in dbt_tasks)


# Trigger rules under which a failed (or upstream-failed) parent stops the task.
STOPPED_BY_A_FAILED_PARENT = {"all_success", "none_failed"}


def test_a_failed_dbt_build_stops_the_day_before_anything_is_sent(dagbag):
    """Each dbt group's build runs its models and tests in one task; every model and test
    task waits for it, and nothing on the way to the sync runs past a failed parent."""
    from cosmos.constants import PRODUCER_WATCHER_TASK_ID

    dag = dagbag.dags["winback_daily"]
    for group in ("dbt_customers", "dbt_features"):
        build = dag.get_task(f"{group}.{PRODUCER_WATCHER_TASK_ID}")
        assert build.pool == config.WAREHOUSE_WRITES_POOL, "dbt writes outside the pool"
        after_build = build.get_flat_relative_ids(upstream=False)
        in_group = {t.task_id for t in dag.tasks if t.task_id.startswith(f"{group}.")}
        assert in_group - {build.task_id} <= after_build, "a dbt task runs beside the build"
        assert "sync_outbox" in after_build
        on_the_way = after_build & dag.get_task("sync_outbox").get_flat_relative_ids(upstream=True)
        for task_id in on_the_way | {"sync_outbox"}:
            rule = dag.get_task(task_id).trigger_rule
            assert rule in STOPPED_BY_A_FAILED_PARENT, f"{task_id} runs after a failure ({rule})"


def test_one_dag_per_run_at_a_time(dagbag):
    assert dagbag.dags["winback_daily"].max_active_runs == 1


def test_parsing_the_daily_dag_is_fast(session_database):
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    DagBag(dag_folder=str(config.DAGS_DIR / "winback_daily.py"))
    elapsed = time.perf_counter() - started
    # Rendered from the manifest, never `dbt ls`: a slow parse means that regressed.
    assert elapsed < 10, f"parsing took {elapsed:.1f}s"


def test_every_task_waits_for_the_warehouse_claim_and_the_run_gives_it_back(dagbag):
    """Days in order, one at a time: the claim comes before every task that touches the
    warehouse, its release last. Only the wait for the delivery, which reads the landing
    folder, comes before it: a day whose delivery never came fails without the claim."""
    dag = dagbag.dags["winback_daily"]
    guard = dag.get_task("wait_for_earlier_days")
    assert guard.mode == "reschedule", "waiting for the day before must not hold a worker"
    assert guard.get_flat_relative_ids(upstream=True) == {"wait_for_delivery"}
    others = {t.task_id for t in dag.tasks} - {guard.task_id, "wait_for_delivery"}
    assert guard.get_flat_relative_ids(upstream=False) >= others
    release = dag.get_task("release_warehouse")
    assert release.get_flat_relative_ids(upstream=True) >= others - {release.task_id}
    # A failed day keeps the warehouse: the release runs only when everything succeeded.
    assert release.trigger_rule == "all_success"


def test_dbt_runs_in_watcher_mode_unless_the_environment_says_local(dagbag, monkeypatch):
    """`local` is the way back to one dbt invocation per task; a typo fails the parse."""
    from cosmos.constants import ExecutionMode

    from winback.orchestration import cosmos_config

    monkeypatch.delenv(cosmos_config.DBT_EXECUTION_MODE_ENV, raising=False)
    assert cosmos_config.dbt_execution_mode() == ExecutionMode.WATCHER
    monkeypatch.setenv(cosmos_config.DBT_EXECUTION_MODE_ENV, "Local")
    assert cosmos_config.dbt_execution_mode() == ExecutionMode.LOCAL
    monkeypatch.setenv(cosmos_config.DBT_EXECUTION_MODE_ENV, "watch")
    with pytest.raises(ValueError, match="watcher"):
        cosmos_config.dbt_execution_mode()


def test_the_daily_dbt_builds_run_data_tests_but_not_unit_tests(dagbag):
    """Unit tests check logic on fixed inputs: `make test` runs them, the daily run does
    not repeat them (dbt's advice). Every producer's build still runs the data tests."""
    from winback.orchestration import cosmos_config

    dag = dagbag.dags["winback_daily"]
    producers = [
        t for t in dag.tasks if t.task_id.endswith(f".{cosmos_config.PRODUCER_WATCHER_TASK_ID}")
    ]
    assert {t.task_id.split(".")[0] for t in producers} == {"dbt_customers", "dbt_features"}
    for producer in producers:
        exclude = producer.exclude
        excluded = exclude.split() if isinstance(exclude, str) else list(exclude)
        assert "resource_type:unit_test" in excluded and "resource_type:exposure" in excluded
        assert "resource_type:test" not in excluded and producer.base_cmd == ["build"]


def test_every_dbt_task_gets_the_logical_date_in_its_environment_not_as_a_var(dagbag):
    """`as_of_date()` reads WINBACK_AS_OF_DATE; a --vars that changed every day made dbt
    parse the whole project again on each build (tests/test_dbt_models.py runs dbt)."""
    from winback.orchestration import cosmos_config

    gate = f".{cosmos_config.PRODUCER_WATCHER_DONE_TASK_ID}"  # cosmos' gate: no dbt in it
    dbt_tasks = [
        t
        for t in dagbag.dags["winback_daily"].tasks
        if t.task_id.startswith("dbt_") and not t.task_id.endswith(gate)
    ]
    assert len(dbt_tasks) > 20
    for task in dbt_tasks:
        assert task.env[cosmos_config.AS_OF_DATE_ENV] == "{{ ds }}", task.task_id
        assert not task.vars, task.task_id
