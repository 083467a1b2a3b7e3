"""Measurement on the real PostgreSQL with hand-built history, audiences and orders."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from winback.measurement import windows as measurement

START, END = date(2026, 9, 1), date(2026, 9, 30)


@pytest.fixture
def warehouse(conn):
    """Empty raw, winback and a hand-fillable lifecycle history (as the validation uses)."""
    from winback.simulation import measurement_validation

    measurement_validation.reset_measurement_tables(conn)
    conn.commit()
    return conn


def add_customer(
    conn,
    cid: str,
    group: str,
    stage_at_start: str,
    entered: date = START,
    stage_at_end: str | None = None,
) -> None:
    conn.execute(
        "insert into raw.customers (customer_id, country, created_at, _load_date, _source_file,"
        " _source_line) values (%s, 'IT', '2024-01-01', '2026-01-01', 'f', 1)",
        (cid,),
    )
    conn.execute(
        "insert into winback.campaign_audiences (run_date, campaign_id, customer_id, channel,"
        " assigned_group) values (%s, 'we_miss_you', %s, 'email', %s)",
        (entered, cid, group),
    )
    conn.execute(
        "insert into marts.customer_lifecycle_history values (%s, %s, %s)",
        (cid, START, stage_at_start),
    )
    if stage_at_end:
        conn.execute(
            "insert into marts.customer_lifecycle_history values (%s, %s, %s)",
            (cid, END + timedelta(days=14), stage_at_end),
        )
    if group == "treatment":
        conn.execute(
            "insert into winback.outbox (idempotency_key, run_date, campaign_id, step_id,"
            " customer_id, channel, payload) values (%s, %s, 'we_miss_you', 'first_touch', %s,"
            " 'email', '{}')",
            (f"k-{cid}", entered, cid),
        )


def add_order(
    conn,
    cid: str,
    ordered_at: date,
    total: float = 50.0,
    loaded: date | None = None,
    coupon: str | None = None,
    discount: float | None = None,
) -> None:
    conn.execute(
        "insert into raw.orders (order_id, customer_id, ordered_at, status, total, currency,"
        " coupon_code, discount_total, _load_date, _source_file, _source_line)"
        " values (%s, %s, %s, 'completed', %s, 'EUR', %s, %s, %s, 'f', 1)",
        (f"o-{cid}-{ordered_at}", cid, ordered_at, total, coupon, discount, loaded or ordered_at),
    )


def test_rates_uplift_revenue_and_cost(warehouse):
    for i in range(10):
        add_customer(warehouse, f"t{i}", "treatment", "inactive")
    for i in range(5):
        add_customer(warehouse, f"h{i}", "holdout", "inactive")
    add_customer(warehouse, "active_one", "treatment", "active")  # not inactive: not counted
    for i in range(4):  # 4 of 10 treatment customers came back, one with a coupon
        add_order(
            warehouse,
            f"t{i}",
            START + timedelta(days=5 + i),
            coupon="C1" if i == 0 else None,
            discount=5.0 if i == 0 else None,
        )
    add_order(warehouse, "h0", START + timedelta(days=3))  # 1 of 5 holdout
    add_order(warehouse, "active_one", START + timedelta(days=3))
    warehouse.commit()

    results = measurement.measure_window(warehouse, "we_miss_you", START, END)
    overall = results[0]
    assert (overall.treatment.customers, overall.treatment.reactivated) == (10, 4)
    assert (overall.holdout.customers, overall.holdout.reactivated) == (5, 1)
    assert overall.result.absolute == pytest.approx(0.2)
    assert overall.result.absolute_interval.low < 0.2 < overall.result.absolute_interval.high
    row = overall.row()
    assert row["incremental_revenue"] == pytest.approx(200 - 10 * 50 / 5)
    assert row["incentive_cost"] == pytest.approx(5.0)
    assert row["net_value"] == pytest.approx(95.0)
    breakdowns = {(r.breakdown, r.breakdown_value) for r in results}
    assert {("overall", "all"), ("channel", "email"), ("step", "first_touch")} <= breakdowns
    stored = warehouse.execute("select count(*) from winback.campaign_results").fetchone()[0]
    assert stored == len(results)


def test_orders_after_the_attribution_period_or_loaded_late_do_not_count(warehouse):
    add_customer(warehouse, "t0", "treatment", "inactive")
    add_customer(warehouse, "t1", "treatment", "inactive")
    add_customer(warehouse, "h0", "holdout", "inactive")
    add_order(warehouse, "t0", END + timedelta(days=20))  # after end + 14 days
    add_order(warehouse, "t1", END, loaded=END + timedelta(days=40))  # arrived after measuring
    warehouse.commit()
    overall = measurement.measure_window(warehouse, "we_miss_you", START, END)[0]
    assert overall.treatment.reactivated == 0


def test_measuring_again_later_gives_the_same_numbers(warehouse):
    for i in range(6):
        add_customer(warehouse, f"t{i}", "treatment", "inactive", stage_at_end="reactivated")
    for i in range(3):
        add_customer(warehouse, f"h{i}", "holdout", "lost")
    add_order(warehouse, "t1", START + timedelta(days=2))
    warehouse.commit()
    first = [r.row() for r in measurement.measure_window(warehouse, "we_miss_you", START, END)]
    # Later: a newer history day and a new audience day outside the window arrive.
    add_order(warehouse, "t2", END + timedelta(days=60), loaded=END + timedelta(days=60))
    warehouse.execute(
        "insert into marts.customer_lifecycle_history values ('t3', %s, 'active')",
        (END + timedelta(days=60),),
    )
    warehouse.commit()
    second = [r.row() for r in measurement.measure_window(warehouse, "we_miss_you", START, END)]
    assert first == second
    assert first[0]["treatment_left_inactive_stage"] == 6


def test_the_report_writes_html_and_png_and_prints_numbers(warehouse, tmp_path):
    from winback.measurement import report

    for i in range(8):
        add_customer(warehouse, f"t{i}", "treatment", "inactive")
    for i in range(4):
        add_customer(warehouse, f"h{i}", "holdout", "inactive")
    add_order(warehouse, "t0", START + timedelta(days=4))
    add_order(warehouse, "t1", START + timedelta(days=9))
    add_order(warehouse, "h0", START + timedelta(days=20))
    warehouse.execute(
        "insert into winback.send_ledger (idempotency_key, mode, status, provider, run_date)"
        " select idempotency_key, 'dry_run', 'would_send', 'smtp', run_date from winback.outbox"
    )
    # Provider feedback: t0 and t1 delivered, t0 opened and clicked (twice: one counts).
    for event_id, customer, event_type in [
        ("e1", "t0", "delivered"), ("e2", "t1", "delivered"), ("e3", "t0", "opened"),
        ("e4", "t0", "clicked"), ("e5", "t0", "clicked"),
    ]:  # fmt: skip
        warehouse.execute(
            "insert into winback.message_events (event_id, provider, event_type, channel,"
            " idempotency_key, customer_id, campaign_id, occurred_at)"
            " select %s, 'smtp', %s, 'email', idempotency_key, customer_id, campaign_id, now()"
            " from winback.outbox where customer_id = %s",
            (event_id, event_type, customer),
        )
    warehouse.commit()
    measurement.measure_window(warehouse, "we_miss_you", START, END)
    data = report.load(warehouse, "we_miss_you", START, END)
    assert data.treatment_curve[-1] == pytest.approx(2 / 8)
    assert data.holdout_curve[-1] == pytest.approx(1 / 4)
    assert data.treatment_curve[3] == 0 and data.treatment_curve[4] == pytest.approx(1 / 8)
    assert data.funnel == {
        "sent": 8, "delivered": 2, "opened": 1, "clicked": 1, "purchased": 2,
    }  # fmt: skip
    html_path, png_path = report.write(data, tmp_path)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in html_path.read_text()
    text = report.render_text(data)
    assert "overall: all" in text and "2/8" in text.replace(" ", "")


def test_a_window_that_was_not_measured_says_so(warehouse):
    from winback.measurement import report

    with pytest.raises(LookupError, match="measure the window first"):
        report.load(warehouse, "we_miss_you", START, END)


def test_windows_close_once_their_attribution_period_has_passed():
    starts, ends = date(2026, 1, 1), date(2026, 3, 15)
    closing = measurement.windows_closing_on
    assert closing(starts, ends, date(2026, 2, 13), 30, 14) == [
        (date(2026, 1, 1), date(2026, 1, 30))
    ]
    assert closing(starts, ends, date(2026, 2, 14), 30, 14) == []
    # The last, shorter window ends with the campaign.
    assert closing(starts, ends, date(2026, 3, 29), 30, 14) == [
        (date(2026, 3, 2), date(2026, 3, 15))
    ]


def test_the_interval_covers_the_simulated_truth(conn):
    """A small version of bench/validate_uplift_coverage.py (which runs 100 seeds)."""
    from winback.simulation import measurement_validation

    results = measurement_validation.coverage(conn, range(20), customers=2000, uplift=0.04)
    assert sum(r.covers_truth for r in results) >= 17
    mean = sum(r.measured_uplift for r in results) / len(results)
    assert mean == pytest.approx(0.04, abs=0.01)
    null = measurement_validation.coverage(conn, range(100, 120), customers=2000, uplift=0.0)
    assert sum(r.excludes_zero for r in null) <= 3
