"""One home for the tables: winback.warehouse.tables and relations, and what dbt knows of them."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from winback import config
from winback.warehouse import relations, tables

PACKAGE = Path(__file__).resolve().parent.parent / "winback"
MODELS = config.DBT_PROJECT_DIR / "models"


def _sources() -> dict[str, dict]:
    document = yaml.safe_load((MODELS / "staging" / "_winback__sources.yml").read_text())
    [source] = [s for s in document["sources"] if s["name"] == tables.SCHEMA]
    return {table["name"]: table for table in source["tables"]}


def _marts() -> dict[str, dict]:
    document = yaml.safe_load((MODELS / "marts" / "_marts__models.yml").read_text())
    return {model["name"]: model for model in document["models"]}


def test_every_table_block_creates_the_table_it_is_named_for():
    for name, ddl in tables.TABLES.items():
        created = re.findall(r"create table if not exists (\w+)\.(\w+)", ddl)
        assert created == [(tables.SCHEMA, name)], name
        altered = set(re.findall(r"alter table (\w+\.\w+)", ddl))
        assert altered <= {f"{tables.SCHEMA}.{name}"}, f"{name}'s block alters {altered}"


def test_no_other_module_or_macro_defines_a_winback_table():
    """The DDL of a winback.* table exists once: in winback/warehouse/tables.py."""
    pattern = re.compile(r"create table (if not exists )?winback\.", re.IGNORECASE)
    offenders = [
        str(path)
        for folder, suffix in ((PACKAGE, "*.py"), (config.DBT_PROJECT_DIR, "*.sql"))
        for path in folder.rglob(suffix)
        if path != PACKAGE / "warehouse" / "tables.py" and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_every_winback_table_is_a_described_dbt_source():
    sources = _sources()
    assert list(sources) == list(tables.TABLES)  # the same tables, in run order
    for name, source in sources.items():
        assert source.get("description", "").strip(), f"source winback.{name} is undescribed"


def test_python_reads_documented_marts_only():
    marts = _marts()
    for relation in relations.ALL:
        schema, name = relation.split(".")
        assert schema == relations.MARTS
        assert name in marts and marts[name]["description"].strip(), relation


def test_no_module_spells_a_staging_or_intermediate_relation():
    """Relation names live in winback.warehouse.relations, and none is internal to dbt."""
    internal = re.compile(r"\b(staging|intermediate)\.(stg|int)_\w+|Identifier\(\s*\"staging\"")
    offenders = [
        f"{path}: {match.group(0)}"
        for path in PACKAGE.rglob("*.py")
        for match in internal.finditer(path.read_text())
    ]
    assert offenders == []


def test_the_exposures_read_the_marts_python_reads():
    document = yaml.safe_load((MODELS / "marts" / "_marts__exposures.yml").read_text())
    read = {
        re.fullmatch(r"ref\('(\w+)'\)", dependency).group(1)
        for exposure in document["exposures"]
        for dependency in exposure["depends_on"]
        if dependency.startswith("ref(")
    }
    assert {relation.split(".")[1] for relation in relations.ALL} <= read


def test_ensure_schema_widens_the_event_types_of_an_older_warehouse(conn):
    """A warehouse whose message_events still has the first six event types, everything
    else complete: the check is replaced, and a STOP's START can be stored."""
    conn.execute("drop schema if exists winback cascade")
    tables.ensure_schema(conn)
    conn.execute(
        "alter table winback.message_events drop constraint message_events_event_type_check;"
        " alter table winback.message_events add constraint message_events_event_type_check"
        " check (event_type in ('delivered', 'opened', 'clicked', 'bounced', 'complained',"
        " 'unsubscribed'))"
    )
    tables.ensure_schema(conn)
    conn.execute(
        "insert into winback.message_events (event_id, provider, event_type, occurred_at)"
        " values ('e1', 'twilio', 'resubscribed', now())"
    )
    conn.rollback()


def test_ensure_schema_creates_every_table_and_upgrades_an_older_one(conn):
    conn.execute("drop schema if exists winback cascade")
    # A warehouse from before journeys: the outbox without its later columns.
    conn.execute(
        "create schema winback; create table winback.outbox (idempotency_key text primary key,"
        " run_date date not null, campaign_id text not null, step_id text not null,"
        " customer_id text not null, channel text not null, payload jsonb not null,"
        " created_at timestamptz not null default now(),"
        " unique (campaign_id, step_id, customer_id, channel))"
    )
    tables.ensure_schema(conn)
    tables.ensure_schema(conn)  # idempotent
    present = {
        name
        for (name,) in conn.execute(
            "select table_name from information_schema.tables where table_schema = 'winback'"
        )
    }
    assert present == set(tables.TABLES)
    outbox_columns = [
        name
        for (name,) in conn.execute(
            "select column_name from information_schema.columns where table_schema = 'winback'"
            " and table_name = 'outbox' order by ordinal_position"
        )
    ]
    assert outbox_columns[-7:] == [
        "send_at",
        "variant",
        "coupon_code",
        "coupon_expires_on",
        "tracked_link",
        "assigned_group",
        "coupon_key_fingerprint",
    ]
    conn.rollback()


def test_dbt_says_why_when_the_winback_tables_are_missing(session_database):
    """dbt does not create winback tables (one definition, here); its hook names the fix."""
    import subprocess
    import sys

    from conftest import create_database, using_database

    from winback.local import dbt_runner

    with using_database(create_database("no_winback_schema")):
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("dbt")),
                "run",
                "--select",
                "stg_shop__products",
                "--project-dir",
                str(config.DBT_PROJECT_DIR),
                "--profiles-dir",
                str(dbt_runner.COMMITTED_PROFILES_DIR),
            ],
            env=dbt_runner.dbt_environment(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode != 0
    assert "winback.warehouse.tables.ensure_schema" in result.stdout + result.stderr


def test_a_complete_schema_is_left_alone_while_another_stage_writes(session_database):
    """No DDL when nothing is missing: `alter table` would wait for (and block) writers."""
    from winback.warehouse import db

    with db.connect() as writer, db.connect() as other:
        tables.ensure_schema(writer)
        writer.commit()
        writer.execute(
            "insert into winback.outbox (idempotency_key, run_date, campaign_id, step_id,"
            " customer_id, channel, payload) values ('k', '2026-11-20', 'c', 's', 'x',"
            " 'email', '{}')"
        )  # uncommitted: the outbox is locked for writing
        other.execute("set lock_timeout = '2s'")
        tables.ensure_schema(other)  # would time out on the outbox's lock if it ran DDL
        other.rollback()
        writer.rollback()
