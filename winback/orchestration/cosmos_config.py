"""Shared Airflow and cosmos configuration: defined once, imported by every DAG file.

Cosmos renders the dbt project from the manifest that `winback dbt-manifest` writes at
set-up (`make demo`, `make test`, the image build), so parsing a DAG never runs `dbt ls`.
dbt runs in-process through dbtRunner with the connection settings that
`dbt_project/profiles/profiles.yml` reads from the environment.

Each dbt task group runs in cosmos' watcher mode: one `dbt build` of the group's models
and tests (the producer task, `dbt_producer_watcher`) and one task per model and per
model's tests that reports that node's result as the build reaches it. A model is still a
task of its own in the UI, with its own log and result, but dbt starts once per group
instead of once per task (see `dbt_task_group` for how retries and failures behave).
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import TriggerRule
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import (
    PRODUCER_WATCHER_DONE_TASK_ID,
    PRODUCER_WATCHER_TASK_ID,
    ExecutionMode,
    InvocationMode,
    LoadMode,
    TestBehavior,
    TestIndirectSelection,
)

from winback import config
from winback.orchestration import alerts
from winback.warehouse import db

DBT_MANIFEST = config.DBT_PROJECT_DIR / "target" / "manifest.json"
WAREHOUSE_CONN_ID = config.WAREHOUSE_CONN_ID
WAREHOUSE_WRITES_POOL = config.WAREHOUSE_WRITES_POOL
DEFAULT_TASK_RETRIES = 2
DEFAULT_POOL = "default_pool"
# winback_daily's first task waits (without holding a worker) for the day before and for
# the run holding the warehouse; after this long it fails with an alert naming them.
RUN_ORDER_POKE_SECONDS = 20
RUN_ORDER_TIMEOUT_SECONDS = 6 * 3600

DEFAULT_ARGS = {
    "owner": "winback",
    "retries": DEFAULT_TASK_RETRIES,
    "retry_delay": timedelta(minutes=2),
    "execution_timeout": timedelta(hours=1),
    "on_failure_callback": alerts.on_task_failure,
}

# The run date every dbt task receives is the DAG's logical date, so a backfill of day D
# rebuilds day D's state. It goes in an environment variable, which the `as_of_date()`
# macro reads while executing, and not in --vars: dbt parses the whole project again
# whenever the vars differ from the last run's, and they would differ every day.
AS_OF_DATE_ENV = "WINBACK_AS_OF_DATE"
DBT_ENV = {AS_OF_DATE_ENV: "{{ ds }}"}


def _export_connection_settings() -> None:
    """Make the warehouse settings visible to dbt, in this process and its children.

    Done at import (DAG parse) rather than passed as operator `env`, so no password ever
    appears among a task's rendered template fields. Always derived from the warehouse URL
    the Python stages use, so dbt and Python can never write to different databases.
    """
    db.export_dbt_env()


_export_connection_settings()

PROJECT_CONFIG = ProjectConfig(
    dbt_project_path=config.DBT_PROJECT_DIR,
    manifest_path=DBT_MANIFEST,
    project_name="winback",
    install_dbt_deps=False,
    partial_parse=True,
    env_vars=DBT_ENV,  # every dbt task's environment, rendered at run time
)

PROFILE_CONFIG = ProfileConfig(
    profile_name=config.DBT_PROFILE_NAME,
    target_name=config.DBT_TARGET_NAME,
    profiles_yml_filepath=config.DBT_PROJECT_DIR / "profiles" / "profiles.yml",
)

# `WINBACK_DBT_EXECUTION_MODE=local` brings back one dbt invocation per model and per
# model's tests: cosmos calls its watcher mode experimental, so this is the way back if it
# misbehaves, and how bench/bench_daily.py measures both (the default is `watcher`).
DBT_EXECUTION_MODE_ENV = "WINBACK_DBT_EXECUTION_MODE"
DBT_EXECUTION_MODES = {"watcher": ExecutionMode.WATCHER, "local": ExecutionMode.LOCAL}


def dbt_execution_mode() -> ExecutionMode:
    name = os.environ.get(DBT_EXECUTION_MODE_ENV, "").strip().lower() or "watcher"
    if name not in DBT_EXECUTION_MODES:
        raise ValueError(
            f"{DBT_EXECUTION_MODE_ENV}={name!r}: expected one of {sorted(DBT_EXECUTION_MODES)}"
        )
    return DBT_EXECUTION_MODES[name]


EXECUTION_CONFIG = ExecutionConfig(
    execution_mode=dbt_execution_mode(),
    invocation_mode=InvocationMode.DBT_RUNNER,
    # A model's test task runs the tests whose other parents are upstream of it, so a
    # relationship test waits for the later model instead of failing on a missing table.
    test_indirect_selection=TestIndirectSelection.BUILDABLE,
)


# The exposures (the Python stages that read the marts) document the flow in dbt docs; the
# DAG runs those stages itself, so they are no dbt tasks. dbt's unit tests check model
# logic against fixed inputs, so a daily run would only repeat them on the same inputs:
# dbt's docs recommend running them in development and CI only and excluding them from
# production builds (docs.getdbt.com/docs/build/unit-tests, "When to run unit tests").
# `make test` runs them: tests/test_dbt_models.py builds the whole project.
NOT_RENDERED = ["resource_type:exposure", "resource_type:unit_test"]


def render_config(select: list[str] | None = None, exclude: list[str] | None = None):
    return RenderConfig(
        load_method=LoadMode.DBT_MANIFEST,
        select=select or [],
        exclude=[*(exclude or []), *NOT_RENDERED],
        test_behavior=TestBehavior.AFTER_EACH,
        # The dbt graph and the Python stages between them are wired by hand in the DAG.
        emit_datasets=True,
    )


def warehouse_asset(schema: str, table: str):
    """An Airflow asset for a warehouse table, named the way cosmos names dbt's outputs."""
    from airflow.sdk import Asset

    settings = db.dbt_env()
    uri = (
        f"postgres://{settings['WINBACK_PG_HOST']}:{settings['WINBACK_PG_PORT']}"
        f"/{settings['WINBACK_PG_DBNAME']}/{schema}/{table}"
    )
    # The URI names the warehouse, so two warehouses (demo, tests) never share an asset.
    return Asset(uri=uri)


