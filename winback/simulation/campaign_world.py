"""A shop made for the six example campaigns, whose days pass in SQL: for the journey
engine's equivalence test (tests/test_engine_equivalence.py) and the audiences benchmark
(bench/bench_audiences.py).

The marts the campaigns read (`marts.customer_features`, orders, order lines, products,
engagement events) are tables here, not dbt models, so a day costs a few statements at any
size: customers in every RFM segment, lifecycle stage and risk band, with carts, points,
expected order dates and phones in several time zones (a US toll-free number spans
several). Each day (`live_a_day`) recency grows and carts age; a few customers order,
change segment or stage, unsubscribe or bounce; and the messages the campaigns enqueued
in the last days are delivered, opened and clicked, a day or two later, and clicks lead to
more orders. Everything is decided by a hash of (what, day, customer or message), so two
runs that enqueue the same messages live in the same world.
"""

from __future__ import annotations

from datetime import date, timedelta

import psycopg

from winback.campaigns import campaign_files, rules

DAY0 = date(2026, 11, 20)
SEGMENTS = list(campaign_files.RFM_SEGMENTS)
STAGES = list(campaign_files.LIFECYCLE_STAGES)


def chance(*parts: str) -> str:
    """SQL: a number in [0, 1) from the md5 of `parts` (SQL text expressions) joined by ':'."""
    joined = " || ':' || ".join(parts)
    return f"(('x' || substr(md5({joined}), 1, 8))::bit(32)::bigint / 4294967296.0)"


def pick(values: str, draw: str) -> str:
    """SQL: one element of the SQL array `values`, chosen by the number `draw` in [0, 1)."""
    return f"({values})[1 + floor({draw} * cardinality({values}))::int]"


