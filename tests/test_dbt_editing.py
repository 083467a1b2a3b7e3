"""Editing the dbt project as a data engineer does: plain dbt, contracts, lineage, the DAG.

Each test works on a copy of the project (never the checkout's own files) and its own
database, so it can rename columns and add models without touching anything else.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import psycopg
import pytest
from conftest import create_database, using_database

from winback import config
from winback.campaigns import audiences, campaign_files
from winback.campaigns import exposures as campaign_exposures
from winback.local import dbt_runner
from winback.warehouse import contracts, raw_schema, relations, tables

DBT = str(Path(sys.executable).with_name("dbt"))
# Every mart Python reads (winback.warehouse.relations: the only place it names one).
PYTHON_READS = tuple(relation.split(".")[1] for relation in relations.ALL)


def plain_environment() -> dict[str, str]:
    """The shell of an engineer who exported nothing winback- or dbt-specific."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("WINBACK_", "DBT_PROFILES_DIR"))
    } | {"DBT_SEND_ANONYMOUS_USAGE_STATS": "False"}


def plain_dbt(project: Path, *args: str) -> subprocess.CompletedProcess:
    """`dbt ARGS` typed in the project folder: no --profiles-dir, no exported settings."""
    return subprocess.run(
        [DBT, *args],
        cwd=project,
        env=plain_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def project_copy(session_database, tmp_path_factory) -> Path:
    """A copy of dbt_project/ whose plain-dbt profile names a fresh database holding the
    raw schema and winback's tables (empty: contracts are checked when a model is built,
    rows or not)."""
    url = create_database("dbt_editing")
    with psycopg.connect(url) as conn:
        raw_schema.ensure_raw_schema(conn)
        tables.ensure_schema(conn)
    copy = tmp_path_factory.mktemp("dbt") / "dbt_project"
    shutil.copytree(config.DBT_PROJECT_DIR, copy, ignore=_build_output)
    (copy / "profiles.yml").write_text(dbt_runner.local_profile_text(url))
    return copy


def test_plain_dbt_build_works_in_the_project_folder(project_copy):
    result = plain_dbt(project_copy, "build")
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Completed successfully" in result.stdout


def test_renaming_a_contracted_column_fails_dbt_build_naming_it(project_copy):
    model = project_copy / "models" / "marts" / "customer_features.sql"
    sql = model.read_text()
    selected = "summary.days_since_last_order,"
    assert sql.count(selected) == 1
    # The one-line edit of the issue: an alias on the selected column.
    model.write_text(
        sql.replace(selected, "summary.days_since_last_order as days_since_last_purchase,")
    )
    try:
        result = plain_dbt(project_copy, "run", "--select", "customer_features")
    finally:
        model.write_text(sql)
    assert result.returncode != 0
    assert "contract" in result.stdout
    assert "days_since_last_order" in result.stdout
    assert "days_since_last_purchase" in result.stdout


def test_a_campaign_lists_its_upstream_models_through_its_exposure(project_copy):
    exposures = project_copy / "models" / "exposures" / "_campaigns__exposures.yml"
    exposures.parent.mkdir(exist_ok=True)
    exposures.write_text(campaign_exposures.exposures_document(campaign_files.load_campaigns()))
    listed = plain_dbt(project_copy, "ls", "--resource-type", "exposure", "--quiet")
    assert listed.returncode == 0, listed.stdout[-2000:]
    names = {line.rsplit(".", 1)[-1] for line in listed.stdout.split()}
    assert {c.id for c in campaign_files.load_campaigns()} <= names
    upstream = plain_dbt(
        project_copy,
        "ls",
        "--select",
        "+exposure:we_miss_you",
        "--resource-type",
        "model",
        "--output",
        "name",
        "--quiet",
    )
    assert upstream.returncode == 0, upstream.stdout[-2000:]
    models = set(upstream.stdout.split())
    assert {"customer_features", "customer_lifecycle_history", "stg_shop__orders"} <= models
    assert "customer_lifecycle_transitions" not in models, "only what the campaign reads"


def test_a_new_model_shows_as_a_task_in_the_daily_dag(session_database, tmp_path):
    """Adding a model needs no DAG edit: its manifest entry becomes a cosmos task."""
    root = tmp_path / "project"
    shutil.copytree(config.DBT_PROJECT_DIR, root / "dbt_project", ignore=_build_output)
    shutil.copytree(config.DAGS_DIR, root / "dags", ignore=_build_output)
    shutil.copytree(config.INCLUDE_DIR, root / "include")
    new_model = root / "dbt_project" / "models" / "marts" / "customer_contact_reach.sql"
    new_model.write_text(
        "select customer_id, is_email_subscribed or is_sms_subscribed as is_reachable\n"
        "from {{ ref('customer_features') }}\n"
    )
    env = os.environ | {"WINBACK_PROJECT_ROOT": str(root)}
    script = (
        "from winback.local import dbt_runner; dbt_runner.write_manifest()\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(root / 'dags')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "print('\\n'.join(bag.dags['winback_daily'].task_ids))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert any("customer_contact_reach" in task for task in result.stdout.split())


def test_a_failing_dbt_test_stops_the_day_before_anything_is_sent(session_database, tmp_path):
    """A data test an engineer adds fails on the day's data: the group's dbt build fails
    and alerts naming it, and nothing after it runs (no scores, no audiences, no sync)."""
    from winback.local import airflow_env
    from winback.simulation import simulator

    day = date(2026, 11, 20)
    root = tmp_path / "project"
    shutil.copytree(config.DBT_PROJECT_DIR, root / "dbt_project", ignore=_build_output)
    shutil.copytree(config.DAGS_DIR, root / "dags", ignore=_build_output)
    shutil.copytree(config.INCLUDE_DIR, root / "include")
    # A singular test that fails whenever the shop has an order: every day has some.
    (root / "dbt_project" / "tests" / "assert_no_orders_yet.sql").write_text(
        "select order_id from {{ ref('stg_shop__orders') }}\n"
    )
    landing = tmp_path / "landing"
    settings = simulator.SimulationConfig(customers=200, seed=5, as_of=day)
    simulator.write_landing_files(simulator.simulate_shop(settings), landing / day.isoformat())
    log_path = tmp_path / "winback_daily.log"
    with using_database(create_database("dbt_test_fails")) as url:
        env = airflow_env.airflow_environment() | {
            "WINBACK_PROJECT_ROOT": str(root),
            "WINBACK_LANDING_DIR": str(landing),
            "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        }
        manifest = "from winback.local import dbt_runner; dbt_runner.write_manifest()"
        written = subprocess.run(
            [sys.executable, "-c", manifest], env=env, capture_output=True, text=True, timeout=600
        )
        assert written.returncode == 0, written.stderr[-4000:]
        with open(log_path, "w") as log:
            subprocess.run(
                [str(airflow_env.airflow_executable()), "dags", "test", "winback_daily", str(day)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=1200,
                check=False,
            )
        with psycopg.connect(url) as conn:
            exists = conn.execute("select to_regclass('winback.outbox')").fetchone()[0]
            queued = conn.execute("select count(*) from winback.outbox") if exists else None
            queued = queued.fetchone()[0] if queued else 0
    text = log_path.read_text(errors="replace")
    alert = "winback: winback_daily.dbt_customers.dbt_producer_watcher failed for 2026-11-20"
    assert alert in text, text[-6000:]
    assert "assert_no_orders_yet" in text.split(alert, 1)[1].splitlines()[1]
    assert "nothing was sent for this run" in text
    started = set(re.findall(r"\[DAG TEST\] starting task_id=(\S+)", text))
    assert "load_raw_files" in started
    assert not started & {"check_raw_inputs", "score_customers", "build_audiences", "sync_outbox"}
    assert queued == 0


def _build_output(folder: str, names: list[str]) -> set[str]:
    """dbt's and Python's output, and the checkout's own plain-dbt profile."""
    own_profile = {"profiles.yml"} if Path(folder) == config.DBT_PROJECT_DIR else set()
    return {n for n in names if n in {"target", "logs", "__pycache__", *own_profile}}


def test_python_reads_only_contracted_marts():
    for model in PYTHON_READS:
        assert contracts.is_enforced(model), model
        assert contracts.contracted_columns(model)


def test_validation_names_a_column_the_contract_lacks(monkeypatch):
    campaign = next(c for c in campaign_files.load_campaigns() if c.id == "we_miss_you")
    declared = dict(contracts.contracted_columns("customer_features"))
    del declared["rfm_segment"]  # the holdout's stratum, as if the mart had dropped it
    monkeypatch.setattr(contracts, "contracted_columns", lambda model: declared)
    problems = campaign_files.column_problems(campaign)
    assert problems and "'rfm_segment'" in problems[0]


def test_the_run_refuses_only_the_campaign_whose_column_is_missing(conn):
    """A features table built before a rename: one campaign refused in one line, the
    others readable."""
    campaigns = campaign_files.load_campaigns()
    columns = sorted(set().union(*(campaign_files.columns_read(c) for c in campaigns)))
    kept = [c for c in columns if c != "days_since_last_order"]
    conn.execute("create schema if not exists marts")
    conn.execute("drop table if exists marts.customer_features")
    conn.execute(f"create table marts.customer_features ({', '.join(f'{c} text' for c in kept)})")
    readable, refused = audiences.refuse_unreadable(conn, campaigns)
    conn.rollback()
    needing = {c.id for c in campaigns if "days_since_last_order" in campaign_files.columns_read(c)}
    assert needing and {f"{name}.yaml" for name in needing} == set(refused)
    assert {c.id for c in readable} == {c.id for c in campaigns} - needing
    for reason in refused.values():
        assert "\n" not in reason and "days_since_last_order" in reason
