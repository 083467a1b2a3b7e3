"""Measurement on the real PostgreSQL with hand-built history, audiences and orders."""

from __future__ import annotations

import math
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
    campaign: str = "we_miss_you",
) -> None:
    conn.execute(
        "insert into raw.customers (customer_id, country, created_at, _load_date, _source_file,"
        " _source_line) values (%s, 'IT', '2024-01-01', '2026-01-01', 'f', 1)",
        (cid,),
    )
    conn.execute(
        "insert into winback.campaign_audiences (run_date, campaign_id, customer_id, channel,"
        " assigned_group, lifecycle_stage, entered_on) values (%s, %s, %s, 'email', %s, %s, %s)",
        (entered, campaign, cid, group, stage_at_start, entered),
    )
    # The history's validity ranges: the stage at the start holds until the stage at the
    # measurement date (window end + 14 days of attribution) replaces it.
    measured_on = END + timedelta(days=14)
    conn.execute(
        "insert into marts.customer_lifecycle_history"
        " (customer_id, valid_from, valid_to, lifecycle_stage) values (%s, %s, %s, %s)",
        (cid, START, measured_on if stage_at_end else None, stage_at_start),
    )
    if stage_at_end:
        conn.execute(
            "insert into marts.customer_lifecycle_history"
            " (customer_id, valid_from, lifecycle_stage) values (%s, %s, %s)",
            (cid, measured_on, stage_at_end),
        )
    if group == "treatment":
        conn.execute(
            "insert into winback.outbox (idempotency_key, run_date, campaign_id, step_id,"
            " customer_id, channel, payload) values (%s, %s, %s, 'first_touch', %s,"
            " 'email', '{}')",
            (f"k-{campaign}-{cid}", entered, campaign, cid),
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
    for i in range(4):  # 4 of 10 treatment customers came back, one with a coupon
        add_order(
            warehouse,
            f"t{i}",
            START + timedelta(days=5 + i),
            coupon="C1" if i == 0 else None,
            discount=5.0 if i == 0 else None,
        )
    add_order(warehouse, "h0", START + timedelta(days=3))  # 1 of 5 holdout
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


def test_revenue_uplift_has_welch_interval_per_customer_and_net_of_incentive(warehouse):
    for i in range(10):
        add_customer(warehouse, f"t{i}", "treatment", "inactive")
    for i in range(5):
        add_customer(warehouse, f"h{i}", "holdout", "inactive")
    for i, total in enumerate([80.0, 40.0, 60.0]):
        add_order(warehouse, f"t{i}", START + timedelta(days=2), total=total,
                  coupon="C" if i == 0 else None, discount=10.0 if i == 0 else None)  # fmt: skip
    add_order(warehouse, "h0", START + timedelta(days=2), total=30.0)
    warehouse.commit()
    row = measurement.measure_window(warehouse, "we_miss_you", START, END)[0].row()
    # Revenue per customer: 180/10 against 30/5; Welch's interval computed by hand.
    treatment = [80.0, 40.0, 60.0] + [0.0] * 7
    holdout = [30.0] + [0.0] * 4
    from statistics import variance

    from scipy.stats import t

    a, b = variance(treatment) / 10, variance(holdout) / 5
    freedom = (a + b) ** 2 / (a**2 / 9 + b**2 / 4)
    half = t.ppf(0.975, freedom) * (a + b) ** 0.5
    assert row["revenue_per_customer_uplift"] == pytest.approx(18 - 6)
    assert row["revenue_per_customer_uplift_low"] == pytest.approx(12 - half)
    assert row["revenue_per_customer_uplift_high"] == pytest.approx(12 + half)
    assert float(row["incremental_revenue_low"]) == pytest.approx(10 * (12 - half))
    # Net of the coupon: the treatment's revenue less its incentive cost, per customer.
    assert row["net_value_per_customer"] == pytest.approx(17 - 6)
    assert float(row["net_value"]) == pytest.approx(10 * 11)
    assert float(row["net_value_low"]) < 110 < float(row["net_value_high"])


def test_every_targeted_customer_counts_with_a_stage_at_entry_breakdown(warehouse):
    """Customers at risk count too; the inactive part keeps the source articles' count."""
    for i in range(6):
        add_customer(warehouse, f"ti{i}", "treatment", "inactive", stage_at_end="active")
        add_customer(warehouse, f"tr{i}", "treatment", "at_risk", stage_at_end="active")
    for i in range(3):
        add_customer(warehouse, f"hi{i}", "holdout", "inactive", stage_at_end="inactive")
        add_customer(warehouse, f"hr{i}", "holdout", "at_risk", stage_at_end="at_risk")
    for cid in ("ti0", "ti1", "tr0", "tr1", "tr2", "hr0"):
        add_order(warehouse, cid, START + timedelta(days=4))
    warehouse.commit()
    results = measurement.measure_window(warehouse, "we_miss_you", START, END)
    by = {(r.breakdown, r.breakdown_value): r for r in results}
    overall = by[("overall", "all")]
    assert (overall.treatment.customers, overall.holdout.customers) == (12, 6)
    assert (overall.treatment.reactivated, overall.holdout.reactivated) == (5, 1)
    inactive, at_risk = by[("stage_at_entry", "inactive")], by[("stage_at_entry", "at_risk")]
    assert (inactive.treatment.customers, inactive.treatment.reactivated) == (6, 2)
    assert (inactive.holdout.customers, inactive.holdout.reactivated) == (3, 0)
    assert (at_risk.treatment.reactivated, at_risk.holdout.reactivated) == (3, 1)
    assert at_risk.result.absolute == pytest.approx(3 / 6 - 1 / 3)
    # "Inactive before, not inactive now" is counted among the inactive at entry only.
    row = overall.row()
    assert row["treatment_inactive_at_entry"] == 6
    assert row["treatment_left_inactive_stage"] == 6
    assert row["holdout_left_inactive_stage"] == 0


def test_customers_who_entered_before_the_window_are_not_in_its_cohort(warehouse):
    add_customer(warehouse, "early", "treatment", "inactive", entered=START - timedelta(days=3))
    # Still in the audience on a day of the window, but entered before it.
    warehouse.execute(
        "insert into winback.campaign_audiences (run_date, campaign_id, customer_id, channel,"
        " assigned_group, lifecycle_stage, entered_on)"
        " values (%s, 'we_miss_you', 'early', 'email', 'treatment', 'inactive', %s)",
        (START + timedelta(days=1), START - timedelta(days=3)),
    )
    add_customer(warehouse, "t0", "treatment", "inactive", entered=START + timedelta(days=2))
    add_customer(warehouse, "h0", "holdout", "inactive")
    warehouse.commit()
    overall = measurement.measure_window(warehouse, "we_miss_you", START, END)[0]
    assert overall.treatment.customers == 1


def test_a_too_small_holdout_says_how_many_more_customers_it_needs(warehouse):
    from winback.measurement import uplift

    for i in range(300):
        add_customer(warehouse, f"t{i}", "treatment", "inactive")
    for i in range(3):
        add_customer(warehouse, f"h{i}", "holdout", "inactive")
    warehouse.commit()
    planning = measurement.Planning(baseline_rate=0.05, minimum_uplift=0.1)
    row = measurement.measure_window(warehouse, "we_miss_you", START, END, planning=planning)[
        0
    ].row()
    share = uplift.required_holdout_share(303, 0.05, 0.1)
    assert row["holdout_customers_needed"] == math.ceil(share * 303) - 3 > 0
    assert row["audience_customers_needed"] is None
    # An empty holdout is measured too: the rates are missing, the advice is not.
    warehouse.execute("delete from winback.campaign_audiences where assigned_group = 'holdout'")
    warehouse.commit()
    row = measurement.measure_window(warehouse, "we_miss_you", START, END, planning=planning)[
        0
    ].row()
    assert row["absolute_uplift"] is None and row["holdout_customers_needed"] > 0


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
        add_customer(warehouse, f"t{i}", "treatment", "inactive", stage_at_end="active")
    for i in range(3):
        add_customer(warehouse, f"h{i}", "holdout", "lost")
    add_order(warehouse, "t1", START + timedelta(days=2))
    warehouse.commit()
    first = [r.row() for r in measurement.measure_window(warehouse, "we_miss_you", START, END)]
    # Later: a newer history day and a new audience day outside the window arrive.
    add_order(warehouse, "t2", END + timedelta(days=60), loaded=END + timedelta(days=60))
    later = END + timedelta(days=60)  # t3 is lost by then: its open range closes
    warehouse.execute(
        "update marts.customer_lifecycle_history set valid_to = %s"
        " where customer_id = 't3' and valid_to is null",
        (later,),
    )
    warehouse.execute(
        "insert into marts.customer_lifecycle_history"
        " (customer_id, valid_from, lifecycle_stage) values ('t3', %s, 'lost')",
        (later,),
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
    assert data.program == []  # the global control panel says it was not measured
    from winback.measurement import global_control

    global_control.measure_program_window(warehouse, START, END, 14)
    data = report.load(warehouse, "we_miss_you", START, END)
    assert data.program[0]["campaign_id"] == "all campaigns"
    assert data.treatment_curve[-1] == pytest.approx(2 / 8)
    assert data.holdout_curve[-1] == pytest.approx(1 / 4)
    assert data.treatment_curve[3] == 0 and data.treatment_curve[4] == pytest.approx(1 / 8)
    # A dry run sent nothing: its intents are "would send", and the mode says so.
    assert data.funnel == {
        "would send": 8, "delivered": 2, "opened": 1, "clicked": 1, "purchased": 2,
    }  # fmt: skip
    assert data.mode == "dry run: nothing was sent"
    html_path, png_path = report.write(data, tmp_path)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.stat().st_mode & 0o777 for p in (html_path, png_path)} == {0o600}, "private"
    assert "data:image/png;base64," in html_path.read_text()
    text = report.render_text(data)
    assert "funnel: would send 8 → delivered 2" in text and "mode: dry run" in text
    assert "sent 8" not in text.replace("would send 8", "")
    assert "overall: all" in text and "2/8" in text.replace(" ", "")
    assert "stage_at_entry: inactive" in text and "revenue/customer [95% CI]" in text
    assert "all campaigns against the global control group" in text
    page = html_path.read_text()
    assert "stage_at_entry: inactive" in page and "revenue uplift per customer" in page
    assert "All campaigns against the global control group" in page


def test_a_live_window_counts_only_what_the_provider_acknowledged(warehouse):
    from winback.measurement import report

    for i in range(4):
        add_customer(warehouse, f"t{i}", "treatment", "inactive")
    add_customer(warehouse, "h0", "holdout", "inactive")
    for status, customers in (("acknowledged", ("t0", "t1")), ("rejected", ("t2",)),
                              ("unclear", ("t3",))):  # fmt: skip
        warehouse.execute(
            "insert into winback.send_ledger (idempotency_key, mode, status, provider, run_date)"
            " select idempotency_key, 'live', %s, 'smtp', run_date from winback.outbox"
            " where customer_id = any(%s)",
            (status, list(customers)),
        )
    # Shop-side tracking is not a provider's delivery report: it does not count.
    warehouse.execute(
        "insert into raw.engagement_events (event_id, customer_id, channel, event_type,"
        " occurred_at, campaign_id, _load_date, _source_file, _source_line)"
        " values ('x1', 't2', 'email', 'delivered', %s, 'we_miss_you', %s, 'f', 1)",
        (START, START),
    )
    warehouse.commit()
    measurement.measure_window(warehouse, "we_miss_you", START, END)
    data = report.load(warehouse, "we_miss_you", START, END)
    assert data.mode == "live"
    from winback import summary

    assert summary.send_mode([("c", "email", "dry_run", "would_send", 3)]).startswith("dry run")
    assert summary.send_mode([("c", "email", "live", "acknowledged", 3)]).startswith("live")
    assert data.funnel["sent"] == 2 and data.funnel["delivered"] == 0


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


def test_the_intervals_cover_the_simulated_truth(conn):
    """A small version of bench/validate_uplift_coverage.py (which runs 100 seeds): every
    example campaign and the global control, rate and revenue, against the exact truth."""
    from winback.simulation import measurement_validation

    estimates = measurement_validation.coverage(conn, range(3), customers=1000)
    names = {e.name for e in estimates}
    assert names == {*measurement_validation.example_holdout_shares(), "global control"}
    assert len(estimates) == 3 * len(names) * 2
    assert sum(e.covers_truth for e in estimates) >= 0.85 * len(estimates)
    truth = sum(e.truth for e in estimates if e.metric == "rate") / (3 * len(names))
    measured = sum(e.measured for e in estimates if e.metric == "rate") / (3 * len(names))
    assert measured == pytest.approx(truth, abs=0.01)
    null = measurement_validation.coverage(conn, range(100, 103), customers=1000, uplifts={})
    assert all(e.truth == 0 for e in null)
    assert sum(e.excludes_zero for e in null) <= 0.15 * len(null)


def test_the_program_is_measured_against_the_global_control(warehouse):
    from winback import summary
    from winback.measurement import global_control

    for campaign in ("we_miss_you", "sms_reactivation"):
        for i in range(8):
            add_customer(warehouse, f"{campaign}-t{i}", "treatment", "inactive", campaign=campaign)
        for i in range(2):
            add_customer(warehouse, f"{campaign}-h{i}", "holdout", "at_risk", campaign=campaign)
        for i in range(5):
            add_customer(
                warehouse, f"{campaign}-g{i}", "global_control", "inactive", campaign=campaign
            )
    # A customer in two campaigns' audiences in the window counts once, from the first.
    warehouse.execute(
        "insert into winback.campaign_audiences (run_date, campaign_id, customer_id, channel,"
        " assigned_group, lifecycle_stage) values (%s, 'later_one', 'we_miss_you-t0', 'sms',"
        " 'treatment', 'active')",
        (START + timedelta(days=3),),
    )
    for cid in ("we_miss_you-t0", "we_miss_you-t1", "sms_reactivation-h0", "we_miss_you-g0"):
        add_order(warehouse, cid, START + timedelta(days=6), total=40.0)
    warehouse.commit()
    campaign_row = measurement.measure_window(warehouse, "we_miss_you", START, END)[0]
    assert campaign_row.treatment.customers == 8  # the control is in neither campaign group
    results = global_control.measure_program_window(warehouse, START, END, 14)
    by = {(r.breakdown, r.breakdown_value): r for r in results}
    overall = by[("overall", "all")]
    assert (overall.treatment.customers, overall.treatment.reactivated) == (20, 3)
    assert (overall.holdout.customers, overall.holdout.reactivated) == (10, 1)
    assert overall.result.absolute == pytest.approx(3 / 20 - 1 / 10)
    assert overall.revenue.difference == pytest.approx(120 / 20 - 40 / 10)
    assert by[("stage_at_entry", "at_risk")].holdout.customers == 0  # only the program's
    stored = global_control.load(warehouse, START, END)
    assert stored[0]["treatment_customers"] == 20 and stored[0]["campaign_id"] == "all campaigns"
    warehouse.commit()
    text = summary.render(
        summary.collect(warehouse, END + timedelta(days=14)),
        truths={summary.GLOBAL_CONTROL: {"rate": 0.04, "revenue": 1.5}},
    )
    assert "Send mode: nothing to send today" in text
    assert "Program against the global control group" in text
    assert "program 3/20 (15.0%), control 1/10 (10.0%)" in text
    assert "reactivation uplift +5.0 pp" in text
    assert "(true +4.0 pp)" in text and "(true +1.50)" in text


def test_bad_arguments_are_refused_in_one_line_and_the_stored_result_is_kept(warehouse, capsys):
    from winback import cli

    add_customer(warehouse, "t0", "treatment", "inactive")
    add_customer(warehouse, "h0", "holdout", "inactive")
    add_order(warehouse, "t0", START + timedelta(days=2))
    warehouse.commit()
    window = ["--from", str(START), "--to", str(END)]
    assert cli.main(["measure", "we_miss_you", *window]) == 0

    def stored():
        return warehouse.execute(
            "select attribution_days, treatment_reactivated, computed_at"
            " from winback.campaign_results where breakdown = 'overall'"
        ).fetchall()

    good = stored()
    warehouse.rollback()  # end this connection's transaction: the CLI uses its own
    capsys.readouterr()
    for argv, reason in [
        (["measure", "we_miss_you", *window, "--attribution-days", "-5"], "attribution days"),
        (["report", "we_miss_you", *window, "--attribution-days", "-5", "--measure"],
         "attribution days"),
        (["measure", "we_miss_you", "--from", str(END), "--to", str(START)], "ends"),
        (["measure", "no_such_campaign", *window], "no campaign 'no_such_campaign'"),
        (["report", "no_such_campaign", *window], "no campaign"),
    ]:  # fmt: skip
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and reason in err, err
    assert stored() == good
    warehouse.rollback()
    with pytest.raises(ValueError, match="attribution days"):
        measurement.measure_window(warehouse, "we_miss_you", START, END, -1)
    # Another valid attribution period replaces the result, and says what it replaced.
    assert cli.main(["measure", "we_miss_you", *window, "--attribution-days", "7"]) == 0
    assert "measured with 14 days of attribution, by one with 7" in capsys.readouterr().err
