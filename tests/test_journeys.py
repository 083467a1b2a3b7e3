"""The six example campaigns, each run over simulated days on the real PostgreSQL.

Every test loads the shipped file from include/campaigns/, builds a few customers made for
it (see `Shop` in tests/test_audiences.py), then runs the daily audience stage day after
day, adding the orders, opens, clicks and unsubscribes that make each branch happen.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from test_audiences import Shop, without_global_control  # noqa: F401 (an autouse fixture)

from winback import config
from winback.campaigns import campaign_files as campaigns
from winback.campaigns import journeys, personalization

DAY0 = date(2026, 11, 20)


def shipped(campaign_id: str, holdout_share: float | None = 0.0) -> campaigns.Campaign:
    """The shipped campaign; by default without a holdout, so every test customer is sent."""
    campaign = campaigns.load_campaign(config.CAMPAIGNS_DIR / f"{campaign_id}.yaml")
    if holdout_share is None:
        return campaign
    holdout = campaign.holdout.model_copy(update={"share": holdout_share})
    return campaign.model_copy(update={"holdout": holdout})


def day(n: int) -> date:
    return DAY0 + timedelta(days=n)


def sent(shop: Shop, campaign_id: str) -> dict[str, list[tuple[str, int]]]:
    """customer -> [(step, day number)] of the campaign's outbox."""
    found: dict[str, list[tuple[str, int]]] = {}
    for message in shop.outbox(campaign_id):
        found.setdefault(message["customer_id"], []).append(
            (message["step_id"], (message["run_date"] - DAY0).days)
        )
    return found


def run_days(shop: Shop, campaign_list, days, happenings=None) -> None:
    """Run the daily stage for each day; `happenings[n]` runs before day n's run."""
    for n in days:
        if happenings and n in happenings:
            happenings[n]()
        shop.run(campaign_list, day(n))


@pytest.fixture
def shop(conn):
    return Shop(conn)


def test_we_miss_you_first_touch_then_a_coupon_45_days_later(shop):
    campaign = shipped("we_miss_you")
    shop.add("quiet", rfm_segment="At risk")
    shop.add("buyer", rfm_segment="Hibernating")
    shop.add("leaver", rfm_segment="Need attention")
    shop.add("couponed", rfm_segment="Can't lose them")
    shop.add("champion", rfm_segment="Champions")
    shop.product("p1", "red shoes", "shoes")
    shop.product("p2", "blue boots", "shoes")
    shop.order("quiet", DAY0 - timedelta(days=200), ("p1",))

    def coupon_from_elsewhere():
        shop.conn.execute(
            "insert into winback.outbox (idempotency_key, run_date, campaign_id, step_id, "
            "customer_id, channel, payload, coupon_code) values "
            "('k-other', %s, 'other', 'offer', 'couponed', 'email', '{}', 'OTHER-1')",
            (day(40),),
        )

    run_days(
        shop,
        [campaign],
        range(0, 48),
        {
            10: lambda: shop.order("buyer", day(10)),
            20: lambda: shop.update("leaver", is_email_subscribed=False),
            40: coupon_from_elsewhere,
        },
    )
    assert sent(shop, "we_miss_you") == {
        "quiet": [("first_touch", 0), ("coupon", 45)],
        "buyer": [("first_touch", 0)],
        "leaver": [("first_touch", 0)],
        # A coupon email on day 40 holds the coupon back for 7 days: sent on day 47.
        "couponed": [("first_touch", 0), ("coupon", 47)],
    }
    assert shop.journey("we_miss_you", "buyer")["exit_reason"] == "purchase"
    assert shop.journey("we_miss_you", "leaver")["exit_reason"] == "unsubscribe"
    assert shop.journey("we_miss_you", "quiet")["status"] == "completed"
    by_step = {(m["customer_id"], m["step_id"]): m for m in shop.outbox("we_miss_you")}
    first = by_step[("quiet", "first_touch")]
    assert first["variant"] in {"personal", "products"}
    assert first["variant"] == journeys.choose_variant("we_miss_you", campaign.steps[0], "quiet")
    assert "Last time you chose: red shoes." in first["payload"]["body"]
    assert "You might like: blue boots." in first["payload"]["body"]  # not bought yet
    coupon = by_step[("quiet", "coupon")]
    assert coupon["coupon_code"] and coupon["coupon_code"] in coupon["payload"]["body"]
    assert coupon["coupon_expires_on"] == day(45) + timedelta(days=13)  # 14 days, inclusive
    assert "15% off" in coupon["payload"]["subject"]
    assert coupon["tracked_link"] in coupon["payload"]["body"]


