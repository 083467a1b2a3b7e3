"""Audiences on the real PostgreSQL: eligibility, priority, holdout, caps, quiet hours.

`marts.customer_features` is replaced here by a table with every documented column (types
from `winback.campaigns.rules.feature_columns()`), and the marts the journeys read
(orders, engagement events) by tables, so each rule is exercised on customers made for it.
`Shop` is shared with tests/test_journeys.py, which advances it day by day.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from winback.campaigns import audiences, messages, rules
from winback.campaigns import campaign_files as campaigns
from winback.delivery import ledger

RUN = date(2026, 11, 20)

DEFAULTS = {
    "first_name": "Ada",
    "phone": "+390669881234",
    "country_code": "IT",
    "rfm_segment": "At risk",
    "lifecycle_stage": "inactive",
    "churn_risk_band": "high",
    "is_email_subscribed": True,
    "has_valid_email": True,
    "is_email_suppressed": False,
    "is_sms_subscribed": True,
    "has_valid_phone": True,
    "is_sms_suppressed": False,
    "orders_count": 2,
    "days_since_last_order": 200,
    "last_purchased_category": "shoes",
    "last_purchased_products": "red shoes",
    "favourite_category": "shoes",
    "points_balance": 0,
}


class Shop:
    """A tiny warehouse: customer features, orders and engagement events, one day at a time."""

    def __init__(self, conn):
        self.conn = conn
        columns = rules.feature_columns()
        definitions = ", ".join(f"{name} {kind}" for name, kind in columns.items())
        conn.execute(
            f"""
            drop schema if exists marts cascade;
            drop schema if exists staging cascade;
            drop schema if exists winback cascade;
            create schema marts;
            create table marts.customer_features ({definitions}, primary key (customer_id));
            create table marts.orders (
                order_id text primary key, customer_id text, ordered_at timestamptz,
                order_date date, is_completed boolean);
            create table marts.order_lines (
                order_id text, line_number integer, product_id text, quantity integer);
            create table marts.products (
                product_id text primary key, product_name text, category text,
                list_price numeric, is_merchandise boolean not null default true);
            create table marts.engagement_events (
                event_id text primary key, customer_id text, channel text, event_type text,
                occurred_at timestamptz, campaign_id text, message_id text);
            """
        )
        conn.commit()
        self._orders = 0
        self._events = 0

    def add(self, customer_id: str, **features) -> None:
        values = {
            **DEFAULTS,
            "customer_id": customer_id,
            "email": f"{customer_id}@example.com",
            **features,
        }
        names = ", ".join(values)
        placeholders = ", ".join(f"%({c})s" for c in values)
        self.conn.execute(
            f"insert into marts.customer_features ({names}) values ({placeholders})", values
        )

    def add_many(self, count: int, prefix: str = "c", **features) -> list[str]:
        ids = [f"{prefix}{i:05d}" for i in range(count)]
        for customer_id in ids:
            self.add(customer_id, **features)
        return ids

    def update(self, customer_id: str | None = None, **features) -> None:
        assignments = ", ".join(f"{c} = %({c})s" for c in features)
        where = "where customer_id = %(customer_id)s" if customer_id else ""
        self.conn.execute(
            f"update marts.customer_features set {assignments} {where}",
            {**features, "customer_id": customer_id},
        )

    def order(self, customer_id: str, day: date, products: tuple[str, ...] = ()) -> None:
        self._orders += 1
        order_id = f"o{self._orders}"
        self.conn.execute(
            "insert into marts.orders values (%s, %s, %s, %s, true)",
            (order_id, customer_id, datetime.combine(day, datetime.min.time()), day),
        )
        for line, product_id in enumerate(products, start=1):
            self.conn.execute(
                "insert into marts.order_lines values (%s, %s, %s, 1)",
                (order_id, line, product_id),
            )

    def product(self, product_id: str, name: str, category: str, price: float = 10) -> None:
        self.conn.execute(
            "insert into marts.products values (%s, %s, %s, %s)",
            (product_id, name, category, price),
        )

    def event(
        self, customer_id: str, campaign_id: str, channel: str, kind: str, day: date, hour=12
    ):
        self._events += 1
        self.conn.execute(
            "insert into marts.engagement_events values (%s, %s, %s, %s, %s, %s, null)",
            (
                f"e{self._events}",
                customer_id,
                channel,
                kind,
                datetime.combine(day, datetime.min.time(), tzinfo=ZoneInfo("UTC"))
                + timedelta(hours=hour),
                campaign_id,
            ),
        )

    def run(self, campaign_list, day: date) -> dict[str, audiences.AudienceResult]:
        results = audiences.build_audiences(self.conn, list(campaign_list), day)
        self.conn.commit()
        return {r.campaign_id: r for r in results}

    def outbox(self, campaign_id: str | None = None) -> list[dict]:
        cursor = self.conn.execute(
            "select * from winback.outbox where %(c)s::text is null or campaign_id = %(c)s "
            "order by run_date, customer_id, step_id",
            {"c": campaign_id},
        )
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def journey(self, campaign_id: str, customer_id: str) -> dict:
        cursor = self.conn.execute(
            "select * from winback.journey_state where campaign_id = %s and customer_id = %s",
            (campaign_id, customer_id),
        )
        row = cursor.fetchone()
        return dict(zip([c.name for c in cursor.description], row, strict=True)) if row else {}


def campaign(**overrides) -> campaigns.Campaign:
    document = {
        "id": "we_miss_you",
        "description": "test",
        "starts_on": "2026-01-01",
        "ends_on": "2026-12-31",
        "holdout": {"share": 0.1},
        "channels": ["email"],
        "audience": {"rfm_segments": ["At risk", "Hibernating"]},
        "steps": [
            {
                "id": "first_touch",
                "channel": "email",
                "subject": "{{ first_name }}, we miss you",
                "body": "{{ days_since_last_order }} days",
            }
        ],
    }
    document.update(overrides)
    return campaigns.Campaign.model_validate(document)


def holdout(share: float, stratify_by: str = "rfm_segment") -> dict:
    return {"share": share, "stratify_by": stratify_by}


@pytest.fixture(autouse=True)
def without_global_control(monkeypatch):
    """Campaign mechanics are counted here without the global control group, which
    tests/test_global_control.py covers (test_journeys.py imports this fixture too)."""
    from winback import config

    monkeypatch.setenv(config.GLOBAL_CONTROL_SHARE_ENV, "0")


@pytest.fixture
def shop(conn):
    return Shop(conn)


def test_each_filter_removes_its_customers_and_is_logged(shop):
    shop.add("ok")
    shop.add("no_consent", is_email_subscribed=False)
    shop.add("bad_email", has_valid_email=False)
    shop.add("unsubscribed", is_email_suppressed=True)
    shop.add("champion", rfm_segment="Champions")
    result = shop.run([campaign(holdout=holdout(0.0))], RUN)["we_miss_you"]
    assert result.candidates == 4
    assert result.filters == [
        ("newsletter consent", 3),
        ("deliverable email", 2),
        ("not suppressed for email", 1),
        (audiences.PRIORITY_FILTER, 1),
        (audiences.ALREADY_THROUGH_FILTER, 1),
    ]
    logged = shop.conn.execute(
        "select filter_name, customers_before, customers_after, stage "
        "from winback.audience_filter_log order by position"
    ).fetchall()
    assert logged[0] == ("newsletter consent", 4, 3, "entry")
    assert ("first_touch: frequency caps", 1, 1, "first_touch") in logged
    outbox = shop.outbox()
    assert [(m["customer_id"], m["payload"]["subject"]) for m in outbox] == [
        ("ok", "Ada, we miss you")
    ]
    assert outbox[0]["payload"]["to"] == "ok@example.com"


def test_the_audience_rule_is_compiled_with_the_run_date(shop):
    shop.add("due", expected_next_order_date=RUN - timedelta(days=2))
    shop.add("not_yet", expected_next_order_date=RUN + timedelta(days=2))
    shop.add("long_ago", expected_next_order_date=RUN - timedelta(days=30))
    rule = {
        "rule": "expected_next_order_date < run_date and "
        "expected_next_order_date >= run_date - 7 days"
    }
    result = shop.run([campaign(holdout=holdout(0.0), audience=rule)], RUN)["we_miss_you"]
    assert result.candidates == 1
    assert [m["customer_id"] for m in shop.outbox()] == ["due"]


def test_a_quoted_injection_in_a_rule_is_only_data(shop):
    shop.add("ada")
    shop.add("robert", first_name="Robert'); drop table marts.customer_features; --")
    rule = {"rule": "first_name = 'Robert''); drop table marts.customer_features; --'"}
    result = shop.run([campaign(holdout=holdout(0.0), audience=rule)], RUN)["we_miss_you"]
    assert result.candidates == 1
    assert [m["customer_id"] for m in shop.outbox()] == ["robert"]
    assert shop.conn.execute("select count(*) from marts.customer_features").fetchone()[0] == 2


def test_holdout_is_stratified_and_about_the_requested_share(shop):
    for segment, count in (("At risk", 1000), ("Hibernating", 300)):
        shop.add_many(count, prefix=segment[:3], rfm_segment=segment)
    shop.run([campaign(holdout=holdout(0.2))], RUN)
    shares = dict(
        shop.conn.execute(
            "select stratum, avg((assigned_group = 'holdout')::int)::float "
            "from winback.journey_state group by stratum"
        ).fetchall()
    )
    assert shares == {
        "At risk": pytest.approx(0.2, abs=0.001),
        "Hibernating": pytest.approx(0.2, abs=0.002),
    }


def test_small_daily_strata_still_reach_the_share_over_days(shop):
    """One entrant a day: the holdout keeps up with its share of everyone who entered."""
    rule = {"rule": "days_since_last_order = 100"}
    for day in range(20):
        shop.add(f"d{day:02d}", days_since_last_order=100)
        shop.run([campaign(audience=rule, holdout=holdout(0.2))], RUN + timedelta(days=day))
        shop.update(f"d{day:02d}", days_since_last_order=101)
    held = shop.conn.execute(
        "select count(*) filter (where assigned_group = 'holdout') from winback.journey_state"
    ).fetchone()[0]
    assert held == 4


TWO_STEPS = [
    {"id": "one", "channel": "email", "subject": "s", "body": "b"},
    {"id": "two", "channel": "email", "subject": "s", "body": "b", "wait_days": 30},
]


def test_holdout_is_stable_across_reruns_and_backfills(shop):
    shop.add_many(2000)
    later = RUN + timedelta(days=5)
    journey = campaign(holdout=holdout(0.2), steps=TWO_STEPS)
    shop.run([journey], later)
    first = dict(shop.conn.execute("select customer_id, assigned_group from winback.journey_state"))
    shop.add_many(500, prefix="new")
    for day in (later, later, RUN, later + timedelta(days=1)):  # rerun, backfill, next day
        shop.run([journey], day)
        again = dict(
            shop.conn.execute("select customer_id, assigned_group from winback.journey_state")
        )
        assert {c: again[c] for c in first} == first
    audience = dict(
        shop.conn.execute(
            "select customer_id, assigned_group from winback.campaign_audiences "
            "where run_date = %s",
            (later + timedelta(days=1),),
        )
    )
    assert {c: audience[c] for c in first} == first
    assert 0.18 < sum(g == "holdout" for g in first.values()) / 2000 < 0.22


def test_holdout_customers_are_recorded_but_never_reach_the_outbox(shop):
    shop.add_many(500)
    shop.run([campaign(holdout=holdout(0.3))], RUN)
    leaked = shop.conn.execute(
        "select count(*) from winback.outbox o join winback.journey_state j "
        "using (campaign_id, customer_id) where j.assigned_group = 'holdout'"
    ).fetchone()[0]
    assert leaked == 0
    held_out = shop.conn.execute(
        "select count(*) from winback.journey_events where action = 'held_out'"
    ).fetchone()[0]
    audience = shop.conn.execute(
        "select count(*) from winback.campaign_audiences where assigned_group = 'holdout'"
    ).fetchone()[0]
    assert held_out == audience > 100


def test_a_rerun_or_a_later_day_never_enqueues_a_step_twice(shop):
    shop.add_many(300)
    first = shop.run([campaign()], RUN)["we_miss_you"]
    rerun = shop.run([campaign()], RUN)["we_miss_you"]
    next_day = shop.run([campaign()], RUN + timedelta(days=1))["we_miss_you"]
    assert first.outbox_added == first.treatment > 0
    assert rerun.outbox_added == 0 and next_day.outbox_added == 0
    assert (rerun.treatment, rerun.holdout) == (first.treatment, first.holdout)
    dry = ledger.dry_run(shop.conn, RUN)
    assert dry.recorded == first.treatment
    assert ledger.dry_run(shop.conn, RUN).recorded == 0


def test_higher_priority_campaign_takes_the_customer(shop):
    shop.add_many(50)
    urgent = campaign(id="urgent", priority=200, holdout=holdout(0.0))
    routine = campaign(id="routine", priority=10, holdout=holdout(0.0))
    results = shop.run([routine, urgent], RUN)
    assert results["urgent"].treatment == 50
    assert results["routine"].treatment == 0
    assert results["routine"].filters[3] == (audiences.PRIORITY_FILTER, 0)
    # While the urgent journey lasts, the routine campaign does not get the customers.
    two_steps = campaign(id="urgent", priority=200, holdout=holdout(0.0), steps=TWO_STEPS)
    shop.run([routine, two_steps], RUN + timedelta(days=1))
    assert shop.run([routine, two_steps], RUN + timedelta(days=2))["routine"].treatment == 0


def test_weekly_cap_counts_messages_of_every_campaign(shop):
    shop.add_many(10)
    capped = {"max_per_channel_per_week": {"email": 1}}
    first = campaign(id="first", priority=200, holdout=holdout(0.0))
    second = campaign(id="second", priority=100, holdout=holdout(0.0), caps=capped)
    # The second campaign's customers must be free of the first's journey to enter: one step.
    results = shop.run([first, second], RUN)
    assert results["first"].outbox_added == 10
    second_only = campaign(id="second", priority=100, holdout=holdout(0.0), caps=capped)
    shop.conn.execute("update winback.journey_state set status = 'completed'")
    shop.conn.execute("delete from winback.journey_state where campaign_id = 'second'")
    results = shop.run([second_only], RUN + timedelta(days=1))
    assert results["second"].outbox_added == 0
    assert results["second"].steps["first_touch"]["capped"] == 10
    # A week after the first campaign's email, the deferred step goes out.
    for offset in range(2, 8):
        shop.run([second_only], RUN + timedelta(days=offset))
    assert len(shop.outbox("second")) == 10
    assert {m["run_date"] for m in shop.outbox("second")} == {RUN + timedelta(days=7)}


def test_sms_in_quiet_hours_is_scheduled_not_dropped():
    quiet = campaigns.QuietHours()
    tokyo = messages.customer_time_zones("+81312345678", "JP")
    assert [z.key for z in tokyo] == ["Asia/Tokyo"]
    # Preferred hour 22:00 in Tokyo is quiet: moved to 09:00 the next morning, Tokyo time.
    send_at, moved = messages.scheduled_send_at(RUN, tokyo, 22, "sms", quiet)
    assert moved and send_at.astimezone(ZoneInfo("Asia/Tokyo")) == datetime(
        2026, 11, 21, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo")
    )
    # Email has no quiet hours; an SMS at 10:00 is fine.
    assert messages.scheduled_send_at(RUN, tokyo, 22, "email", quiet)[1] is False
    assert messages.scheduled_send_at(RUN, tokyo, 10, "sms", quiet)[1] is False
    # Without a phone, the country decides; a number with several zones must be quiet in all.
    assert messages.customer_time_zones(None, "DE")[0].key == "Europe/Berlin"
    assert messages.customer_time_zones(None, None)[0].key == "UTC"


flags = st.fixed_dictionaries(
    {
        "is_email_subscribed": st.booleans(),
        "has_valid_email": st.booleans(),
        "is_email_suppressed": st.booleans(),
        "is_sms_subscribed": st.booleans(),
        "has_valid_phone": st.booleans(),
        "is_sms_suppressed": st.booleans(),
        "rfm_segment": st.sampled_from(campaigns.RFM_SEGMENTS),
        "lifecycle_stage": st.sampled_from(campaigns.LIFECYCLE_STAGES),
        "orders_count": st.integers(0, 8),
        "days_since_last_order": st.integers(0, 400),
    }
)
audience_rules = st.one_of(
    st.builds(
        lambda segments: {"rfm_segments": segments},
        st.lists(st.sampled_from(campaigns.RFM_SEGMENTS), min_size=1, unique=True),
    ),
    st.builds(
        lambda n, days, op: {"rule": f"orders_count {op} {n} or days_since_last_order > {days}"},
        st.integers(0, 8),
        st.integers(0, 400),
        st.sampled_from(["<", ">=", "="]),
    ),
    st.just({"rule": "not is_email_subscribed or not is_sms_subscribed or is_sms_suppressed"}),
)


consent_flags = st.fixed_dictionaries(
    {
        "is_email_subscribed": st.booleans(),
        "has_valid_email": st.booleans(),
        "is_email_suppressed": st.booleans(),
        "is_sms_subscribed": st.booleans(),
        "has_valid_phone": st.booleans(),
        "is_sms_suppressed": st.booleans(),
    }
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    customers=st.lists(flags, min_size=1, max_size=30),
    rule=audience_rules,
    channel=st.sampled_from(["email", "sms"]),
    later_days=st.lists(st.lists(consent_flags, min_size=30, max_size=30), min_size=3, max_size=3),
)
def test_whatever_the_rule_no_one_without_consent_reaches_the_outbox(
    conn, customers, rule, channel, later_days
):
    """Consent, contact and suppression change between days, mid-journey; every message
    in the outbox must have had them on the day it was enqueued."""
    shop = Shop(conn)
    for i, flags_of_customer in enumerate(customers):
        shop.add(f"c{i}", **flags_of_customer)
    step = {"id": "s1", "channel": channel, "body": "hi"}
    if channel == "email":
        step["subject"] = "hello"
    steps = [step, {**step, "id": "s2", "wait_days": 1}, {**step, "id": "s3", "wait_days": 1}]
    rule_campaign = campaign(holdout=holdout(0.0), audience=rule, channels=[channel], steps=steps)
    prefix = "email" if channel == "email" else "sms"
    contact = "has_valid_email" if channel == "email" else "has_valid_phone"
    for offset in range(4):
        if offset > 0:
            for index in range(len(customers)):
                shop.update(f"c{index}", **later_days[offset - 1][index])
        shop.run([rule_campaign], RUN + timedelta(days=offset))
        violations = conn.execute(
            f"select count(*) from winback.outbox o join marts.customer_features f "
            f"using (customer_id) where o.run_date = %s and (not f.is_{prefix}_subscribed "
            f"or not f.{contact} or f.is_{prefix}_suppressed)",
            (RUN + timedelta(days=offset),),
        ).fetchone()[0]
        assert violations == 0


def test_campaign_counts_report_audience_and_outbox_per_campaign(shop):
    shop.add_many(100)
    shop.run([campaign(holdout=holdout(0.1))], RUN)
    [counts] = audiences.campaign_counts(shop.conn, RUN)
    assert counts["campaign_id"] == "we_miss_you"
    assert counts["audience"] == 100 and counts["holdout"] == 10
    assert counts["outbox_today"] == counts["email_today"] == 90
    assert counts["entered"] == 100


def test_a_live_run_without_the_coupon_secret_refuses_and_writes_nothing(shop, monkeypatch):
    shop.add_many(5)
    shop.conn.commit()
    monkeypatch.delenv("WINBACK_COUPON_SECRET", raising=False)
    with pytest.raises(RuntimeError, match="WINBACK_COUPON_SECRET"):
        audiences.build_audiences(shop.conn, [campaign()], RUN, send_mode="live")
    shop.conn.rollback()
    assert shop.conn.execute("select to_regclass('winback.outbox')").fetchone()[0] is None
    monkeypatch.setenv("WINBACK_COUPON_SECRET", "a-real-secret-of-32-bytes-or-more")
    [result] = audiences.build_audiences(shop.conn, [campaign()], RUN, send_mode="live")
    assert result.outbox_added == result.treatment > 0