def create_marts(conn: psycopg.Connection) -> None:
    """Replace the marts, staging and winback schemas by the world's empty tables."""
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
        create index on marts.orders (customer_id);
        create table marts.order_lines (
            order_id text, line_number integer, product_id text, quantity integer);
        create table marts.products (
            product_id text primary key, product_name text, category text,
            list_price numeric, is_merchandise boolean not null default true);
        create table marts.engagement_events (
            event_id text primary key, customer_id text, channel text, event_type text,
            occurred_at timestamptz, campaign_id text, message_id text);
        create index on marts.engagement_events (campaign_id, customer_id);
        insert into marts.products values
            ('p1', 'red shoes', 'shoes', 10), ('p2', 'blue boots', 'shoes', 10),
            ('p3', 'tote', 'bags', 10), ('p4', 'rain coat', 'coats', 80);
        """
    )


def populate(conn: psycopg.Connection, customers: int) -> None:
    """`customers` customers and their earlier orders, in two statements."""

    def u(salt: str) -> str:
        return chance(f"'{salt}'", "i::text")

    conn.execute(
        f"""
        insert into marts.customer_features (
            customer_id, first_name, email, country_code, phone, rfm_segment, lifecycle_stage,
            churn_risk_band, is_email_subscribed, has_valid_email, is_email_suppressed,
            is_sms_subscribed, has_valid_phone, is_sms_suppressed, orders_count,
            days_since_last_order, median_days_between_orders, expected_next_order_date,
            favourite_category, last_purchased_category, last_purchased_products,
            abandoned_carts, newest_abandoned_cart_days, abandoned_cart_value, points_balance)
        with drawn as (
            select i, 'c' || lpad(i::text, 7, '0') as customer_id,
                   {pick("array['IT', 'US', 'GB', 'DE', 'AU']", u("country"))} as country,
                   {u("phone")} < 0.8 as has_phone,
                   {u("us")} as us_draw
            from generate_series(0, %(customers)s - 1) as i
        )
        select customer_id,
               {pick("array['Ada', 'Bruno', 'Chiara', 'Dmitri', 'Eun-ji', null]", u("name"))},
               customer_id || '@example.com',
               country,
               case when has_phone then
                   case country when 'IT' then '+39066988' when 'GB' then '+44207946'
                                when 'DE' then '+49301234' when 'AU' then '+61291234'
                                else case when us_draw < 0.34 then '+1212555'
                                          when us_draw < 0.67 then '+1415555'
                                          else '+1800555' end end
                   || (1000 + floor({u("digits")} * 8999))::int end,
               {pick("%(segments)s::text[]", u("segment"))},
               {pick("%(stages)s::text[]", u("stage"))},
               {pick("array['low', 'medium', 'high', null]", u("risk"))},
               {u("email")} < 0.85, {u("valid")} < 0.95, {u("suppressed")} < 0.03,
               has_phone and {u("sms")} < 0.6, has_phone, {u("sms_suppressed")} < 0.03,
               ({pick("array[1, 1, 2, 3, 4, 5, 8]", u("orders"))})::bigint,
               floor({u("recency")} * 180)::int,
               {pick("array[null, 20, 35, 60]::numeric[]", u("median"))},
               %(day0)s::date - 10 + floor({u("expected")} * 75)::int,
               {pick("array['shoes', 'bags', 'coats', null]", u("favourite"))},
               {pick("array['shoes', 'bags', 'coats', null]", u("last_category"))},
               {pick("array['red shoes', 'tote', null]", u("last_products"))},
               case when {u("cart")} < 0.3 then 1 else 0 end,
               floor({u("cart_age")} * 66)::int,
               {pick("array[25, 60, 120]::numeric[]", u("cart_value"))},
               {pick("array[0, 0, 150, 420]::numeric[]", u("points"))}
        from drawn
        """,
        {"customers": customers, "segments": SEGMENTS, "stages": STAGES, "day0": DAY0},
    )
    conn.execute(
        f"""
        with earlier as (
            insert into marts.orders
            select 'h-' || customer_id, customer_id,
                   (%(day0)s::date - 30 - floor({chance("'ordered'", "customer_id")} * 270)::int)
                       ::timestamp at time zone 'UTC',
                   %(day0)s::date - 30 - floor({chance("'ordered'", "customer_id")} * 270)::int,
                   true
            from marts.customer_features where orders_count > 1
            returning order_id
        )
        insert into marts.order_lines select order_id, 1, 'p1', 1 from earlier
        """,
        {"day0": DAY0},
    )
    conn.execute("analyze marts.customer_features")
    conn.commit()


def live_a_day(conn: psycopg.Connection, n: int) -> None:
    """What happens in the shop between day n-1's run and day n's (n >= 1)."""
    params = {"day": DAY0 + timedelta(days=n), "n": str(n)}
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
    conn.execute(
        f"""
        with clickers as (
            select distinct customer_id from marts.engagement_events
            where event_type = 'click' and occurred_at >= %(day)s::date - 3
        ),
        buyers as (
            select f.customer_id from marts.customer_features f
            left join clickers c using (customer_id)
            where {chance("'order'", "%(n)s", "f.customer_id")}
                  < case when c.customer_id is not null then 0.3 else 0.01 end
        ),
        ordered as (
            insert into marts.orders
            select 'o-' || %(n)s || '-' || customer_id, customer_id,
                   %(day)s::timestamp at time zone 'UTC', %(day)s, true
            from buyers
            returning order_id, customer_id
        ),
        lines as (insert into marts.order_lines select order_id, 1, 'p2', 1 from ordered)
        update marts.customer_features f
        set days_since_last_order = 0, orders_count = orders_count + 1
        from ordered o where o.customer_id = f.customer_id
        """,
        params,
    )
    # Segments, stages and consent move for a few customers.
    conn.execute(
        f"""
        update marts.customer_features f set
            rfm_segment = case when {chance("'segment'", "%(n)s", "f.customer_id")} < 0.03
                then {pick("%(segments)s::text[]", chance("'which'", "%(n)s", "f.customer_id"))}
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
        {**params, "segments": SEGMENTS},
    )
    conn.commit()