def test_we_miss_you_variants_split_the_treatment(shop):
    shop.add_many(400, rfm_segment="At risk")
    shop.run([shipped("we_miss_you")], DAY0)
    variants = [m["variant"] for m in shop.outbox("we_miss_you")]
    assert 150 < variants.count("personal") < 250
    assert variants.count("personal") + variants.count("products") == 400


def test_the_holdout_goes_through_the_journey_without_receiving_anything(shop):
    shop.add_many(300, rfm_segment="At risk")
    campaign = shipped("we_miss_you", holdout_share=None)
    run_days(shop, [campaign], [0, 45])
    held = shop.conn.execute(
        "select step_id, count(*) from winback.journey_events where action = 'held_out' "
        "group by step_id order by step_id"
    ).fetchall()
    holdout = round(300 * campaign.holdout.share)
    assert held == [("coupon", holdout), ("first_touch", holdout)]
    assert len(shop.outbox("we_miss_you")) == 2 * (300 - holdout)


def test_abandoned_cart_reminder_with_coupon_and_a_nudge_if_not_opened(shop):
    campaign = shipped("abandoned_cart")
    shop.add("opener", abandoned_carts=1, newest_abandoned_cart_days=60, abandoned_cart_value=80)
    shop.add("ignorer", abandoned_carts=1, newest_abandoned_cart_days=62, abandoned_cart_value=30)
    shop.add("recent", abandoned_carts=1, newest_abandoned_cart_days=59, abandoned_cart_value=20)
    shop.add("no_cart", abandoned_carts=0)
    run_days(
        shop,
        [campaign],
        range(0, 6),
        {
            1: lambda: (
                shop.event("opener", "abandoned_cart", "email", "open", day(1)),
                shop.update("recent", newest_abandoned_cart_days=60),
            )
        },
    )
    assert sent(shop, "abandoned_cart") == {
        "opener": [("cart_reminder", 0)],
        "ignorer": [("cart_reminder", 0), ("cart_nudge", 3)],
        "recent": [("cart_reminder", 1), ("cart_nudge", 4)],
    }
    reminder = shop.outbox("abandoned_cart")[0]
    assert "10% off" in reminder["payload"]["body"] and reminder["coupon_code"]


def test_popup_audience_is_exported_not_messaged(shop):
    campaign = shipped("popup_non_subscribers")
    shop.add("loyal_silent", is_email_subscribed=False, orders_count=5, days_since_last_order=150)
    shop.add("subscribed", is_email_subscribed=True, orders_count=5, days_since_last_order=150)
    shop.add("few_orders", is_email_subscribed=False, orders_count=3, days_since_last_order=150)
    shop.add("recent", is_email_subscribed=False, orders_count=5, days_since_last_order=100)
    shop.run([campaign], DAY0)
    [popup] = shop.outbox("popup_non_subscribers")
    assert popup["customer_id"] == "loyal_silent" and popup["channel"] == "popup"
    assert popup["payload"]["to"] == "loyal_silent"  # no email, no phone: nobody is messaged
    assert "10 EUR on orders over 50 EUR" in popup["payload"]["body"]


def test_sms_flow_survey_contest_coupon_and_consent_withdrawn_at_the_end(shop):
    campaign = shipped("sms_reactivation")
    for customer_id in ("silent", "clicker", "buyer"):
        shop.add(customer_id, days_since_last_order=30, phone="+81312345678", country_code="JP")

    run_days(
        shop,
        [campaign],
        range(0, 76),
        {
            5: lambda: shop.event("clicker", "sms_reactivation", "sms", "click", day(5)),
            40: lambda: shop.order("buyer", day(40)),
        },
    )
    assert sent(shop, "sms_reactivation") == {
        "silent": [("survey", 0), ("contest", 30), ("coupon", 60)],
        "clicker": [("survey", 0)],
        "buyer": [("survey", 0), ("contest", 30)],
    }
    assert shop.journey("sms_reactivation", "clicker")["exit_reason"] == "click"
    assert shop.journey("sms_reactivation", "buyer")["exit_reason"] == "purchase"
    silent = shop.journey("sms_reactivation", "silent")
    assert (silent["status"], silent["ended_on"]) == ("completed", day(74))
    withdrawn = shop.conn.execute(
        "select customer_id, channel, withdrawn_on from winback.consent_withdrawals"
    ).fetchall()
    assert withdrawn == [("silent", "sms", day(74))]
    # Withdrawn consent keeps the customer out of every later SMS audience.
    other = campaign.model_copy(update={"id": "sms_again"})
    result = shop.run([other], day(80))["sms_again"]
    assert dict(result.filters)["not suppressed for SMS"] == 2  # clicker and buyer only
    # Every SMS goes out in the customer's daytime (Tokyo), never in quiet hours.
    for message in shop.outbox("sms_reactivation"):
        local = message["send_at"].astimezone(ZoneInfo("Asia/Tokyo")).time()
        assert not campaign.quiet_hours.contains(local)
        assert message["payload"]["to"] == "+81312345678"


