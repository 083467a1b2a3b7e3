"""Personalization: templates, coupons, links, send hours and recommendations.

The SQL runs on a database of its own with the staging tables it reads, created with the
columns and types of the dbt models, and the `winback.tracked_links` table.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from conftest import create_database
from psycopg import sql

from winback.campaigns import personalization as p
from winback.warehouse import tables

RUN_DATE = date(2026, 11, 20)
SECRET = b"test-secret"

MARTS_DDL = """
create schema marts;
create table marts.customer_features (
    customer_id text, email text, phone text, first_name text, country_code char(2),
    created_at timestamptz, loaded_for_date date
);
create table marts.engagement_events (
    event_id text, customer_id text, channel text, event_type text, occurred_at timestamptz,
    campaign_id text, message_id text
);
create table marts.orders (
    order_id text, customer_id text, ordered_at timestamptz, order_date date,
    order_status text, is_completed boolean, order_total numeric, currency_code char(3),
    coupon_code text, discount_total numeric, loaded_for_date date, loaded_at timestamptz
);
create table marts.order_lines (
    order_line_id text, order_id text, line_number bigint, product_id text, category text,
    quantity bigint, unit_price numeric, line_total numeric
);
create table marts.products (
    product_id text, product_name text, category text, list_price numeric,
    is_merchandise boolean not null default true
);
"""


@pytest.fixture(scope="module")
def shop_url(session_database):
    url = create_database("personalization")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(MARTS_DDL)
        tables.ensure_schema(conn)
        tables.ensure_schema(conn)  # idempotent
    return url


@pytest.fixture
def shop(shop_url):
    """A connection whose changes are rolled back after the test."""
    with psycopg.connect(shop_url) as conn:
        conn.execute("set time zone 'UTC'")
        yield conn
        conn.rollback()


# --- templates ----------------------------------------------------------------------------


def test_render_with_the_customers_data():
    text = p.render(
        "Hi {{ first_name or 'there' }}, still into {{ category }}? "
        "{% for product in products %}{{ product }}{% if not loop.last %}, {% endif %}"
        "{% endfor %}",
        {"first_name": "Ana", "category": "Tea", "products": ["Sencha", "Oolong"]},
    )
    assert text == "Hi Ana, still into Tea? Sencha, Oolong"
    assert p.render("Hi {{ first_name or 'there' }}", {"first_name": None}) == "Hi there"


def test_an_unknown_name_is_an_error_not_an_empty_string():
    with pytest.raises(p.TemplateError) as raised:
        p.render("Hi {{ first_nme }}", {"first_name": "Ana", "coupon": "X"})
    assert str(raised.value) == "template: 'first_nme' is undefined; available: coupon, first_name"
    with pytest.raises(p.TemplateError, match="has no attribute 'code'"):
        p.render("{{ coupon.code }}", {"coupon": {}})


def test_the_sandbox_refuses_python_internals():
    with pytest.raises(p.TemplateError, match="not allowed in the sandbox"):
        p.render("{{ name.__class__.__mro__[1].__subclasses__() }}", {"name": "x"})
    with pytest.raises(p.TemplateError, match="template line 2: 'include' is not allowed"):
        p.render("Hi\n{% include 'other.html' %}", {})
    with pytest.raises(p.TemplateError, match="'import' is not allowed"):
        p.validate_template("{% import 'macros' as m %}", [])
    with pytest.raises(p.TemplateError, match="'extends' is not allowed"):
        p.validate_template("{% extends 'base' %}", [])


def test_templates_are_compiled_once():
    template = "Hi {{ first_name }}"
    assert p.compile_template(template) is p.compile_template(template)
    assert p.compile_template(template) is not p.compile_template(template, autoescape=True)
    with pytest.raises(p.TemplateError, match="No filter named 'shout'"):
        p.render("{{ first_name | shout }}", {"first_name": "Ana"})


def test_html_templates_escape_customer_data():
    html = p.render("<p>{{ first_name }}</p>", {"first_name": "<b>Ana</b>"}, autoescape=True)
    assert html == "<p>&lt;b&gt;Ana&lt;/b&gt;</p>"
    assert p.render("{{ first_name }}", {"first_name": "<b>"}) == "<b>"


def test_validate_template():
    used = p.validate_template(
        "Hi {{ first_name }} {{ coupon.code }}{% for x in products %}{{ x }}{% endfor %}",
        ["first_name", "coupon", "products", "tracked_link"],
    )
    assert used == {"first_name", "coupon", "products"}
    with pytest.raises(p.TemplateError) as raised:
        p.validate_template("{{ first_nme }} {{ cupon }}", ["first_name", "coupon"])
    assert str(raised.value) == (
        "template uses unknown names cupon, first_nme; available: coupon, first_name"
    )
    with pytest.raises(p.TemplateError, match="template syntax error on line 2"):
        p.validate_template("Hi\n{{ first_name ", ["first_name"])
    with pytest.raises(p.TemplateError, match="template line 1: No filter named 'shout'"):
        p.validate_template("{{ first_name | shout }}", ["first_name"])
    assert p.validate_template("{{ first_name | upper | default('x') }}", ["first_name"])


# --- coupons ------------------------------------------------------------------------------


def test_coupons_are_unique_per_campaign_step_and_customer_and_stable():
    codes = {
        p.coupon_code(campaign, step, customer, SECRET)
        for campaign in ("we_miss_you", "cart")
        for step in ("first", "coupon")
        for customer in (f"c{i}" for i in range(500))
    }
    assert len(codes) == 2 * 2 * 500
    code = p.coupon_code("we_miss_you", "coupon", "c1", SECRET)
    assert code == p.coupon_code("we_miss_you", "coupon", "c1", SECRET)
    assert code != p.coupon_code("we_miss_you", "coupon", "c1", b"another secret")
    assert len(code) == len("WB-XXXX-XXXX-XXXX") and code.startswith("WB-")
    assert not set(code) & set("ILOU")
    # the separator keeps ("a", "bc") and ("ab", "c") apart
    assert p.coupon_code("a", "bc", "x", SECRET) != p.coupon_code("ab", "c", "x", SECRET)


def test_issue_coupon_with_expiry_and_verification():
    coupon = p.issue_coupon(
        "we_miss_you", "coupon", "c1", send_date=RUN_DATE, valid_days=14, secret=SECRET
    )
    assert coupon.expires_on == date(2026, 12, 3)
    assert p.is_coupon_for(coupon.code.lower(), "we_miss_you", "coupon", "c1", SECRET)
    assert not p.is_coupon_for(coupon.code, "we_miss_you", "coupon", "c2", SECRET)
    with pytest.raises(ValueError, match="at least one day"):
        p.issue_coupon("a", "b", "c", send_date=RUN_DATE, valid_days=0, secret=SECRET)


def test_coupon_secret_is_required_live_and_defaults_for_the_demo(monkeypatch):
    monkeypatch.delenv(p.COUPON_SECRET_ENV, raising=False)
    assert p.coupon_secret("dry_run") == p.DEMO_COUPON_SECRET.encode()
    with pytest.raises(RuntimeError, match="WINBACK_COUPON_SECRET is not set"):
        p.coupon_secret("live")
    strong = "s3cret-" + "x" * 32
    monkeypatch.setenv(p.COUPON_SECRET_ENV, strong)
    assert p.coupon_secret("live") == strong.encode()
    assert p.coupon_secret("dry_run") == strong.encode()


# --- links --------------------------------------------------------------------------------


def test_landing_url_with_utm_parameters():
    url = p.landing_url(
        "https://shop.example/sale?ref=home&utm_source=old#top",
        campaign_id="we_miss_you",
        step_id="coupon",
        channel="email",
        variant="b",
    )
    parts = urlsplit(url)
    assert parts.fragment == "top"
    assert parse_qs(parts.query) == {
        "ref": ["home"],
        "utm_source": ["winback"],
        "utm_medium": ["email"],
        "utm_campaign": ["we_miss_you"],
        "utm_content": ["coupon/b"],
    }
    plain = p.landing_url("https://shop.example", campaign_id="c", step_id="s", channel="sms")
    assert plain == (
        "https://shop.example?utm_source=winback&utm_medium=sms&utm_campaign=c&utm_content=s"
    )
    with pytest.raises(ValueError, match="absolute http"):
        p.landing_url("javascript:alert(1)", campaign_id="c", step_id="s", channel="email")


def test_tracked_links_are_deterministic_and_distinct():
    link = p.tracked_link("we_miss_you", "first", "c1", "email", "https://shop.example", SECRET)
    again = p.tracked_link("we_miss_you", "first", "c1", "email", "https://x.example", SECRET)
    assert link.code == again.code and len(link.code) == 10
    assert link.short_url("https://go.example/") == f"https://go.example/{link.code}"
    codes = {
        p.tracked_link("we_miss_you", step, f"c{i}", channel, "u", SECRET).code
        for step in ("first", "coupon")
        for channel in ("email", "sms")
        for i in range(1000)
    }
    assert len(codes) == 4000


def test_upsert_tracked_links_and_resolve_a_click(shop):
    target = "https://shop.example/?utm_campaign=we_miss_you"
    links = [
        p.tracked_link("we_miss_you", "first", f"c{i}", "email", target, SECRET) for i in range(50)
    ]
    assert p.upsert_tracked_links(shop, links) == 50
    assert p.upsert_tracked_links(shop, links) == 0  # a rerun changes nothing
    assert p.upsert_tracked_links(shop, links[:1] + links[:1]) == 0  # duplicates in a batch
    moved = p.tracked_link("we_miss_you", "first", "c3", "email", target + "&x=1", SECRET)
    assert p.upsert_tracked_links(shop, [moved]) == 1
    assert p.resolve_link(shop, links[3].code.upper()) == moved
    assert p.resolve_link(shop, "nosuchcode") is None
    assert shop.execute("select count(*) from winback.tracked_links").fetchone()[0] == 50


def test_upsert_on_an_autocommit_connection(shop_url):
    link = p.tracked_link("auto", "first", "c1", "sms", "https://a.example", SECRET)
    with psycopg.connect(shop_url, autocommit=True) as conn:
        try:
            assert p.upsert_tracked_links(conn, [link]) == 1
            assert p.upsert_tracked_links(conn, [link]) == 0
            assert p.resolve_link(conn, link.code) == link
        finally:
            conn.execute("delete from winback.tracked_links where campaign_id = 'auto'")


def test_a_code_collision_is_refused(shop):
    link = p.tracked_link("we_miss_you", "first", "c1", "email", "https://a.example", SECRET)
    p.upsert_tracked_links(shop, [link])
    impostor = p.TrackedLink(link.code, "other", "first", "c2", "email", "https://b.example")
    with pytest.raises(ValueError, match="would point at two links"):
        p.upsert_tracked_links(shop, [impostor])
    assert p.resolve_link(shop, link.code) == link


# --- send hour ----------------------------------------------------------------------------


def _add_customers(conn, *customer_ids):
    for customer_id in customer_ids:
        conn.execute(
            "insert into marts.customer_features (customer_id, country_code) values (%s, 'DE')",
            (customer_id,),
        )


def _add_events(conn, customer_id, *moments, event_type="open", channel="email"):
    for moment in moments:
        conn.execute(
            "insert into marts.engagement_events "
            "(event_id, customer_id, channel, event_type, occurred_at) "
            "values (gen_random_uuid()::text, %s, %s, %s, %s)",
            (customer_id, channel, event_type, datetime.fromisoformat(moment).replace(tzinfo=UTC)),
        )


def test_send_hour_is_the_usual_open_hour_with_a_default(shop):
    _add_customers(shop, "evening", "tie", "single", "never", "old", "future", "sms_only")
    # opens twice at 19 h, once at 7 h; the 7 h open is the latest: the mode still wins
    _add_events(shop, "evening", "2026-11-01T19:05:00", "2026-11-05T19:59:00", "2026-11-10T07:00")
    _add_events(shop, "evening", "2026-11-12T07:00", event_type="click")  # not an open
    # one open at 8 h, one at 21 h: a tie goes to the latest open's hour
    _add_events(shop, "tie", "2026-09-01T08:00:00", "2026-11-19T21:30:00")
    _add_events(shop, "single", "2026-11-01T06:00:00")  # one open is not a habit
    _add_events(shop, "old", "2026-01-01T05:00:00", "2026-01-02T05:00:00")  # before the window
    _add_events(shop, "future", "2026-11-21T05:00:00", "2026-11-22T05:00:00")  # after run_date
    _add_events(shop, "sms_only", "2026-11-01T05:00", "2026-11-02T05:00", channel="sms")
    assert p.send_hours(shop, RUN_DATE) == {
        "evening": 19,
        "tie": 21,
        "single": 10,
        "never": 10,
        "old": 10,
        "future": 10,
        "sms_only": 10,
    }
    hours = p.send_hours(shop, RUN_DATE, default_hour=9, min_opens=1, time_zone="Europe/Berlin")
    assert hours["evening"] == 20  # 19 h UTC in November is 20 h in Berlin
    assert hours["single"] == 7
    assert hours["never"] == 9
    assert p.send_hours(shop, date(2026, 11, 22))["future"] == 5
    assert p.send_hours(shop, date(2026, 1, 2), lookback_days=2)["old"] == 5
    assert p.send_hours(shop, date(2026, 1, 3), lookback_days=1)["old"] == 10


def test_send_hour_query_over_any_customer_relation(shop):
    _add_customers(shop, "a", "b")
    _add_events(shop, "a", "2026-11-01T18:00", "2026-11-02T18:10")
    shop.execute("create temporary table audience (customer_id text)")
    shop.execute("insert into audience values ('a'), ('a'), ('z')")
    query, params = p.send_hour_query(RUN_DATE, sql.Identifier("audience"))
    assert dict(shop.execute(query, params).fetchall()) == {"a": 18, "z": 10}


def test_send_hours_in_each_customers_own_zone_in_one_query(shop):
    """`zone_column`: every customer's hour in their own zone, as one query per zone gives,
    including the window's edges, which are whole days in the customer's zone."""
    zones = {"berlin": "Europe/Berlin", "york": "America/New_York", "tokyo": "Asia/Tokyo"}
    _add_customers(shop, *zones)
    for customer_id in zones:
        # 23:30 UTC on the run date is the next day in Berlin and Tokyo: outside their window
        _add_events(
            shop,
            customer_id,
            "2026-11-01T19:05:00",
            "2026-11-05T19:59:00",
            "2026-11-10T03:00",
            "2026-11-20T23:30",
            "2026-11-20T23:40",
            "2026-11-20T23:50",
        )
    shop.execute("create temporary table zoned (customer_id text, zone text)")
    shop.cursor().executemany("insert into zoned values (%s, %s)", list(zones.items()))
    query, params = p.send_hour_query(RUN_DATE, sql.Identifier("zoned"), zone_column="zone")
    together = dict(shop.execute(query, params).fetchall())
    one_by_one = {c: p.send_hours(shop, RUN_DATE, time_zone=z)[c] for c, z in zones.items()}
    assert together == one_by_one
    assert together == {"berlin": 20, "york": 18, "tokyo": 4}


def test_send_hour_options_are_checked():
    with pytest.raises(ValueError, match="unknown time zone"):
        p.send_hour_query(RUN_DATE, time_zone="Mars/Olympus")
    with pytest.raises(ValueError, match="0-23"):
        p.send_hour_query(RUN_DATE, default_hour=24)


# --- recommendations ----------------------------------------------------------------------

PRODUCTS = [
    ("tea-1", "Sencha", "Tea", Decimal("9.90")),
    ("tea-2", "Oolong", "Tea", Decimal("12.50")),
    ("tea-3", "Assam", "Tea", Decimal("7.00")),
    ("tea-4", "Rooibos", "Tea", Decimal("6.00")),
    ("tea-5", "Matcha", "Tea", Decimal("24.00")),  # never sold: ranked last
    ("cup-1", "Mug", "Cups", Decimal("15.00")),
]


def _add_order(conn, order_id, customer_id, order_date, lines, completed=True):
    conn.execute(
        "insert into marts.orders "
        "(order_id, customer_id, ordered_at, order_date, order_status, is_completed, order_total)"
        " values (%s, %s, %s, %s, %s, %s, 0)",
        (
            order_id,
            customer_id,
            datetime.combine(order_date, datetime.min.time(), UTC),
            order_date,
            "completed" if completed else "cancelled",
            completed,
        ),
    )
    for number, (product_id, quantity) in enumerate(lines, start=1):
        conn.execute(
            "insert into marts.order_lines "
            "(order_line_id, order_id, line_number, product_id, quantity, unit_price, line_total)"
            " values (%s, %s, %s, %s, %s, 1, %s)",
            (f"{order_id}-{number}", order_id, number, product_id, quantity, quantity),
        )


@pytest.fixture
def catalogue(shop):
    for product in PRODUCTS:
        shop.execute("insert into marts.products values (%s, %s, %s, %s)", product)
    # popularity in the year up to RUN_DATE: tea-1 3 buyers, tea-2 2 buyers (5 units),
    # tea-3 2 buyers (2 units), tea-4 1 buyer; tea-5 none
    _add_order(shop, "o1", "x1", date(2026, 10, 1), [("tea-1", 1), ("tea-2", 4)])
    _add_order(shop, "o2", "x2", date(2026, 10, 2), [("tea-1", 1), ("tea-3", 1)])
    _add_order(shop, "o3", "x3", date(2026, 10, 3), [("tea-1", 1), ("tea-2", 1), ("tea-3", 1)])
    _add_order(shop, "o4", "x4", date(2026, 10, 4), [("tea-4", 1)])
    # outside the window or not completed: no popularity
    _add_order(shop, "o5", "x5", date(2024, 1, 1), [("tea-4", 9)])
    _add_order(shop, "o6", "x6", date(2026, 10, 5), [("tea-4", 9)], completed=False)
    _add_order(shop, "o7", "x7", date(2026, 12, 1), [("tea-4", 9)])  # after run_date
    # the customers to recommend to
    _add_order(shop, "o8", "ana", date(2026, 5, 1), [("tea-1", 1), ("cup-1", 1)])
    _add_order(shop, "o9", "bob", date(2026, 5, 1), [("tea-3", 1)], completed=False)
    shop.execute("create temporary table targets (customer_id text, favourite_category text)")
    shop.execute(
        "insert into targets values ('ana', 'Tea'), ('bob', 'Tea'), ('x3', 'Tea'), "
        "('cup_fan', 'Cups'), ('nobody', null), ('x1', 'Unknown')"
    )
    return shop


def _names(recommended):
    return {customer: [r.product_name for r in items] for customer, items in recommended.items()}


def test_recommendations_are_popular_products_of_the_favourite_category_not_yet_bought(
    catalogue,
):
    recommended = p.recommendations(catalogue, RUN_DATE, customers=sql.Identifier("targets"))
    assert _names(recommended) == {
        # bought Sencha (tea-1): the next three by popularity
        "ana": ["Oolong", "Assam", "Rooibos"],
        # a cancelled order is not a purchase
        "bob": ["Sencha", "Oolong", "Assam"],
        # bought three of the five teas
        "x3": ["Rooibos", "Matcha"],
        "cup_fan": ["Mug"],
    }
    assert recommended["ana"][0] == p.Recommendation("tea-2", "Oolong", Decimal("12.50"))


def test_a_product_that_is_not_merchandise_is_never_recommended(catalogue):
    """Postage in the Tea category, bought by everybody: still never recommended."""
    catalogue.execute("insert into marts.products values ('POST', 'POSTAGE', 'Tea', 18, false)")
    for index in range(6):
        _add_order(catalogue, f"fee{index}", f"f{index}", date(2026, 10, 6), [("POST", 1)])
    recommended = _names(
        p.recommendations(catalogue, RUN_DATE, customers=sql.Identifier("targets"))
    )
    assert recommended["bob"] == ["Sencha", "Oolong", "Assam"]
    assert not any("POSTAGE" in names for names in recommended.values())


def test_recommendations_options(catalogue):
    targets = sql.Identifier("targets")
    one = p.recommendations(catalogue, RUN_DATE, customers=targets, top_n=1)
    assert _names(one)["ana"] == ["Oolong"]
    # on 2 October: over the whole year Sencha, then Oolong (4 units), then Assam; over
    # the last day only o2 counts (Sencha and Assam), the rest tie and go by product_id
    year = p.recommendations(catalogue, date(2026, 10, 2), customers=targets)
    assert _names(year)["bob"] == ["Sencha", "Oolong", "Assam"]
    day = p.recommendations(catalogue, date(2026, 10, 2), customers=targets, lookback_days=1)
    assert _names(day)["bob"] == ["Sencha", "Assam", "Oolong"]


def test_a_run_reuses_one_product_ranking_for_every_campaign(catalogue):
    """MessageBuilder ranks the products once per run; reading the ranking from a table
    gives exactly what the self-contained query gives."""
    targets = sql.Identifier("targets")
    query, params = p.ranked_products_query(RUN_DATE)
    catalogue.execute(sql.SQL("create temporary table ranking as {}").format(query), params)
    query, params = p.recommendations_query(
        RUN_DATE, targets, ranked_products=sql.Identifier("ranking")
    )
    from_table = catalogue.execute(query, params).fetchall()
    query, params = p.recommendations_query(RUN_DATE, targets)
    assert from_table == catalogue.execute(query, params).fetchall()
    assert len(from_table) == 9


def test_recommendation_options_are_checked():
    with pytest.raises(ValueError, match="at least 1"):
        p.recommendations_query(RUN_DATE, top_n=0)
