"""The set-based journey engine gives exactly the per-customer engine's outputs.

The six shipped campaigns (include/campaigns/) run over 60 simulated days, with a rerun and
a backfill, on a small shop, once with the set-based engine in `winback.campaigns.journeys`
and once with the per-customer engine it replaced (kept in tests/journey_reference.py);
`journey_state`, `journey_events`, `campaign_audiences`, `outbox`, the filter log, the
consent the campaigns withdrew and the tracked links must agree row for row, and so must
what each run returned.

The shop is a world made for the six campaigns: customers in every segment, stage and risk
band, with carts, points, expected order dates and phones in several time zones, whose
days pass (recency grows, carts age), who order, change segment, unsubscribe and bounce,
and who receive, open and click the messages the engine enqueued. Everything that happens
is decided by a hash of (what, day, customer or message), so both runs see the same world
as long as the engines enqueue the same messages: a difference shows, it is not absorbed.
"""

from __future__ import annotations

import json
import os
import random
import time
from datetime import date, timedelta

import journey_reference
import pytest
from test_audiences import Shop

from winback import config
from winback.campaigns import campaign_files, journeys

DAY0 = date(2026, 11, 20)
DAYS = 60
CUSTOMERS = int(os.environ.get("WINBACK_EQUIVALENCE_CUSTOMERS", "1500"))
# After day 30 day 30 runs again (a rerun); after day 41 day 40 runs again (a backfill).
REPEATS = {30: 30, 41: 40}

SEGMENTS = campaign_files.RFM_SEGMENTS
STAGES = campaign_files.LIFECYCLE_STAGES
PHONES = {  # country -> phone prefixes; the US toll-free number spans several time zones
    "IT": ["+39066988", "+39028765"],
    "US": ["+1212555", "+1415555", "+1800555"],
    "GB": ["+44207946"],
    "DE": ["+49301234"],
    "AU": ["+61291234"],
}
NAMES = ["Ada", "Bruno", "Chiara", "Dmitri", "Eun-ji", None]
CATEGORIES = ["shoes", "bags", "coats", None]
TABLES = {  # table -> its key, for a stable order; columns set by the database are left out
    "journey_state": "campaign_id, customer_id",
    "journey_events": "campaign_id, customer_id, step_id, action, run_date",
    "campaign_audiences": "run_date, campaign_id, customer_id",
    "outbox": "idempotency_key",
    "audience_filter_log": "run_date, campaign_id, position",
    "consent_withdrawals": "customer_id, channel",
    "global_control": "customer_id",
    "tracked_links": "code",
}
LEFT_OUT = {"built_at", "created_at", "updated_at"}


def chance(*parts: str) -> str:
    """SQL: a number in [0, 1) from the md5 of `parts` (SQL text expressions) joined by ':'."""
    joined = " || ':' || ".join(parts)
    return f"(('x' || substr(md5({joined}), 1, 8))::bit(32)::bigint / 4294967296.0)"


def populate(shop: Shop, count: int) -> None:
    rng = random.Random(19)
    shop.product("p1", "red shoes", "shoes")
    shop.product("p2", "blue boots", "shoes")
    shop.product("p3", "tote", "bags")
    shop.product("p4", "rain coat", "coats", price=80)
    for i in range(count):
        country = rng.choice(list(PHONES))
        has_phone = rng.random() < 0.8
        orders = rng.choice([1, 1, 2, 3, 4, 5, 8])
        customer_id = f"c{i:05d}"
        shop.add(
            customer_id,
            first_name=rng.choice(NAMES),
            phone=f"{rng.choice(PHONES[country])}{rng.randrange(1000, 9999)}"
            if has_phone
            else None,
            country_code=country,
            rfm_segment=rng.choice(SEGMENTS),
            lifecycle_stage=rng.choice(STAGES),
            churn_risk_band=rng.choice(["low", "medium", "high", None]),
            is_email_subscribed=rng.random() < 0.85,
            has_valid_email=rng.random() < 0.95,
            is_email_suppressed=rng.random() < 0.03,
            is_sms_subscribed=has_phone and rng.random() < 0.6,
            has_valid_phone=has_phone,
            is_sms_suppressed=rng.random() < 0.03,
            orders_count=orders,
            days_since_last_order=rng.randrange(0, 180),
            median_days_between_orders=rng.choice([None, 20, 35, 60]),
            expected_next_order_date=DAY0 + timedelta(days=rng.randrange(-10, 65)),
            favourite_category=rng.choice(CATEGORIES),
            last_purchased_category=rng.choice(CATEGORIES),
            last_purchased_products=rng.choice(["red shoes", "tote", None]),
            abandoned_carts=1 if rng.random() < 0.3 else 0,
            newest_abandoned_cart_days=rng.randrange(0, 66),
            abandoned_cart_value=rng.choice([25, 60, 120]),
            points_balance=rng.choice([0, 0, 150, 420]),
        )
        if orders > 1:
            shop.order(customer_id, DAY0 - timedelta(days=rng.randrange(30, 300)), ("p1",))
    shop.conn.commit()


