"""The audience-rule compiler: grammar, types, injection attempts, and real execution.

Every compiled rule is executed on a PostgreSQL table with exactly the columns and types
`feature_columns()` reads from the dbt YAML, filled with customers placed on each
boundary the rules test.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from winback.campaigns.rules import (
    CompiledRule,
    RuleError,
    column_kind,
    compile_rule,
    feature_columns,
)

RUN_DATE = date(2026, 11, 20)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# One customer per situation the source articles' audiences distinguish, several of them
# sitting exactly on a boundary (120 days, 60 days, 90 days, P(alive) 0.3).
CUSTOMERS = [
    {
        "customer_id": "loyal_lapsed",
        "orders_count": 5,
        "last_order_date": date(2026, 6, 1),
        "days_since_last_order": 172,
        "total_order_value": Decimal("420.50"),
        "is_email_subscribed": False,
        "is_sms_subscribed": True,
        "has_valid_phone": True,
        "p_alive": 0.2,
        "abandoned_carts": 1,
        "oldest_abandoned_cart_days": 75,
        "last_email_open_at": _at("2026-07-01T10:00:00"),
        "rfm_segment": "At risk",
        "country_code": "DE",
        "expected_next_order_date": date(2026, 7, 1),
    },
    {
        "customer_id": "recent_regular",
        "orders_count": 6,
        "last_order_date": date(2026, 11, 1),
        "days_since_last_order": 19,
        "total_order_value": Decimal("610.00"),
        "is_email_subscribed": True,
        "is_sms_subscribed": True,
        "has_valid_phone": False,
        "p_alive": 0.95,
        "abandoned_carts": 0,
        "last_email_open_at": _at("2026-11-19T08:00:00"),
        "rfm_segment": "Champions",
        "country_code": "FR",
        "expected_next_order_date": date(2026, 12, 1),
    },
    {
        "customer_id": "boundary_120",
        "orders_count": 4,
        "last_order_date": date(2026, 7, 23),  # exactly run_date - 120 days
        "days_since_last_order": 120,
        "total_order_value": Decimal("99.99"),
        "is_email_subscribed": True,
        "is_sms_subscribed": False,
        "has_valid_phone": True,
        "p_alive": 0.3,
        "abandoned_carts": 2,
        "oldest_abandoned_cart_days": 60,
        "last_email_open_at": _at("2026-08-22T00:00:00"),  # exactly run_date - 90 days
        "rfm_segment": "Can't lose them",
        "country_code": "DE",
        "expected_next_order_date": date(2026, 11, 19),
    },
    {
        "customer_id": "boundary_121",
        "orders_count": 4,
        "last_order_date": date(2026, 7, 22),
        "days_since_last_order": 121,
        "total_order_value": Decimal("100.00"),
        "is_email_subscribed": False,
        "is_sms_subscribed": True,
        "has_valid_phone": True,
        "p_alive": 0.29,
        "abandoned_carts": 1,
        "oldest_abandoned_cart_days": 59,
        "last_email_open_at": _at("2026-08-21T23:59:59"),
        "rfm_segment": "Hibernating",
        "country_code": "NL",
        "expected_next_order_date": date(2026, 11, 17),
    },
    {
        "customer_id": "one_timer",
        "orders_count": 1,
        "last_order_date": date(2025, 1, 10),
        "days_since_last_order": 679,
        "total_order_value": Decimal("20"),
        "is_email_subscribed": True,
        "is_sms_subscribed": False,
        "has_valid_phone": False,
        "abandoned_carts": 0,
        "rfm_segment": "Lost",
        "country_code": "DE",
    },
]
ALL = {customer["customer_id"] for customer in CUSTOMERS}


@pytest.fixture
def features(conn):
    """A temporary customer_features table typed from the dbt YAML, with CUSTOMERS."""
    conn.execute("set time zone 'UTC'")
    columns = feature_columns()
    conn.execute(
        sql.SQL("create temporary table customer_features ({})").format(
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(data_type))
                for name, data_type in columns.items()
            )
        )
    )
    for customer in CUSTOMERS:
        conn.execute(
            sql.SQL("insert into customer_features ({}) values ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, customer)),
                sql.SQL(", ").join(sql.Placeholder() * len(customer)),
            ),
            list(customer.values()),
        )
    return conn


def audience(conn, rule: str | CompiledRule, run_date: date = RUN_DATE) -> set[str]:
    compiled = compile_rule(rule) if isinstance(rule, str) else rule
    query = sql.SQL("select customer_id from customer_features f where {}").format(compiled.sql)
    rows = conn.execute(query, {**compiled.params, "run_date": run_date}).fetchall()
    return {row[0] for row in rows}


# --- the YAML columns ---------------------------------------------------------------------


def test_feature_columns_are_read_with_their_types_from_the_dbt_yaml():
    columns = feature_columns()
    assert columns["orders_count"] == "bigint"
    assert columns["p_alive"] == "double precision"
    assert columns["last_order_date"] == "date"
    assert columns["last_email_open_at"] == "timestamptz"
    assert columns["is_email_subscribed"] == "boolean"
    assert columns["country_code"] == "char(2)"
    # every documented column has a type the rule language understands
    assert all(column_kind(data_type) for data_type in columns.values())
    assert len(columns) >= 50


# --- the source articles' audiences -------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        # more than 3 orders and none in 120 days
        (
            "orders_count > 3 and last_order_date < run_date - 120 days",
            {"loyal_lapsed", "boundary_121"},
        ),
        ("orders_count > 3 and days_since_last_order > 120", {"loyal_lapsed", "boundary_121"}),
        # subscribed to the newsletter
        ("is_email_subscribed", {"recent_regular", "boundary_120", "one_timer"}),
        ("is_email_subscribed = true", {"recent_regular", "boundary_120", "one_timer"}),
        # has a phone and SMS consent
        ("has_valid_phone and is_sms_subscribed", {"loyal_lapsed", "boundary_121"}),
        # cart abandoned 60+ days ago
        ("oldest_abandoned_cart_days >= 60", {"loyal_lapsed", "boundary_120"}),
        # no email opened in 90 days (never opened counts)
        (
            "last_email_open_at is null or last_email_open_at < run_date - 90 days",
            {"loyal_lapsed", "boundary_121", "one_timer"},
        ),
        # P(alive) below 0.3 (unscored customers are not below anything)
        ("p_alive < 0.3", {"loyal_lapsed", "boundary_121"}),
    ],
)
def test_source_article_audiences(features, rule, expected):
    assert audience(features, rule) == expected


# --- every operator, executed ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("orders_count = 4", {"boundary_120", "boundary_121"}),
        ("orders_count != 4", {"loyal_lapsed", "recent_regular", "one_timer"}),
        ("orders_count <> 4", {"loyal_lapsed", "recent_regular", "one_timer"}),
        ("orders_count < 4", {"one_timer"}),
        ("orders_count <= 4", {"boundary_120", "boundary_121", "one_timer"}),
        ("orders_count > 5", {"recent_regular"}),
        ("orders_count >= 5", {"loyal_lapsed", "recent_regular"}),
        ("total_order_value > 99.995", {"loyal_lapsed", "recent_regular", "boundary_121"}),
        ("total_order_value = 420.5", {"loyal_lapsed"}),
        ("p_alive > -1", ALL - {"one_timer"}),
        ("country_code = 'DE'", {"loyal_lapsed", "boundary_120", "one_timer"}),
        ("country_code in ('NL', 'FR')", {"recent_regular", "boundary_121"}),
        ("country_code not in ('DE', 'FR')", {"boundary_121"}),
        ("rfm_segment = 'Can''t lose them'", {"boundary_120"}),
        ("rfm_segment in ('At risk', 'Hibernating')", {"loyal_lapsed", "boundary_121"}),
        ("orders_count between 4 and 5", {"loyal_lapsed", "boundary_120", "boundary_121"}),
        ("orders_count not between 2 and 5", {"recent_regular", "one_timer"}),
        ("p_alive between 0.29 and 0.3", {"boundary_120", "boundary_121"}),
        ("p_alive is null", {"one_timer"}),
        ("p_alive is not null", ALL - {"one_timer"}),
        ("oldest_abandoned_cart_days is null", {"recent_regular", "one_timer"}),
        ("not is_email_subscribed", {"loyal_lapsed", "boundary_121"}),
        ("is_email_subscribed = false", {"loyal_lapsed", "boundary_121"}),
        ("is_email_subscribed != is_sms_subscribed", ALL - {"recent_regular"}),
        ("not (orders_count > 3)", {"one_timer"}),
        ("true", ALL),
        ("false", set()),
        ("last_order_date = date '2026-07-23'", {"boundary_120"}),
        ("last_order_date >= date '2026-07-22'", ALL - {"one_timer", "loyal_lapsed"}),
        (
            "last_order_date between run_date - 4 months and run_date",
            ALL - {"one_timer", "loyal_lapsed"},
        ),
        ("last_order_date < run_date - 1 year", {"one_timer"}),
        ("last_order_date < run_date - 2 years", set()),
        ("last_order_date > run_date - 3 weeks", {"recent_regular"}),
        ("expected_next_order_date + 2 days < run_date", {"loyal_lapsed", "boundary_121"}),
        (
            "expected_next_order_date + 1 week >= run_date + 1 day",
            ALL - {"loyal_lapsed", "one_timer"},
        ),
        (
            "expected_next_order_date < last_order_date + 2 months",
            {"loyal_lapsed", "recent_regular"},
        ),
        ("last_email_open_at >= run_date - 1 day", {"recent_regular"}),
        ("last_email_open_at > date '2026-08-21' + 1 day", {"recent_regular"}),
        (
            "last_email_open_at between date '2026-08-21' and run_date - 90 days",
            {"boundary_120", "boundary_121"},
        ),
        ("run_date > date '2026-01-01'", ALL),
        ("ORDERS_COUNT > 5 AND Country_Code = 'FR'", {"recent_regular"}),
    ],
)
def test_every_operator_executes(features, rule, expected):
    assert audience(features, rule) == expected


def test_the_run_date_moves_date_rules(features):
    rule = compile_rule("last_order_date < run_date - 120 days")
    assert audience(features, rule, date(2026, 11, 21)) == ALL - {"recent_regular"}
    assert audience(features, rule, date(2025, 5, 11)) == {"one_timer"}


# --- precedence and SQL shape ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected_sql"),
    [
        (
            "is_email_subscribed or has_valid_phone and is_sms_subscribed",
            '("f"."is_email_subscribed" or ("f"."has_valid_phone" and "f"."is_sms_subscribed"))',
        ),
        (
            "(is_email_subscribed or has_valid_phone) and is_sms_subscribed",
            '(("f"."is_email_subscribed" or "f"."has_valid_phone") and "f"."is_sms_subscribed")',
        ),
        (
            "not is_email_subscribed and has_valid_phone",
            '((not "f"."is_email_subscribed") and "f"."has_valid_phone")',
        ),
        (
            "not (is_email_subscribed and has_valid_phone)",
            '(not ("f"."is_email_subscribed" and "f"."has_valid_phone"))',
        ),
        ("not not has_complained", '(not (not "f"."has_complained"))'),
        (
            "orders_count between 1 and 3 and has_complained",
            '(("f"."orders_count" between %(rule_0)s and %(rule_1)s) and "f"."has_complained")',
        ),
        ("orders_count > 3", '("f"."orders_count" > %(rule_0)s)'),
        (
            "last_order_date < run_date - 120 days",
            '("f"."last_order_date" < cast((cast(%(run_date)s as date) - '
            "make_interval(days => cast(%(rule_0)s as integer))) as date))",
        ),
    ],
)
def test_precedence_and_sql(conn, rule, expected_sql):
    assert compile_rule(rule).sql.as_string(conn) == expected_sql


def test_literals_are_parameters_and_columns_are_reported(conn):
    compiled = compile_rule(
        "rfm_segment in ('At risk', 'Lost') and p_alive < 0.3"
        " and last_order_date > date '2026-01-31' - 2 weeks",
        alias="feat",
        param_prefix="audience",
    )
    assert compiled.params == {
        "audience_0": "At risk",
        "audience_1": "Lost",
        "audience_2": Decimal("0.3"),
        "audience_3": date(2026, 1, 31),
        "audience_4": 14,
    }
    assert compiled.columns == {"rfm_segment", "p_alive", "last_order_date"}
    rendered = compiled.sql.as_string(conn)
    assert "At risk" not in rendered and "0.3" not in rendered and "2026" not in rendered
    assert '"feat"."p_alive"' in rendered


def test_custom_columns_mapping():
    compiled = compile_rule("score >= 2", {"score": "integer"})
    assert compiled.columns == {"score"}
    with pytest.raises(RuleError, match="unknown column 'orders_count'"):
        compile_rule("orders_count > 1", {"score": "integer"})
    with pytest.raises(RuleError, match="cannot use"):
        compile_rule("tags = 'x'", {"tags": "jsonb"})


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "message", "position"),
    [
        (
            "orders_cnt > 3",
            r"unknown column 'orders_cnt' \(did you mean orders_count\?\); "
            r"valid columns: abandoned_cart_value, ",
            1,
        ),
        (
            "last_order_date > 5",
            r"cannot compare date column last_order_date with a number value",
            17,
        ),
        (
            "last_order_date > '2026-01-01'",
            r"cannot compare date column last_order_date with a text value \(write dates as date",
            17,
        ),
        (
            "is_email_subscribed = 'yes'",
            r"cannot compare boolean column is_email_subscribed with a text value",
            21,
        ),
        ("is_email_subscribed > false", r"'>' needs numbers or dates", 21),
        ("rfm_segment between 'A' and 'B'", r"'between' needs numbers or dates", 13),
        (
            "orders_count in (1, 'two')",
            r"cannot compare number column orders_count with a text value",
            14,
        ),
        ("orders_count", r"'orders_count' is a number, not a condition", 1),
        ("orders_count + 3 > 4", r"arithmetic is only for dates", 14),
        ("run_date - 3 > last_order_date", r"expected days, weeks, months or years after 3", 14),
        ("run_date - 1.5 days > last_order_date", r"expected a whole number of days", 12),
        ("run_date - 3 fortnights > last_order_date", r"expected days, weeks, months or years", 14),
        ("last_order_date > date '2026-02-30'", r"'2026-02-30' is not a date", 24),
        ("last_order_date > date 2026", r"expected a date like date '2026-01-31'", 24),
        ("p_alive = null", r"null is not a value: write 'column is null'", 11),
        ("5 is null", r"'is null' applies to a column", 3),
        ("orders_count > 3 and", r"expected a column or a value, found the end of the rule", 21),
        (
            "orders_count > 3 has_complained",
            r"expected 'and', 'or' or the end of the rule, found 'has_complained'",
            18,
        ),
        ("(orders_count > 3", r"expected '\)', found the end of the rule", 18),
        ("orders_count not > 3", r"expected 'in' or 'between' after 'not'", 18),
        ("rfm_segment = 'At risk", r"unterminated string literal", 15),
        ("orders_count > 3e5", r"malformed number '3e'", 16),
        ("", r"the rule is empty", 1),
        ("last_order_date < run_date - 90days", r"malformed number '90d' \(write digits", 30),
        ("last_order_date < run_date - 101 years", r"101 years is more than 100 years", 30),
        ("last_order_date < run_date - 36601 days", r"36601 days is more than 100 years", 30),
        ("orders_count > 3 and and", r"expected a column or a value, found 'and'", 22),
    ],
)
def test_errors_name_the_problem_and_position(rule, message, position):
    with pytest.raises(RuleError, match=message) as raised:
        compile_rule(rule)
    assert raised.value.position == position - 1
    assert str(raised.value).endswith(f"at position {position}")


def test_overlong_and_overnested_rules_are_refused():
    with pytest.raises(RuleError, match="longer than"):
        compile_rule("orders_count > 1 or " * 300 + "true")
    with pytest.raises(RuleError, match="nests deeper"):
        compile_rule("(" * 100 + "true" + ")" * 100)
    with pytest.raises(RuleError, match="nests deeper"):
        compile_rule("not " * 100 + "true")


# --- injection attempts ---------------------------------------------------------------------


INJECTIONS = [
    ("orders_count > 3; drop table customers", "';' is not allowed"),
    ("orders_count > 3 -- and is_email_subscribed", r"comments \('--'\)"),
    ("orders_count > 3 /* x */", r"comments \('/\* \*/'\)"),
    ("orders_count::text = '3'", r"casts \('::'\)"),
    ('"orders_count" > 3', "quoted identifiers are not allowed"),
    ("lower(rfm_segment) = 'lost'", r"function calls are not allowed \(lower\(...\)\)"),
    ("pg_sleep(10) is null", "function calls are not allowed"),
    ("orders_count in (select 1)", "subqueries are not allowed"),
    ("(select true)", "subqueries are not allowed"),
    ("exists (select 1 from customers)", "function calls are not allowed"),
    ("orders_count > 3 union select email from customers", "expected 'and', 'or' or the end"),
    ("rfm_segment = 'x' or 1=1 --'", r"comments \('--'\)"),
    ("rfm_segment = '' or '1'='1'", None),  # a valid, harmless tautology: all strings are data
    ("rfm_segment = 'a''; select pg_sleep(1); --'", None),  # one string literal: data, never SQL
    ("rfm_segment = 'a' || 'b'", "unexpected character '|'"),
    ("orders_count > 3 \\g", r"unexpected character '\\\\'"),
    ("orders_count > $1", "unexpected character '\\$'"),
    ("orders_count > %(run_date)s", "unexpected character '%'"),
    ("orders_count > 3 and select = 1", r"SQL \('select'\) is not part of the rule language"),
    ("f.orders_count > 3", "unexpected character '.'"),
    ("orders_count > 0x10", "malformed number '0x'"),
    ("last_order_date < run_date - interval '90 days'", "expected a whole number of days"),
    ("orders_count > 3 and customer_id ~ 'x'", "unexpected character '~'"),
    ("rfm_segment = e'\\x41'", "unknown column 'e'"),
    ("rfm_segment = $$x$$", "unexpected character '\\$'"),
    ("rfm_segment = 'x\x00y'", "control characters"),
    ("orders_count > 3\u037e drop", "unexpected character"),  # Greek question mark
    ("órders_count > 3", "unexpected character 'ó'"),
    ("orders_\u212aount > 3", "unexpected character '\u212a'"),  # Kelvin sign, folds to k
    ("orders_count > \u0663", "unexpected character"),  # Arabic-Indic digit three
]


@pytest.mark.parametrize(("rule", "message"), INJECTIONS)
def test_injection_attempts_fail_at_compile_time(features, rule, message):
    if message is None:
        # Quotes inside a string literal are data: the value travels as a parameter.
        compiled = compile_rule(rule)
        rendered = compiled.sql.as_string(features)
        assert "'" not in rendered and ";" not in rendered
        audience(features, compiled)  # runs, and the temporary table is still there
        assert features.execute("select count(*) from customer_features").fetchone()[0] == len(
            CUSTOMERS
        )
        return
    with pytest.raises(RuleError, match=message):
        compile_rule(rule)


# Valid rules from the grammar, executed: whatever the combination, the SQL runs.
_NUMBER_VALUES = st.sampled_from(
    ["orders_count", "p_alive", "total_order_value", "3", "0.25", "-2"]
)
_DATE_VALUES = st.sampled_from(
    [
        "last_order_date",
        "last_email_open_at",
        "run_date",
        "date '2026-03-01'",
        "run_date - 90 days",
        "expected_next_order_date + 2 weeks",
        "run_date + 1 month",
    ]
)
_TEXT_VALUES = st.sampled_from(["rfm_segment", "country_code", "'DE'", "'Can''t lose them'"])
_OPERATORS = st.sampled_from(["=", "!=", "<", "<=", ">", ">="])


def _predicates():
    return st.one_of(
        st.tuples(_NUMBER_VALUES, _OPERATORS, _NUMBER_VALUES).map(" ".join),
        st.tuples(_DATE_VALUES, _OPERATORS, _DATE_VALUES).map(" ".join),
        st.tuples(_TEXT_VALUES, st.sampled_from(["=", "!="]), _TEXT_VALUES).map(" ".join),
        st.tuples(_TEXT_VALUES, st.lists(_TEXT_VALUES, min_size=1, max_size=3)).map(
            lambda t: f"{t[0]} not in ({', '.join(t[1])})"
        ),
        st.tuples(_NUMBER_VALUES, _NUMBER_VALUES, _NUMBER_VALUES).map(
            lambda t: f"{t[0]} between {t[1]} and {t[2]}"
        ),
        st.tuples(_DATE_VALUES, _DATE_VALUES, _DATE_VALUES).map(
            lambda t: f"{t[0]} not between {t[1]} and {t[2]}"
        ),
        st.sampled_from(
            [
                "p_alive is null",
                "last_email_open_at is not null",
                "is_email_subscribed",
                "has_valid_phone = false",
                "true",
            ]
        ),
    )


_RULES = st.recursive(
    _predicates(),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from([" and ", " or "]), inner).map("".join),
        inner.map(lambda r: f"not ({r})"),
        inner.map(lambda r: f"({r})"),
    ),
    max_leaves=6,
)


_FUZZ_PIECES = [
    *"abcdefghijklmnopqrstuvwxyz_0123456789 ();,'\"-=<>!+*/:.\\%$|&~\n",
    "orders_count",
    "rfm_segment",
    "run_date",
    " and ",
    " or ",
    " not ",
    " in ",
    " between ",
    " is null",
    "date ",
    " days",
    "--",
    "/*",
    "::",
    "select ",
    "'a'",
]
_RANDOM_TEXT = st.lists(st.sampled_from(_FUZZ_PIECES), max_size=40).map("".join)
# Valid rules with one piece inserted or a span cut out: text close to the grammar.
_MUTATED_RULES = st.tuples(
    _RULES,
    st.integers(min_value=0, max_value=120),
    st.integers(min_value=0, max_value=4),
    st.sampled_from(["", *_FUZZ_PIECES]),
).map(lambda t: t[0][: t[1]] + t[3] + t[0][t[1] + t[2] :])


_SAFE_SQL = re.compile(
    r'(?:"f"\."[a-z0-9_]+"|%\((?:rule_\d+|run_date)\)s|[a-z_]+|=>|<>|<=|>=|[=<>+\-(),]|\s)*'
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.one_of(_RANDOM_TEXT, _MUTATED_RULES))
def test_fuzz_any_text_compiles_to_safe_sql_or_raises_rule_error(features, text):
    try:
        compiled = compile_rule(text)
    except RuleError:
        return
    rendered = compiled.sql.as_string(features)
    # only quoted column identifiers, placeholders, keywords and operators: no rule text
    assert _SAFE_SQL.fullmatch(rendered), rendered
    for name in compiled.columns:
        assert name in feature_columns()
    with features.transaction():  # and what compiles, runs
        audience(features, compiled)


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from(["orders_count > 3", "rfm_segment = 'x'", "p_alive < 0.3 and true"]),
    payload=st.sampled_from(
        [
            "; drop table x",
            "-- ",
            "/* */",
            "::int",
            '"x"',
            "pg_sleep(1)",
            "(select 1)",
            "\\",
            "$$",
            "%s",
            "%(run_date)s",
            "||",
            "@",
            "#",
            "`",
            "[1]",
            "{}",
            "?",
        ]
    ),
    where=st.integers(min_value=0, max_value=30),
)
def test_fuzz_dangerous_fragments_never_compile(prefix, payload, where):
    cut = min(where, len(prefix))
    if "'" in prefix and prefix.find("'") < cut <= prefix.rfind("'"):
        cut = len(prefix)  # inside a string literal the fragment is data, tested above
    with pytest.raises(RuleError):
        compile_rule(prefix[:cut] + " " + payload + " " + prefix[cut:])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rule=_RULES)
def test_fuzz_grammar_rules_execute(features, rule):
    with features.transaction():  # a savepoint: one failure does not hide behind the next
        audience(features, rule)