def test_an_sms_in_the_customers_quiet_hours_is_scheduled_for_the_morning(shop):
    campaign = shipped("sms_reactivation")
    for customer_id in ("night_owl", "early_bird"):
        shop.add(customer_id, days_since_last_order=30, phone="+81312345678", country_code="JP")
    for n in (1, 2, 3):  # usual opens at 23:00 and 08:00 in Tokyo (14:00 / 23:00 UTC)
        shop.event("night_owl", "newsletter", "email", "open", DAY0 - timedelta(days=n), 14)
        shop.event("early_bird", "newsletter", "email", "open", DAY0 - timedelta(days=n), 23)
    result = shop.run([campaign], DAY0)["sms_reactivation"]
    assert result.scheduled_for_quiet_hours == 2
    logged = shop.conn.execute(
        "select filter_name, customers_before, customers_after from winback.audience_filter_log "
        "where stage = 'survey' order by position"
    ).fetchall()
    assert logged == [
        ("survey: when any", 2, 2),
        ("survey: contact still valid", 2, 2),
        ("survey: frequency caps", 2, 2),
        ("survey: outside quiet hours (others scheduled)", 2, 0),
    ]
    tokyo = ZoneInfo("Asia/Tokyo")
    send_at = {m["customer_id"]: m["send_at"].astimezone(tokyo) for m in shop.outbox()}
    assert send_at == {
        "night_owl": datetime(2026, 11, 21, 9, 0, tzinfo=tokyo),  # 23:00 is quiet: next morning
        "early_bird": datetime(2026, 11, 20, 9, 0, tzinfo=tokyo),  # 08:00 is quiet: 09:00
    }


def test_each_message_has_its_own_tracked_link_and_utm_landing_page(shop):
    shop.add_many(3, rfm_segment="At risk")
    shop.run([shipped("we_miss_you")], DAY0)
    for message in shop.outbox():
        code = message["tracked_link"].rsplit("/", 1)[1]
        link = personalization.resolve_link(shop.conn, code)
        assert (link.customer_id, link.campaign_id, link.step_id) == (
            message["customer_id"],
            "we_miss_you",
            "first_touch",
        )
        assert "utm_campaign=we_miss_you" in link.target_url
        assert f"utm_content=first_touch%2F{message['variant']}" in link.target_url


def test_personal_timing_branches_on_opened_or_not(shop):
    campaign = shipped("personal_timing")
    due = DAY0 - timedelta(days=1)
    for customer_id in ("ignorer", "opener", "buyer"):
        shop.add(customer_id, expected_next_order_date=due, orders_count=3)
    shop.add("later", expected_next_order_date=DAY0 + timedelta(days=3), orders_count=3)
    run_days(
        shop,
        [campaign],
        range(0, 17),
        {
            1: lambda: shop.event("opener", "personal_timing", "email", "open", day(1)),
            5: lambda: shop.order("buyer", day(5)),
        },
    )
    assert sent(shop, "personal_timing") == {
        "ignorer": [("due_reminder", 0), ("new_subject", 2), ("farewell", 16)],
        "opener": [("due_reminder", 0), ("what_kept_you", 2), ("farewell", 16)],
        "buyer": [("due_reminder", 0), ("new_subject", 2)],
        # Their own date passes on day 3: they enter on day 4.
        "later": [("due_reminder", 4), ("new_subject", 6)],
    }


def test_an_open_reported_by_the_provider_takes_the_opened_branch(shop):
    """The journey reads the providers' feedback (winback.message_events) too."""
    from winback.warehouse import tables

    campaign = shipped("personal_timing")
    tables.ensure_schema(shop.conn)  # the send ledger and message_events, as a live sync has
    shop.add("opener", expected_next_order_date=DAY0 - timedelta(days=1), orders_count=3)

    def provider_reports_an_open():
        shop.conn.execute(
            "insert into winback.message_events (event_id, provider, event_type, channel,"
            " idempotency_key, customer_id, campaign_id, occurred_at)"
            " select 'smtp-open-1', 'smtp', 'opened', 'email', idempotency_key, customer_id,"
            " campaign_id, %s from winback.outbox where customer_id = 'opener'",
            (datetime.combine(day(1), datetime.min.time(), tzinfo=UTC),),
        )

    run_days(shop, [campaign], range(0, 3), {1: provider_reports_an_open})
    assert sent(shop, "personal_timing") == {
        "opener": [("due_reminder", 0), ("what_kept_you", 2)],
    }


