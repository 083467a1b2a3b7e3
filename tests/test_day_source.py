"""Days without new files (`winback.ingest.day_source`), on the real PostgreSQL.

A backfill, or a rerun of a day already loaded, rebuilds the day from the warehouse and
says why; a scheduled run without its delivery still fails loudly, with the loader's
message. The input gate follows: a day on which nothing was delivered needs orders
loaded by then, not that day.
"""

from __future__ import annotations

import logging
import shutil
from datetime import date, timedelta
from pathlib import Path

import pytest
from test_loader import customer, order, write_csv

from winback import config, pipeline, quality
from winback.ingest import day_source, loader
from winback.orchestration import run_order

DELIVERED = date(2026, 10, 8)
NOTHING = date(2026, 10, 9)
ORDERED_AT = "2026-10-07T09:30:00Z"


@pytest.fixture
def landing(conn, tmp_path: Path, monkeypatch):
    # Hand-made folders without a delivery manifest (test_scheduled_delivery checks those).
    monkeypatch.setenv(config.REQUIRE_MANIFEST_ENV, "false")
    conn.execute("drop schema if exists raw cascade")
    conn.execute("drop table if exists winback.warehouse_claim, winback.daily_runs")
    conn.commit()
    folder = tmp_path / DELIVERED.isoformat()
    write_csv(folder, "customers", [customer("c1"), customer("c2")])
    write_csv(
        folder,
        "orders",
        [order(o, c, ordered_at=ORDERED_AT) for o, c in (("o1", "c1"), ("o2", "c2"))],
    )
    yield tmp_path
    # No claim left for the session's other tests.
    conn.rollback()
    conn.execute("drop table if exists winback.warehouse_claim, winback.daily_runs")
    conn.commit()


def batches(conn, day: date) -> list[tuple]:
    return conn.execute(
        "select table_name, source_file, rows_loaded, loaded_at from raw.load_batches"
        " where load_date = %s order by table_name",
        (day,),
    ).fetchall()


def test_a_scheduled_run_without_its_delivery_fails_loudly(conn, landing):
    for run_type in ("scheduled", "manual"):
        with pytest.raises(loader.ContractError, match="nothing was delivered for that date"):
            day_source.load_or_rebuild(conn, landing, NOTHING, run_type)


def test_a_backfill_day_without_a_delivery_is_rebuilt_from_the_warehouse(conn, landing, caplog):
    day_source.load_or_rebuild(conn, landing, DELIVERED, "scheduled")
    conn.commit()
    with caplog.at_level(logging.INFO, logger="winback.ingest.day_source"):
        result = day_source.load_or_rebuild(conn, landing, NOTHING, "backfill")
    assert result["source"] == day_source.REBUILT
    assert "nothing was delivered for that date" in result["reason"]
    assert result["rows_loaded"] == 0 and result["files"] == []
    assert "2026-10-09: not loaded, rebuilt from the warehouse" in caplog.text
    assert batches(conn, NOTHING) == []


def test_a_backfill_of_a_day_already_loaded_does_not_load_it_again(conn, landing):
    first = day_source.load_or_rebuild(conn, landing, DELIVERED, "scheduled")
    conn.commit()
    assert first["source"] == day_source.LOADED and first["rows_loaded"] == 4
    before = batches(conn, DELIVERED)
    result = day_source.load_or_rebuild(conn, landing, DELIVERED, "backfill")
    assert result["source"] == day_source.REBUILT
    assert "every file in" in result["reason"] and "was already loaded (2 files" in result["reason"]
    assert result["loaded_before"] == {"customers": 2, "orders": 2}
    assert batches(conn, DELIVERED) == before, "nothing was reloaded"

    # A file delivered late into the folder is loaded, with the rest of the day.
    write_csv(landing / DELIVERED.isoformat(), "products", [])
    late = day_source.load_or_rebuild(conn, landing, DELIVERED, "backfill")
    assert late["source"] == day_source.LOADED
    assert {f["table"] for f in late["files"]} == {"customers", "orders", "products"}


def test_a_rerun_of_a_loaded_day_whose_folder_was_archived_is_rebuilt(conn, landing):
    day_source.load_or_rebuild(conn, landing, DELIVERED, "scheduled")
    conn.commit()
    shutil.rmtree(landing / DELIVERED.isoformat())
    for run_type in ("scheduled", "manual", "backfill"):
        result = day_source.load_or_rebuild(conn, landing, DELIVERED, run_type)
        assert result["source"] == day_source.REBUILT
        assert "no longer exists; its 2 files were loaded at" in result["reason"]


def test_a_scheduled_rerun_with_its_folder_reloads_it(conn, landing):
    day_source.load_or_rebuild(conn, landing, DELIVERED, "scheduled")
    conn.commit()
    write_csv(
        landing / DELIVERED.isoformat(),
        "orders",
        [order("o1", "c1", total="12.50", ordered_at=ORDERED_AT)],
    )
    result = day_source.load_or_rebuild(conn, landing, DELIVERED, "scheduled")
    assert result["source"] == day_source.LOADED, "a corrected file is picked up"
    assert conn.execute("select total from raw.orders where order_id = 'o1'").fetchone()[0] == 12.5


def test_the_input_gate_of_a_day_without_a_delivery_needs_orders_loaded_by_then(conn, landing):
    pipeline.load_raw_files(DELIVERED.isoformat(), str(landing), "scheduled")
    rebuilt = pipeline.load_raw_files(NOTHING.isoformat(), str(landing), "backfill")
    assert rebuilt["source"] == day_source.REBUILT
    assert pipeline.check_raw_inputs(NOTHING.isoformat())["failed"] == 0
    # Before any delivery there is nothing to build a day from: the gate says so.
    earlier = (DELIVERED - timedelta(days=1)).isoformat()
    with pytest.raises(quality.QualityGateError, match="orders loaded by 2026-10-07"):
        pipeline.check_raw_inputs(earlier)
    # A delivered day still needs orders of its own.
    names = [check.name for check in quality.raw_input_checks(DELIVERED, delivered=True)]
    assert "orders loaded for 2026-10-08" in names
    assert pipeline.check_raw_inputs(DELIVERED.isoformat())["failed"] == 0


def test_a_refused_delivery_gives_the_warehouse_back_and_fails(conn, landing):
    assert pipeline.wait_for_earlier_days(NOTHING.isoformat(), "scheduled__09", "scheduled")
    # The task refuses in one line (SystemExit, no traceback): nothing was delivered.
    with pytest.raises(SystemExit):
        pipeline.load_raw_files(NOTHING.isoformat(), str(landing), "scheduled", "scheduled__09")
    assert run_order.current_holder(conn) is None, "the refused day changed nothing"
    # The delivery lands before the retry: the retry takes the warehouse back and loads it.
    shutil.copytree(landing / DELIVERED.isoformat(), landing / NOTHING.isoformat())
    retried = pipeline.load_raw_files(
        NOTHING.isoformat(), str(landing), "scheduled", "scheduled__09"
    )
    assert retried["source"] == day_source.LOADED
    assert run_order.current_holder(conn).run_id == "scheduled__09"
    # Had another run taken the warehouse meanwhile, the retry would be refused.
    run_order.release(conn, "scheduled__09")
    assert run_order.claim(conn, DELIVERED, "backfill__08", "backfill")
    with pytest.raises(run_order.RunOrderError, match="took the warehouse while day 2026-10-09"):
        pipeline.load_raw_files(NOTHING.isoformat(), str(landing), "scheduled", "scheduled__09")
