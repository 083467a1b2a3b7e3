"""Quality gates on the real PostgreSQL: a bad day fails with a readable message."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from winback import quality
from winback.warehouse import db, raw_schema, tables

DAY = date(2026, 11, 20)


@pytest.fixture
def raw(conn):
    conn.execute("drop schema if exists raw cascade")
    raw_schema.ensure_raw_schema(conn)
    conn.execute(
        "insert into raw.customers (customer_id, country, created_at, _load_date, _source_file,"
        " _source_line) values ('c1', 'IT', '2025-01-01', %s, 'f', 2)",
        (DAY,),
    )
    conn.commit()
    return conn


def add_order(
    conn, order_id: str, total: str, ordered_at: str = "2026-11-20T10:00:00Z", loaded=DAY
) -> None:
    conn.execute(
        "insert into raw.orders (order_id, customer_id, ordered_at, status, total, currency,"
        " _load_date, _source_file, _source_line) values (%s, 'c1', %s, 'completed', %s, 'EUR',"
        " %s, 'f', 2)",
        (order_id, ordered_at, total, loaded),
    )
    conn.commit()


def test_a_clean_day_passes_and_is_recorded(raw):
    add_order(raw, "o1", "10.00")
    assert quality.check_raw_inputs(DAY)["failed"] == 0
    rows = raw.execute(
        "select check_name, success from winback.quality_results where gate = 'raw_inputs'"
    ).fetchall()
    assert len(rows) == len(quality.raw_input_checks(DAY)) and all(ok for _, ok in rows)


def test_negative_amounts_and_future_orders_fail_the_gate_readably(raw):
    add_order(raw, "o1", "-3.00")
    add_order(raw, "o2", "5.00", ordered_at="2026-12-25T10:00:00Z")
    with pytest.raises(quality.QualityGateError) as error:
        quality.check_raw_inputs(DAY)
    message = str(error.value)
    assert "quality gate 'raw_inputs' failed 2 of" in message
    assert "order totals >= 0" in message and "no order after 2026-11-20" in message


def test_only_the_days_own_rows_are_judged_for_amounts(raw):
    """A negative total loaded on another day is that day's failure, not this one's."""
    add_order(raw, "o1", "10.00")
    add_order(raw, "o0", "-1.00", ordered_at="2026-11-01T10:00:00Z", loaded=date(2026, 11, 1))
    assert quality.check_raw_inputs(DAY)["failed"] == 0
    with pytest.raises(quality.QualityGateError, match="order totals >= 0"):
        quality.check_raw_inputs(date(2026, 11, 1))


def test_rerunning_an_older_day_ignores_orders_that_later_days_loaded(raw):
    """A backfill of day D runs after D+30's files were loaded: their orders are no error."""
    add_order(raw, "o1", "10.00")
    add_order(raw, "o2", "12.00", ordered_at="2026-12-19T10:00:00Z", loaded=date(2026, 12, 20))
    assert quality.check_raw_inputs(DAY)["failed"] == 0


def test_a_day_without_orders_fails(raw):
    with pytest.raises(quality.QualityGateError, match="orders loaded for 2026-11-20"):
        quality.check_raw_inputs(DAY)


def test_scores_outside_zero_one_missing_or_left_out_fail(conn):
    conn.execute("drop table if exists winback.customer_scores")
    conn.execute("create schema if not exists winback")
    conn.execute(
        "create table winback.customer_scores (customer_id text primary key, p_alive float8)"
    )
    conn.execute("insert into winback.customer_scores values ('a', 0.5), ('b', 1.2), ('c', null)")
    conn.execute("drop table if exists public.quality_test_summary")
    conn.execute("create table public.quality_test_summary (customer_id text)")
    conn.execute("insert into public.quality_test_summary values ('a'), ('b'), ('c'), ('d')")
    conn.commit()
    checks = quality.score_checks("public.quality_test_summary")
    with pytest.raises(quality.QualityGateError) as error:
        quality.enforce("scores", quality.run_checks("scores", checks, DAY))
    message = str(error.value)
    assert "failed 3 of 4" in message
    assert "p_alive within [0, 1]" in message and "p_alive never missing" in message
    assert "every customer with an order scored" in message
    observed = dict(
        conn.execute(
            "select check_name, observed->>'observed_value' from winback.quality_results"
            " where gate = 'scores' and not success"
        ).fetchall()
    )
    assert observed == {
        "p_alive within [0, 1]": "1",
        "p_alive never missing": "1",
        "every customer with an order scored": "1",
    }