def live_a_day(shop: Shop, n: int) -> None:
    """What happens in the shop between day n-1's run and day n's."""
    today = DAY0 + timedelta(days=n)
    params = {"day": today, "n": str(n)}
    conn = shop.conn
    conn.execute(
        "update marts.customer_features set days_since_last_order = days_since_last_order + 1,"
        " newest_abandoned_cart_days = newest_abandoned_cart_days + 1"
    )
    # Messages sent in the last days are delivered, opened and clicked, a day or two later.
    conn.execute(
        f"""
        with messages as (
            select o.*, {chance("o.idempotency_key", "'when'")} as when_draw
            from winback.outbox o
            where o.channel in ('email', 'sms') and o.run_date >= %(day)s::date - 3
              and o.run_date < %(day)s
        ),
        happened as (
            select m.*, kind.event_type
            from messages m
            cross join (values ('delivered', 0.9), ('open', 0.35), ('click', 0.12))
                as kind (event_type, share)
            where {chance("m.idempotency_key", "kind.event_type")} < kind.share
              and m.run_date + 1 + (case when kind.event_type = 'delivered' then 0
                                        else floor(m.when_draw * 3)::int end) = %(day)s
        )
        insert into marts.engagement_events
        select event_type || '-' || idempotency_key, customer_id, channel, event_type,
               %(day)s::timestamp at time zone 'UTC' + interval '13 hours', campaign_id, null
        from happened
        """,
        params,
    )
    # Orders: a few customers buy each day, more of those who clicked a message lately.
    buyers = conn.execute(
        f"""
        select f.customer_id from marts.customer_features f
        where {chance("'order'", "%(n)s", "f.customer_id")}
              < case when exists (
                  select 1 from marts.engagement_events e
                  where e.customer_id = f.customer_id and e.event_type = 'click'
                    and e.occurred_at >= %(day)s::date - 3) then 0.3 else 0.01 end
        order by f.customer_id
        """,
        params,
    ).fetchall()
    for (customer_id,) in buyers:
        shop.order(customer_id, today, ("p2",))
    conn.execute(
        "update marts.customer_features set days_since_last_order = 0, "
        "orders_count = orders_count + 1 where customer_id = any(%s)",
        ([b[0] for b in buyers],),
    )
    # Segments, stages and consent move for a few customers.
    conn.execute(
        f"""
        update marts.customer_features f set
            rfm_segment = case when {chance("'segment'", "%(n)s", "f.customer_id")} < 0.03
                then (%(segments)s::text[])[1 + floor({chance("'which'", "%(n)s", "f.customer_id")}
                      * cardinality(%(segments)s::text[]))::int]
                else rfm_segment end,
            lifecycle_stage = case when {chance("'stage'", "%(n)s", "f.customer_id")} < 0.02
                then 'inactive' else lifecycle_stage end,
            is_email_subscribed = is_email_subscribed
                and {chance("'unsubscribe'", "%(n)s", "f.customer_id")} >= 0.004,
            is_sms_subscribed = is_sms_subscribed
                and {chance("'stop'", "%(n)s", "f.customer_id")} >= 0.004,
            has_valid_email = has_valid_email
                and {chance("'bounce'", "%(n)s", "f.customer_id")} >= 0.003
        """,
        {**params, "segments": list(SEGMENTS)},
    )
    conn.commit()


def _comparable(value):
    """A column's value as a hashable one (a JSON payload as its sorted text)."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def snapshot(conn) -> dict[str, list[tuple]]:
    """Every output table's rows in key order, without the columns the database stamps."""
    found = {}
    for table, key in TABLES.items():
        cursor = conn.execute(f"select * from winback.{table} order by {key}")
        keep = [i for i, c in enumerate(cursor.description) if c.name not in LEFT_OUT]
        names = tuple(cursor.description[i].name for i in keep)
        found[table] = [names] + [
            tuple(_comparable(row[i]) for i in keep) for row in cursor.fetchall()
        ]
    return found


def simulate(conn, count: int, days: int = DAYS, timings=None) -> tuple[dict, list]:
    """`days` days of the six shipped campaigns; the output tables and each run's results."""
    shop = Shop(conn)
    populate(shop, count)
    shipped = campaign_files.load_campaigns(config.CAMPAIGNS_DIR)
    returned = []
    for n in range(days):
        started = time.perf_counter()
        if n:
            live_a_day(shop, n)
        lived = time.perf_counter()
        for day in [n] + ([REPEATS[n]] if n in REPEATS else []):
            results = shop.run(shipped, DAY0 + timedelta(days=day))
            returned.append((day, sorted((k, vars(r)) for k, r in results.items())))
        if timings is not None:
            timings.append((n, lived - started, time.perf_counter() - lived))
    return snapshot(conn), returned


@pytest.fixture
def global_control(monkeypatch):
    monkeypatch.setenv(config.GLOBAL_CONTROL_SHARE_ENV, "0.05")


def test_the_set_based_engine_equals_the_per_customer_one_over_60_days(
    conn, global_control, monkeypatch
):
    new_tables, new_results = simulate(conn, CUSTOMERS)
    with monkeypatch.context() as patched:
        patched.setattr(journeys, "advance", journey_reference.advance)
        old_tables, old_results = simulate(conn, CUSTOMERS)

    # The world did exercise what the engines decide.
    actions = {row[4] for row in old_tables["journey_events"][1:]}
    assert actions >= {"entered", "sent", "held_out", "skipped", "deferred", "exited"}
    assert {row[5] for row in old_tables["outbox"][1:]} == {"email", "sms", "popup"}
    exits = {row[6] for row in old_tables["journey_events"][1:] if row[4] == "exited"}
    assert exits == {"purchase", "unsubscribe", "click"}

    for table in TABLES:
        old, new = old_tables[table], new_tables[table]
        assert old[0] == new[0], f"{table}: columns differ"
        only_old = sorted(set(old[1:]) - set(new[1:]))[:5]
        only_new = sorted(set(new[1:]) - set(old[1:]))[:5]
        assert (only_old, only_new) == ([], []), f"{table} differs"
        assert len(old) == len(new), table
    assert new_results == old_results