def test_loyalty_bonus_points_then_an_expiry_reminder(shop):
    campaign = shipped("loyalty_points")
    shop.add("member", lifecycle_stage="inactive", points_balance=500)
    shop.add("no_points", lifecycle_stage="inactive", points_balance=0)
    shop.add("active", lifecycle_stage="active", points_balance=500)
    run_days(shop, [campaign], range(0, 24))
    assert sent(shop, "loyalty_points") == {
        "member": [("bonus_credited", 0), ("expiry_reminder", 23)],
    }
    bonus = shop.outbox("loyalty_points")[0]
    assert bonus["payload"]["incentive"]["bonus_points"] == 200
    assert bonus["payload"]["subject"].startswith("200 bonus points")


def test_a_rerun_of_a_day_changes_nothing(shop):
    campaign = shipped("personal_timing")
    shop.add("ignorer", expected_next_order_date=DAY0 - timedelta(days=1), orders_count=3)
    run_days(shop, [campaign], [0, 1, 2])
    before = shop.conn.execute(
        "select * from winback.journey_state order by customer_id"
    ).fetchall()
    events = shop.conn.execute("select count(*) from winback.journey_events").fetchone()
    outbox = len(shop.outbox())
    run_days(shop, [campaign], [2, 2, 1])  # two reruns of the last day, a backfill
    after = shop.conn.execute("select * from winback.journey_state order by customer_id").fetchall()
    assert before == after
    assert shop.conn.execute("select count(*) from winback.journey_events").fetchone() == events
    assert len(shop.outbox()) == outbox


def advanced_through(shop: Shop, campaign_id: str, customer_id: str) -> date:
    """The day the journey was advanced through, as the engine reads it."""
    query = journeys.advanced_through_sql("j").as_string(shop.conn)
    return shop.conn.execute(
        f"select {query} from winback.journey_state j "
        "where j.campaign_id = %s and j.customer_id = %s",
        (campaign_id, customer_id),
    ).fetchone()[0]


def test_a_day_writes_back_only_the_journeys_it_changed_and_still_never_repeats_a_day(shop):
    """A journey waiting between steps is not rewritten every day; the run's log says it was
    advanced. So a rerun or a backfill after the world changed still leaves it alone (its
    days were seen), and the next new day sees the change."""
    campaign = shipped("we_miss_you")
    shop.add("waiting", rfm_segment="At risk")
    run_days(shop, [campaign], range(0, 6))
    stored = shop.journey("we_miss_you", "waiting")
    assert stored["advanced_through"] == day(0)  # written on day 0 (first touch), not since
    assert advanced_through(shop, "we_miss_you", "waiting") == day(5)
    runs = shop.conn.execute(
        "select count(*) from winback.journey_runs where campaign_id = 'we_miss_you'"
    ).fetchone()[0]
    assert runs == 6

    shop.update("waiting", is_email_subscribed=False)
    run_days(shop, [campaign], [5, 3])  # a rerun of day 5 and a backfill of day 3
    assert shop.journey("we_miss_you", "waiting")["status"] == "active"
    assert advanced_through(shop, "we_miss_you", "waiting") == day(5)

    run_days(shop, [campaign], [6])
    journey = shop.journey("we_miss_you", "waiting")
    assert (journey["status"], journey["exit_reason"], journey["ended_on"]) == (
        "exited", "unsubscribe", day(6)
    )  # fmt: skip
    assert advanced_through(shop, "we_miss_you", "waiting") == day(6)