DBT_OPERATOR_ARGS = {
    "pool": WAREHOUSE_WRITES_POOL,
}


def dbt_task_group(
    group_id: str, select: list[str] | None = None, exclude: list[str] | None = None
):
    """A cosmos task group for part of the dbt project, with the shared configuration and
    no retries on its test tasks. Call it inside a DAG.

    The group's `dbt build` (its producer task) runs before any of its model tasks, which
    then read their node's result from it (`producer_first`). The build runs the tests, so
    it is a verdict like them and is not retried: a failed model or test fails the producer
    at once, its alert names the failed nodes, and the day stops there. Clearing the failed
    producer (after a fix) makes each model task run its own model and each test task its
    model's tests, the way one task per model always did (cosmos' watcher fallback).
    """
    group = DbtTaskGroup(
        group_id=group_id,
        project_config=PROJECT_CONFIG,
        profile_config=PROFILE_CONFIG,
        execution_config=EXECUTION_CONFIG,
        render_config=render_config(select=select, exclude=exclude),
        operator_args=DBT_OPERATOR_ARGS,
    )
    without_retries_on_tests(group)
    if EXECUTION_CONFIG.execution_mode == ExecutionMode.WATCHER:
        producer_first(group)
    return group


def producer_task(group):
    """The group's `dbt build` task."""
    return next(t for t in _leaf_tasks(group) if t.task_id.endswith(PRODUCER_WATCHER_TASK_ID))


def without_retries_on_tests(group) -> None:
    """dbt tests are verdicts on data, not flaky calls: a retry only delays the alert. The
    group's `dbt build` runs them, so it does not retry either (cosmos' producer would only
    skip a second try)."""
    for child in group.children.values():
        if hasattr(child, "children"):
            without_retries_on_tests(child)
        elif child.task_id.endswith((".test", "_test", PRODUCER_WATCHER_TASK_ID)):
            child.retries = 0


def _leaf_tasks(group) -> list:
    tasks = []
    for child in group.children.values():
        tasks.extend(_leaf_tasks(child) if hasattr(child, "children") else [child])
    return tasks


def producer_first(group) -> None:
    """Make the group's `dbt build` the parent of its first model tasks.

    Cosmos leaves a task group's model tasks free to start beside the build and wait for
    it, deferred. `airflow dags test` runs one task at a time and a deferred task's wait
    in line, so a model task that started first would wait for a build that cannot start.
    After the build, each model task finds its result at its first look and finishes in a
    moment. The first model tasks run when the build succeeded or was skipped (its retry,
    where cosmos makes each model task run its own model), never when it failed. Only the
    build holds the warehouse-writes pool.
    """
    tasks = _leaf_tasks(group)
    producer = producer_task(group)
    in_group = {t.task_id for t in tasks}
    for task in tasks:
        if task is producer or task.task_id.endswith(PRODUCER_WATCHER_DONE_TASK_ID):
            continue
        # A model task only reads its node's result: the pool that keeps warehouse writes
        # apart is the build's, and the model tasks may run side by side after it.
        task.pool = DEFAULT_POOL
        if not task.upstream_task_ids & in_group:
            producer >> task
            task.trigger_rule = TriggerRule.NONE_FAILED