def add_batch(conn, table: str, read: int, quarantined: int, day=DAY, rule="invalid_amount"):
    conn.execute(
        "insert into raw.load_batches (load_date, table_name, source_file, rows_read,"
        " rows_loaded, rows_quarantined) values (%s, %s, %s, %s, %s, %s)",
        (day, table, f"landing/{day}/{table}.csv", read, read - quarantined, quarantined),
    )
    for line in range(quarantined):
        conn.execute(
            "insert into raw.quarantine (load_date, table_name, source_file, line_number,"
            " column_name, rule, reason, raw_record) values (%s, %s, 'f', %s, 'x', %s, 'r', '{}')",
            (day, table, line + 2, rule if line % 3 else "unknown_order"),
        )
    conn.commit()


def add_line(conn, order_id: str) -> None:
    conn.execute(
        "insert into raw.order_lines (order_id, line_number, product_id, quantity, unit_price,"
        " _load_date, _source_file, _source_line) values (%s, 1, 'p', 1, 1, %s, 'f', 2)",
        (order_id, DAY),
    )
    conn.commit()


def test_a_day_with_most_lines_quarantined_fails_naming_file_share_and_rules(raw):
    add_order(raw, "o1", "10.00")
    add_line(raw, "o1")
    add_batch(raw, "orders", 100, 1)
    add_batch(raw, "order_lines", 100, 60)
    with pytest.raises(quality.QualityGateError) as failed:
        quality.check_raw_inputs(DAY)
    message = str(failed.value)
    assert "order_lines quarantined share <= 5%" in message
    assert f"landing/{DAY}/order_lines.csv: 60.0% of 100 rows quarantined" in message
    assert "top rules: invalid_amount (40), unknown_order (20)" in message
    assert "orders quarantined" not in message  # 1% is within its limit


def test_the_limit_is_configurable_per_table_and_a_jump_against_recent_days_fails(raw, monkeypatch):
    add_order(raw, "o1", "10.00")
    add_line(raw, "o1")
    for days_back in range(1, 4):
        add_batch(raw, "order_lines", 100, 1, day=date(2026, 11, 20 - days_back))
    add_batch(raw, "order_lines", 100, 9)
    monkeypatch.setenv(quality.QUARANTINE_LIMITS_ENV, "order_lines=0.1")
    with pytest.raises(quality.QualityGateError) as failed:
        quality.check_raw_inputs(DAY)
    message = str(failed.value)
    assert "failed 1 of" in message and "the last 3 load days' 1.0%" in message
    monkeypatch.setenv(quality.QUARANTINE_LIMITS_ENV, "order_lines=ten")
    with pytest.raises(quality.QualityGateError, match="WINBACK_QUARANTINE_LIMITS"):
        quality.check_raw_inputs(DAY)


def test_orders_whose_lines_are_gone_fail_the_gate(raw):
    for index in range(4):
        add_order(raw, f"o{index}", "10.00")
    add_line(raw, "o0")
    add_batch(raw, "order_lines", 10, 0)
    with pytest.raises(quality.QualityGateError, match="orders without an order line"):
        quality.check_raw_inputs(DAY)


def test_gates_build_their_gx_objects_once_per_process(raw):
    """The context, data source and batch definition are built by the first gate and
    reused by the next: each gate then costs its queries and one validation."""
    add_order(raw, "o1", "10.00")
    quality._gate_batch_definition.cache_clear()
    quality.check_raw_inputs(DAY)
    quality.check_raw_inputs(DAY)
    info = quality._gate_batch_definition.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    recorded = raw.execute(
        "select count(*), bool_and(success) from winback.quality_results"
        " where gate = 'raw_inputs' and run_date = %s",
        (DAY,),
    ).fetchone()
    assert recorded == (len(quality.raw_input_checks(DAY)), True)


def test_growth_limit_has_a_floor_for_tiny_audiences():
    # 1 -> 5 customers is 5x, but an audience of 5 is no sign of a broken rule.
    assert quality.audience_growth_limit(1, 3.0, 100) == 100
    # Above the floor the multiple decides: 200 customers may reach 600, not 601.
    assert quality.audience_growth_limit(200, 3.0, 100) == 600
    # Without a floor, the multiple alone (the gate as it was).
    assert quality.audience_growth_limit(1, 3.0, 0) == 3
    with pytest.raises(ValueError, match="growth_floor"):
        quality.audience_growth_limit(1, 3.0, -1)
    with pytest.raises(ValueError, match="max_growth"):
        quality.audience_growth_limit(1, 0.5, 100)