def test_a_journey_a_backfill_enrols_counts_only_the_runs_after_it(shop):
    """A backfill of day 3, after days 0-5 ran, enrols a newcomer on day 3: it was advanced
    through day 3 (the backfill's own run), not through day 5 (runs that never saw it)."""
    waits = shipped("we_miss_you")
    first = waits.steps[0].model_copy(update={"wait_days": 2})  # nothing to do on entry
    waits = waits.model_copy(update={"steps": [first, *waits.steps[1:]]})
    shop.add("early", rfm_segment="At risk")  # the days' runs advance its journey
    run_days(shop, [waits], range(0, 6))
    shop.add("late", rfm_segment="At risk")
    run_days(shop, [waits], [3])
    assert shop.journey("we_miss_you", "late")["entered_on"] == day(3)
    assert advanced_through(shop, "we_miss_you", "late") == day(3)
    run_days(shop, [waits], [5])  # day 4 was never run for it: day 5 takes its first step
    assert sent(shop, "we_miss_you") == {
        "early": [("first_touch", 2)],
        "late": [("first_touch", 5)],
    }


def test_all_six_together_a_customer_gets_the_highest_priority_campaign(shop):
    every = [shipped(c.id) for c in campaigns.load_campaigns()]
    # Matches we_miss_you (priority 100) and abandoned_cart (150): abandoned_cart wins.
    shop.add("both", rfm_segment="At risk", abandoned_carts=1, newest_abandoned_cart_days=60)
    shop.add("one", rfm_segment="At risk")
    results = shop.run(every, DAY0)
    assert results["abandoned_cart"].treatment == 1
    assert results["we_miss_you"].treatment == 1
    audience = shop.conn.execute(
        "select customer_id, campaign_id from winback.campaign_audiences order by 1"
    ).fetchall()
    assert audience == [("both", "abandoned_cart"), ("one", "we_miss_you")]


def test_a_mixed_shop_over_days_keeps_every_invariant(shop):
    """400 varied customers, all six campaigns, 60 days with opens, clicks and purchases:
    one campaign per customer per day, no holdout message, no message without consent,
    no step twice, and the holdout near its share in every campaign."""
    import random

    rng = random.Random(7)
    every = campaigns.load_campaigns()
    for i in range(400):
        shop.add(
            f"m{i:03d}",
            rfm_segment=rng.choice(campaigns.RFM_SEGMENTS),
            lifecycle_stage=rng.choice(campaigns.LIFECYCLE_STAGES),
            days_since_last_order=rng.choice([30, 33, 100, 130, 200]),
            orders_count=rng.randint(1, 6),
            abandoned_carts=rng.randint(0, 1),
            newest_abandoned_cart_days=rng.choice([20, 60, 64]),
            points_balance=rng.choice([0, 300]),
            expected_next_order_date=DAY0 - timedelta(days=rng.randint(-10, 10)),
            is_email_subscribed=rng.random() < 0.8,
            is_sms_subscribed=rng.random() < 0.6,
        )
    for n in range(60):
        for customer_id in rng.sample(range(400), 8):
            kind = rng.choice(["open", "click"])
            campaign_id = rng.choice([c.id for c in every])
            channel = "sms" if campaign_id == "sms_reactivation" else "email"
            shop.event(f"m{customer_id:03d}", campaign_id, channel, kind, day(n))
        if n % 5 == 0:
            shop.order(f"m{rng.randrange(400):03d}", day(n))
            shop.update(f"m{rng.randrange(400):03d}", is_email_subscribed=False)
        shop.run(every, day(n))
        if n in (0, 30, 59):
            shop.run(every, day(n))  # reruns change nothing either
    doubles = shop.conn.execute(
        "select count(*) from (select run_date, customer_id from winback.campaign_audiences "
        "group by 1, 2 having count(*) > 1) d"
    ).fetchone()[0]
    assert doubles == 0
    leaked = shop.conn.execute(
        "select count(*) from winback.outbox o join winback.journey_state j "
        "using (campaign_id, customer_id) where j.assigned_group = 'holdout'"
    ).fetchone()[0]
    assert leaked == 0
    unconsented = shop.conn.execute(
        "select count(*) from winback.outbox o join winback.journey_events e "
        "on e.campaign_id = o.campaign_id and e.customer_id = o.customer_id "
        "and e.step_id = o.step_id and e.action = 'sent' "
        "join marts.customer_features f on f.customer_id = o.customer_id "
        "where o.channel = 'sms' and not f.is_sms_subscribed"
    ).fetchone()[0]
    assert unconsented == 0  # SMS consent never changes here, so today's flags are the truth
    shares = shop.conn.execute(
        "select campaign_id, count(*), avg((assigned_group = 'holdout')::int)::float "
        "from winback.journey_state group by 1"
    ).fetchall()
    for campaign_id, entered, share in shares:
        expected = next(c.holdout.share for c in every if c.id == campaign_id)
        assert abs(share - expected) <= 0.5 * expected + 2 / entered, campaign_id
    assert len(shares) == 6