def add_audience(conn, campaign_id: str, run_date: date, customers: int) -> None:
    conn.execute(
        "insert into winback.campaign_audiences (run_date, campaign_id, customer_id, channel,"
        " assigned_group) select %s, %s, 'c' || n, 'sms', 'treatment'"
        " from generate_series(1, %s) n",
        (run_date, campaign_id, customers),
    )
    conn.commit()


@pytest.fixture
def audiences(conn):
    tables.ensure_schema(conn)
    conn.execute("delete from winback.campaign_audiences")
    conn.commit()
    return conn


def growth_outcomes(run_date: date, max_growth: float = 3.0, floor: int = 100) -> dict:
    with db.connect() as conn:
        checks = quality.audience_growth_checks(conn, run_date, max_growth, floor)
    return {o.name.split()[0]: o.success for o in quality.run_checks("audiences", checks, run_date)}


def test_a_tiny_audience_growing_passes_and_a_blow_up_fails(audiences):
    before = DAY - timedelta(days=1)
    add_audience(audiences, "tiny_growth", before, 1)
    add_audience(audiences, "tiny_growth", DAY, 5)  # 5x, under the floor: the day-3 case
    add_audience(audiences, "steady", before, 300)
    add_audience(audiences, "steady", DAY, 900)  # exactly 3x
    add_audience(audiences, "blow_up", before, 10)
    add_audience(audiences, "blow_up", DAY, 500)  # 50x and past the floor: a broken rule
    assert growth_outcomes(DAY) == {"tiny_growth": True, "steady": True, "blow_up": False}
    # The floor is a setting: without it, the tiny audience's 5x fails again.
    assert growth_outcomes(DAY, floor=0)["tiny_growth"] is False
    with db.connect() as conn:
        checks = quality.audience_growth_checks(conn, DAY, 3.0, 100)
    with pytest.raises(quality.QualityGateError, match="blow_up audience at most 3x"):
        quality.enforce("audiences", quality.run_checks("audiences", checks, DAY))


def loaded_a_delivery(conn, load_date: date) -> None:
    raw_schema.ensure_raw_schema(conn)
    conn.execute(
        "insert into raw.load_batches (load_date, table_name, source_file, rows_read,"
        " rows_loaded, rows_quarantined) values (%s, 'orders', %s, 1, 1, 0)"
        " on conflict do nothing",
        (load_date, f"{load_date}/orders.csv"),
    )
    conn.commit()


def test_growth_is_judged_against_the_last_day_that_loaded_a_delivery(audiences):
    """A backfill: a delivery, days rebuilt without files (the audience ages away), then a
    delivery of weeks of orders. The day before it is no yardstick; the last delivered is."""
    raw_schema.ensure_raw_schema(audiences)
    audiences.execute("delete from raw.load_batches")
    audiences.commit()
    delivered = DAY - timedelta(days=30)
    loaded_a_delivery(audiences, delivered)
    add_audience(audiences, "personal_timing", delivered, 180)
    for back, size in ((20, 160), (10, 110), (1, 40)):  # rebuilt from the warehouse
        add_audience(audiences, "personal_timing", DAY - timedelta(days=back), size)
    add_audience(audiences, "personal_timing", DAY, 154)
    loaded_a_delivery(audiences, DAY)
    with db.connect() as conn:
        assert quality.growth_baseline(conn, DAY) == (delivered, True)
        (check,) = quality.audience_growth_checks(conn, DAY, 3.0, 100)
    assert f"the previous delivered day's run (180 on {delivered})" in check.name
    assert growth_outcomes(DAY) == {"personal_timing": True}
    # Had the day before loaded a delivery too, 154 after 40 would be the jump to stop.
    loaded_a_delivery(audiences, DAY - timedelta(days=1))
    assert growth_outcomes(DAY) == {"personal_timing": False}
    # With no delivered day before it at all, the latest run is the yardstick, as before.
    audiences.execute("delete from raw.load_batches")
    audiences.commit()
    with db.connect() as conn:
        assert quality.growth_baseline(conn, DAY) == (DAY - timedelta(days=1), False)
    assert growth_outcomes(DAY) == {"personal_timing": False}
