"""Hardening (issue 18): one bad row or one bad campaign never stops the day.

Each test is a case an attacker or a careless operator produced: a first name with a line
break in a live e-mail sync (real SMTP and HTTP against the provider sandbox), a campaign
that fails at run time among campaigns that do not.
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
import time
from datetime import UTC, date, datetime

import pytest
import yaml
from psycopg import sql as psycopg_sql
from test_audiences import RUN, Shop, campaign, holdout
from test_sync import add_customers, ledger_rows, reset_warehouse, twilio

from winback import cli
from winback.campaigns import audiences, messages, personalization, rules
from winback.campaigns import campaign_files as campaigns
from winback.delivery import feedback, sync
from winback.delivery.providers import Outcome, OutgoingMessage
from winback.delivery.providers import smtp as smtp_provider
from winback.delivery.providers.popup import PopupCsvExport
from winback.delivery.providers.ratelimit import RateLimits
from winback.delivery.providers.smtp import SmtpEmail
from winback.measurement import report
from winback.simulation import sandbox
from winback.warehouse import tables

# Every character Python's email library refuses in a header, as a first name would carry it.
POISONED_FIRST_NAMES = [
    "Eve\r\nBcc: x@y.test",
    "Eve\nBcc: x@y.test",
    "Eve\rX",
    "Eve\x0bX",
    "Eve\x0cX",
    "Eve\x85X",
    "Eve\u2028X",
    "Eve\u2029X",
    "Eve\x1cX",
]


def _enqueue_email(conn, customers: list[str], subjects: dict[str, str]) -> dict[str, str]:
    """Outbox rows for `customers` with the given subjects; {customer: idempotency key}."""
    keys = {}
    for customer in customers:
        i = int(customer[1:])
        key = audiences.idempotency_key("we_miss_you", "s1", customer, "email")
        subject = subjects.get(customer, "We miss you")
        payload = {"to": f"user{i}@shop.test", "subject": subject, "body": "Come back!"}
        conn.execute(
            "insert into winback.outbox (idempotency_key, run_date, campaign_id, step_id,"
            " customer_id, channel, payload) values (%s, %s, 'we_miss_you', 's1', %s, 'email',"
            " %s)",
            (key, RUN, customer, json.dumps(payload)),
        )
        keys[customer] = key
    conn.commit()
    return keys


def _enqueue_sms(conn, customers: list[str]) -> list[str]:
    keys = []
    for customer in customers:
        key = audiences.idempotency_key("we_miss_you", "s1", customer, "sms")
        payload = {"to": f"+1650555{int(customer[1:]):04d}", "body": "Come back!"}
        conn.execute(
            "insert into winback.outbox (idempotency_key, run_date, campaign_id, step_id,"
            " customer_id, channel, payload) values (%s, %s, 'we_miss_you', 's1', %s, 'sms', %s)",
            (key, RUN, customer, json.dumps(payload)),
        )
        keys.append(key)
    conn.commit()
    return keys


def test_a_poisoned_first_name_fails_its_row_and_every_other_message_is_sent(conn):
    """Finding 1: outbox rows whose subject holds a line break (made before subjects were
    collapsed, or by hand) are rejected one by one; every other e-mail goes out once, and
    the SMS channel, synced after e-mail, runs too. An ESP lookup on a later run settles
    them without a crash."""
    warehouse = reset_warehouse(conn)
    handle = sandbox.start_sandbox(seed=3)
    try:
        customers = add_customers(warehouse, 20)
        poisoned = dict(
            zip(customers[:9], (f"{n}, we miss you" for n in POISONED_FIRST_NAMES), strict=True)
        )
        email_keys = _enqueue_email(warehouse, customers, poisoned)
        sms_keys = _enqueue_sms(warehouse, customers[:5])
        esp = SmtpEmail(
            "127.0.0.1",
            handle.smtp_port,
            "shop@shop.test",
            lookup_url=f"{handle.url}/_sandbox/smtp-messages",
            limits=RateLimits(100.0, 4, 2.0),
        )
        providers = {"email": esp, "sms": twilio(handle)}
        result = sync.run(warehouse, RUN, "live", providers, {}, collect_feedback=False)
        assert result.by_provider["smtp"] == {"acknowledged": 11, "rejected": 9}
        assert result.by_provider["twilio"] == {"acknowledged": 5}
        states = ledger_rows(warehouse)
        for customer, key in email_keys.items():
            status, _message_id, error = states[key]
            if customer in poisoned:
                assert status == "rejected" and error.startswith("message cannot be built")
                assert "Eve" not in error and "x@y" not in error  # no customer data
            else:
                assert status == "acknowledged"
        # The sandbox's own record: e-mail by Message-ID (the ledger's provider id), SMS by key.
        accepted = handle.accepted()["messages_by_reference"]
        sent_ids = [states[k][1] for c, k in email_keys.items() if c not in poisoned]
        assert all(accepted.get(ref) == 1 for ref in sent_ids + sms_keys)
        assert len(accepted) == len(sent_ids) + len(sms_keys)
        # A row a killed run left `sending` is looked up, then refused again: no crash.
        warehouse.execute(
            "update winback.send_ledger set status = 'sending', unclear_since = now()"
            " - interval '1 day' where status = 'rejected'"
        )
        warehouse.commit()
        esp.negative_lookup_trusted_after = 0.0
        again = sync.run(warehouse, RUN, "live", {"email": esp}, {}, collect_feedback=False)
        assert again.by_provider["smtp"] == {"rejected": 9}
        assert all(n == 1 for n in handle.accepted()["messages_by_reference"].values())
    finally:
        handle.stop()


def test_a_provider_that_raises_fails_only_its_row(conn):
    """An adapter bug on one message is that row's `unclear` (it may have gone out), never
    the channel's: the other rows are sent."""
    warehouse = reset_warehouse(conn)
    handle = sandbox.start_sandbox(seed=4)
    try:
        customers = add_customers(warehouse, 6)
        keys = _enqueue_email(warehouse, customers, {})
        plain = SmtpEmail(
            "127.0.0.1", handle.smtp_port, "shop@shop.test", limits=RateLimits(100.0, 2, 2.0)
        )
        real_send = plain.send

        async def send(message):
            if message.customer_id == customers[0]:
                raise KeyError("a bug in the adapter")
            return await real_send(message)

        plain.send = send
        result = sync.run(warehouse, RUN, "live", {"email": plain}, {}, collect_feedback=False)
        assert result.by_provider["smtp"] == {"acknowledged": 5, "unclear": 1}
        status, _id, error = ledger_rows(warehouse)[keys[customers[0]]]
        assert status == "unclear" and error == "KeyError raised while sending"
    finally:
        handle.stop()


@pytest.mark.parametrize("name", POISONED_FIRST_NAMES + ["Eve\x00X", "Eve\tX  \t"])
def test_rendered_subjects_are_collapsed_to_one_line(name):
    collapsed = messages.one_line(f"{name}, we miss you")
    assert collapsed.splitlines() == [collapsed]
    assert not any(ord(c) < 32 or c in "\x85\u2028\u2029\x7f" for c in collapsed)
    assert collapsed.startswith("Eve") and collapsed.endswith(", we miss you")


def test_a_built_message_for_a_poisoned_first_name_has_a_one_line_subject(conn):
    shop = Shop(conn)
    shop.add("eve", first_name="Eve\r\nBcc: x@y.test")
    shop.conn.commit()
    audiences.build_audiences(shop.conn, [campaign(holdout=holdout(0.0))], RUN)
    [row] = shop.outbox()
    assert row["payload"]["subject"] == "Eve Bcc: x@y.test, we miss you"


def test_a_campaign_that_fails_at_run_time_is_refused_and_the_others_are_built(conn):
    """One campaign failing on the day's data (here a template dividing by a customer's
    zero order count, which sample values cannot show) is rolled back alone, in its
    savepoint, and refused with its reason; the other campaign is built as usual."""
    shop = Shop(conn)
    shop.add_many(9)
    shop.add("zero", orders_count=0)
    shop.conn.commit()
    step = {"id": "s", "channel": "email", "subject": "Hi", "body": "{{ 100 // orders_count }}"}
    hostile = campaign(id="hostile", priority=100, holdout=holdout(0.0), steps=[step])
    assert campaigns.template_problems(hostile) == []  # it validates
    kept = campaign(id="kept", priority=10)
    refused: dict[str, str] = {}
    results = audiences.build_audiences(shop.conn, [hostile, kept], RUN, refused=refused)
    shop.conn.commit()
    assert [r.campaign_id for r in results] == ["kept"]
    assert list(refused) == ["hostile.yaml"] and "nothing was enrolled" in refused["hostile.yaml"]
    assert {m["campaign_id"] for m in shop.outbox()} == {"kept"}
    assert len(shop.outbox()) == results[0].treatment == 9  # 10 customers, 10% holdout
    logged = shop.conn.execute(
        "select distinct campaign_id from winback.audience_filter_log"
    ).fetchall()
    assert logged == [("kept",)]


# --- secrets (finding 2, 3 and the Message-IDs of 7) ---------------------------------------

STRONG_SECRET = "k2P9vX7qLr4mZ8sT1wY6nB3cF5hJ0dGa"  # 32 bytes, as a deployment would set


@pytest.mark.parametrize(
    "weak",
    ["change-me", "CHANGE-ME", "x", "a" * 31, personalization.DEMO_COUPON_SECRET, "changeme"],
)
def test_live_mode_refuses_a_placeholder_short_or_demo_coupon_secret(weak, monkeypatch):
    monkeypatch.setenv(personalization.COUPON_SECRET_ENV, weak)
    with pytest.raises(RuntimeError, match="WINBACK_COUPON_SECRET") as refused:
        personalization.coupon_secret("live")
    assert weak not in str(refused.value) or weak == "x"  # the value is never quoted
    assert personalization.coupon_secret("dry_run") == weak.encode()  # a dry run may use it
    monkeypatch.setenv(personalization.COUPON_SECRET_ENV, STRONG_SECRET)
    assert personalization.coupon_secret("live") == STRONG_SECRET.encode()


def test_outbox_rows_name_their_key_and_a_live_sync_refuses_the_demo_keys(conn, monkeypatch):
    """Finding 2: a dry-run build (the demo secret) followed by a live sync sent demo
    coupons. Each outbox row now records its key's fingerprint, and the live sync leaves
    the demo-made rows unsent while it sends the others."""
    shop = Shop(conn)
    shop.add_many(6)
    shop.conn.commit()
    monkeypatch.delenv(personalization.COUPON_SECRET_ENV, raising=False)
    step = {
        "id": "first_touch",
        "channel": "email",
        "subject": "{{ first_name }}, {{ coupon_discount }} off",
        "body": "Code {{ coupon_code }}",
        "incentive": {"coupon": {"discount_percent": 10, "valid_days": 14}},
    }
    demo = campaign(id="demo_made", priority=10, holdout=holdout(0.0), steps=[step])
    audiences.build_audiences(shop.conn, [demo], RUN)  # dry run: the demo secret
    monkeypatch.setenv(personalization.COUPON_SECRET_ENV, STRONG_SECRET)
    live = campaign(id="live_made", priority=5, holdout=holdout(0.0))
    shop.conn.execute("delete from winback.journey_state")  # let the same customers in again
    audiences.build_audiences(shop.conn, [live], RUN, send_mode="live")
    shop.conn.commit()
    fingerprints = dict(
        shop.conn.execute(
            "select campaign_id, min(coupon_key_fingerprint) from winback.outbox group by 1"
        ).fetchall()
    )
    assert fingerprints["demo_made"] == personalization.DEMO_KEY_FINGERPRINT
    assert fingerprints["live_made"] == personalization.key_fingerprint(STRONG_SECRET.encode())
    assert STRONG_SECRET not in fingerprints["live_made"]
    assert all(row["coupon_code"] for row in shop.outbox("demo_made"))
    handle = sandbox.start_sandbox(seed=6)
    try:
        smtp = SmtpEmail(
            "127.0.0.1", handle.smtp_port, "shop@shop.test", limits=RateLimits(100.0, 4, 2.0)
        )
        result = sync.run(shop.conn, RUN, "live", {"email": smtp}, {}, collect_feedback=False)
        assert result.by_provider["refused:email"] == {"made_with_demo_key": 6}
        assert result.by_provider["smtp"] == {"acknowledged": 6}
        sent = shop.conn.execute(
            "select o.campaign_id, count(*) from winback.send_ledger l join winback.outbox o"
            " using (idempotency_key) where l.mode = 'live' group by 1"
        ).fetchall()
        assert sent == [("live_made", 6)]
        assert len(handle.accepted()["messages_by_reference"]) == 6
    finally:
        handle.stop()


def test_smtp_message_ids_are_keyed_and_match_what_the_ledger_stores(conn, monkeypatch):
    """Finding 7: Message-IDs were `<idempotency key@winback>`, computable from public
    values; now an HMAC under the deployment secret, the same one the ledger keeps (the
    SendGrid webhook links events by it)."""
    key = audiences.idempotency_key("we_miss_you", "s1", "c1", "email")
    monkeypatch.setenv(personalization.COUPON_SECRET_ENV, STRONG_SECRET)
    keyed = smtp_provider.message_id(key)
    assert key not in keyed and keyed == smtp_provider.message_id(key)
    monkeypatch.setenv(personalization.COUPON_SECRET_ENV, STRONG_SECRET[::-1])
    assert smtp_provider.message_id(key) != keyed
    warehouse = reset_warehouse(conn)
    handle = sandbox.start_sandbox(seed=7)
    try:
        keys = _enqueue_email(warehouse, add_customers(warehouse, 3), {})
        smtp = SmtpEmail(
            "127.0.0.1", handle.smtp_port, "shop@shop.test", limits=RateLimits(100.0, 2, 2.0)
        )
        sync.run(warehouse, RUN, "live", {"email": smtp}, {}, collect_feedback=False)
        stored = {k: row[1] for k, row in ledger_rows(warehouse).items()}
        assert stored == {k: smtp_provider.message_id(k) for k in keys.values()}
        assert set(handle.accepted()["messages_by_reference"]) == set(stored.values())
    finally:
        handle.stop()


def test_winback_audiences_takes_a_send_mode():
    parser = cli.build_parser()
    args = parser.parse_args(["audiences", "--date", "2026-11-20", "--mode", "live"])
    assert args.mode == "live" and not args.allow_past_sends
    assert parser.parse_args(["audiences", "--date", "2026-11-20"]).mode == "dry_run"


# --- exports (finding 6, and `winback report` of 7) ---------------------------------------


def popup_campaign(body: str) -> dict:
    return {
        "id": "popup_back",
        "channels": ["popup"],
        "holdout": holdout(0.0),
        "steps": [{"id": "banner", "channel": "popup", "body": body}],
    }


def test_popup_bodies_are_html_escaped(conn):
    shop = Shop(conn)
    shop.add("mallory", first_name='<img src=x onerror="alert(1)">')
    shop.conn.commit()
    audiences.build_audiences(shop.conn, [campaign(**popup_campaign("Hi {{ first_name }}!"))], RUN)
    [row] = shop.outbox()
    assert row["payload"]["body"] == "Hi &lt;img src=x onerror=&#34;alert(1)&#34;&gt;!"


def test_popup_templates_may_not_use_contact_fields():
    for name in ("email", "phone"):
        popup = campaign(**popup_campaign(f"Hi {{{{ {name} }}}}"))
        [problem] = campaigns.template_problems(popup)
        assert problem.startswith("steps.0.body: template uses unknown name " + name)
    email_step = campaign(
        steps=[{"id": "s", "channel": "email", "subject": "x", "body": "{{ email }}"}]
    )
    assert campaigns.template_problems(email_step) == []


@pytest.mark.parametrize(
    "hostile",
    ['=HYPERLINK("http://evil.test","click")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"],
)
def test_the_popup_csv_export_never_holds_a_formula(hostile, tmp_path):
    export = PopupCsvExport(tmp_path)
    message = OutgoingMessage("k1", "c1", "popup_back", "popup", "c1", None, hostile)
    assert asyncio.run(export.send(message)).outcome is Outcome.ACCEPTED
    with open(export.path_for("popup_back"), newline="") as handle:
        [header, row] = list(csv.reader(handle))
    assert header[3] == "message" and row[3] == "'" + hostile
    assert asyncio.run(export.lookup(message, datetime.now(UTC))) is not None
    plain = OutgoingMessage("k2", "c2", "popup_back", "popup", "c2", None, "Welcome back")
    asyncio.run(export.send(plain))
    with open(export.path_for("popup_back"), newline="") as handle:
        assert list(csv.reader(handle))[-1][3] == "Welcome back"


@pytest.mark.parametrize("campaign_id", ["../x", "no_such_campaign", "../../tmp/evil"])
def test_winback_report_refuses_unknown_campaigns_and_writes_only_in_its_folder(
    campaign_id, conn, tmp_path, capsys
):
    folder = tmp_path / "reports" / "inner"
    argv = ["report", campaign_id, "--from", "2026-10-01", "--to", "2026-10-31"]
    code = cli.main([*argv, "--measure", "--html", str(folder)])
    assert code == 2 and "winback report:" in capsys.readouterr().err
    assert not any(tmp_path.rglob("*.html")) and not any(tmp_path.rglob("*.png"))
    tables.ensure_schema(conn)
    stored = conn.execute(
        "select count(*) from winback.campaign_results where campaign_id = %s", (campaign_id,)
    ).fetchone()[0]
    assert stored == 0
    conn.commit()
    assert cli.main(["measure", campaign_id, "--from", "2026-10-01", "--to", "2026-10-31"]) == 2
    with pytest.raises(ValueError, match="lower-case"):
        report.write(
            report.ReportData(
                "../x", date(2026, 10, 1), date(2026, 10, 31), 14, [], [], [], [], {}
            ),
            folder,
        )
    assert not folder.exists() and not (tmp_path / "x_2026-10-01_2026-10-31.html").exists()


# --- validation checks what runs (finding 5) ----------------------------------------------

NESTED_39 = "(" * 39 + "days_since_last_order > 90" + ")" * 39
NEAR_LIMIT = "days_since_last_order > 90" + " or days_since_last_order > 90" * 132
HOSTILE_CAMPAIGNS = {
    "nested_39_deep": {"audience": {"rule": NESTED_39, "rfm_segments": ["At risk"]}},
    "near_4000_chars": {"audience": {"rule": NEAR_LIMIT, "rfm_segments": ["At risk"]}},
    "shifts_480": {"audience": {"rule": "expected_next_order_date < run_date" + " - 1 days" * 480}},
    "shifts_80_centuries": {
        "audience": {"rule": "expected_next_order_date < run_date" + " - 100 years" * 80}
    },
    "javascript_landing": {"landing_url": "javascript:alert(document.cookie)"},
    "nested_range": {
        "steps": [
            {
                "id": "s",
                "channel": "email",
                "subject": "hi",
                "body": "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in"
                " range(1000) %}x{% endfor %}{% endfor %}{% endfor %}",
            }
        ]
    },
    "repeat_4e9": {
        "steps": [{"id": "s", "channel": "email", "subject": "{{ 'x' * 4000000000 }}", "body": "b"}]
    },
}


def test_each_hostile_part_alone_fits_the_old_bounds():
    """The cases are the ones the issue found: each passed validation before."""
    assert len(NESTED_39) < rules.MAX_RULE_LENGTH and len(NEAR_LIMIT) < rules.MAX_RULE_LENGTH
    rules.compile_rule(NESTED_39)
    rules.compile_rule(NEAR_LIMIT)
    assert len(f"({NEAR_LIMIT}) and rfm_segment in ('At risk')") > rules.MAX_RULE_LENGTH


def test_winback_campaigns_validate_rejects_every_hostile_campaign_file(tmp_path, capsys):
    for name, overrides in HOSTILE_CAMPAIGNS.items():
        document = {**_campaign_document(), "id": name, **overrides}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(document))
    (tmp_path / "fine.yaml").write_text(yaml.safe_dump({**_campaign_document(), "id": "fine"}))
    started = time.monotonic()
    assert cli.main(["campaigns", "validate", "--folder", str(tmp_path)]) == 1
    assert time.monotonic() - started < 30, "validation itself must stay quick"
    output = capsys.readouterr()
    text = output.out + output.err
    for name in HOSTILE_CAMPAIGNS:
        assert f"{name}.yaml" in text, name
    valid, refused = campaigns.load_valid_campaigns(tmp_path)
    assert [c.id for c in valid] == ["fine"] and set(refused) == {
        f"{name}.yaml" for name in HOSTILE_CAMPAIGNS
    }


def test_a_long_shift_chain_within_bounds_compiles_flat_and_runs(conn):
    """Shift chains are one flat expression: 300 steps compile, render and run in
    PostgreSQL without recursion; the bound is on their total, not their number."""
    rule = "expected_next_order_date < run_date" + " - 1 days + 1 days" * 150
    compiled = rules.compile_rule(rule)
    query = psycopg_sql.SQL(
        "select count(*) from (select date '2026-11-01' as expected_next_order_date) f where {}"
    ).format(compiled.sql)
    [(matched,)] = conn.execute(query, {**compiled.params, "run_date": RUN}).fetchall()
    assert matched == 1
    with pytest.raises(rules.RuleError, match="add up to more than 100 years"):
        rules.compile_rule("expected_next_order_date < run_date - 60 years - 60 years")


@pytest.mark.parametrize(
    "template, problem",
    [
        ("{{ 'x' * 4000000000 }}", "repetition"),
        ("{% for a in range(200) %}{% for b in range(200) %}x{% endfor %}{% endfor %}", "loops"),
        ("{{ range(100000) | list | length }}", "range()"),
        ("{{ 'x' | center(999999999) }}", "width"),
        ("{% set s = 'ab' %}{{ s }}", "'set' is not allowed"),
        ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "'macro' is not allowed"),
    ],
)
def test_the_template_sandbox_bounds_loops_ranges_and_repetition(template, problem):
    started = time.monotonic()
    with pytest.raises(personalization.TemplateError, match=re.escape(problem)):
        personalization.validate_template(template, {"first_name"})
        personalization.render(template, {"first_name": "Ada"})
    assert time.monotonic() - started < 5
    assert personalization.render("{% for i in range(3) %}{{ i }}{% endfor %}", {}) == "012"


def _campaign_document() -> dict:
    return {
        "description": "test",
        "starts_on": "2026-01-01",
        "ends_on": "2026-12-31",
        "holdout": {"share": 0.1},
        "channels": ["email"],
        "audience": {"rfm_segments": ["At risk", "Hibernating"]},
        "steps": [{"id": "s", "channel": "email", "subject": "Hi {{ first_name }}", "body": "b"}],
    }


# --- the feedback feed's credentials (finding 7) -------------------------------------------

FEED_TOKEN = "feed-token-0123456789abcdef0123456789"


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("http://127.0.0.1:9/_sandbox/events?token=" + FEED_TOKEN, "token"),
        ("http://127.0.0.1:9/events?page=1&api_key=" + FEED_TOKEN, "api_key"),
        ("http://127.0.0.1:9/events?X-Amz-Signature=" + FEED_TOKEN, "X-Amz-Signature"),
        (f"http://user:{FEED_TOKEN}@127.0.0.1:9/events", "user:password@host"),
        (f"https://{FEED_TOKEN}@events.example/feed", "user:password@host"),
    ],
)
def test_the_events_feed_refuses_credentials_in_its_url_without_quoting_them(
    url, where, monkeypatch
):
    monkeypatch.setenv(
        "AIRFLOW_CONN_WINBACK_EVENTS", json.dumps({"conn_type": "http", "extra": {"url": url}})
    )
    with pytest.raises(feedback.FeedConfigurationError) as refused:
        feedback.events_feed()
    assert where in str(refused.value)
    assert FEED_TOKEN not in str(refused.value)


def test_the_events_feed_sends_the_connections_credentials_in_a_header(conn, monkeypatch, caplog):
    """The feed takes only a bearer token: the connection's password is sent in the
    Authorization header, the URL's own query is kept, and neither the cursor, the result
    nor any log line holds the token."""
    reset_warehouse(conn)
    box = sandbox.start_sandbox(seed=4, events_token=FEED_TOKEN)
    try:
        enqueue_sms = add_customers(conn, 5)
        _enqueue_sms(conn, enqueue_sms)
        sync.run(conn, RUN, "live", {"sms": twilio(box)}, {}, collect_feedback=False)
        produced = len(box.events())
        assert produced > 0
        # Without the credentials the feed refuses, and the error does not quote the URL.
        monkeypatch.setenv(
            "AIRFLOW_CONN_WINBACK_EVENTS",
            json.dumps({"conn_type": "http", "extra": {"url": f"{box.url}/_sandbox/events"}}),
        )
        with pytest.raises(RuntimeError, match="HTTP 401"):
            feedback.collect(conn, RUN)
        conn.rollback()
        env = box.connections_env()
        assert json.loads(env["AIRFLOW_CONN_WINBACK_EVENTS"])["password"] == FEED_TOKEN
        # A non-secret parameter of the feed's own is kept beside after/limit.
        events_conn = json.loads(env["AIRFLOW_CONN_WINBACK_EVENTS"])
        events_conn["extra"]["url"] += "?format=json"
        monkeypatch.setenv("AIRFLOW_CONN_WINBACK_EVENTS", json.dumps(events_conn))
        with caplog.at_level("DEBUG"):
            collected = feedback.collect(conn, RUN)
        conn.commit()
    finally:
        box.stop()
    assert collected["received"] == produced
    assert collected["source"] == f"{box.url}/_sandbox/events"
    cursors = conn.execute("select source from winback.feedback_cursors").fetchall()
    assert cursors == [(f"{box.url}/_sandbox/events",)]
    assert FEED_TOKEN not in caplog.text
    assert FEED_TOKEN not in json.dumps(collected)
    assert FEED_TOKEN not in repr(feedback.events_feed())


def test_cursors_stored_under_a_url_with_credentials_lose_them(conn):
    tables.ensure_schema(conn)
    conn.execute("delete from winback.feedback_cursors")
    conn.execute(
        "insert into winback.feedback_cursors (source, position) values (%s, 7), (%s, 3), (%s, 5)",
        (
            f"https://u:{FEED_TOKEN}@a.example/feed",
            f"https://u:{FEED_TOKEN}@b.example/feed",
            "https://b.example/feed",
        ),
    )
    feedback._forget_credentials_in_cursors(conn)
    rows = conn.execute("select source, position from winback.feedback_cursors order by 1")
    assert rows.fetchall() == [("https://a.example/feed", 7), ("https://b.example/feed", 5)]
    conn.rollback()


# --- local files are private (finding 7) ---------------------------------------------------


def _mode(path) -> int:
    return path.lstat().st_mode & 0o777


def test_landing_files_exports_and_state_are_readable_by_their_owner_only(tmp_path, monkeypatch):
    """Files made before this change are tightened when written again; a folder the user
    chose outside `.winback/` keeps its mode (they may share it), but what winback writes
    into it is still 0600."""
    from winback import config
    from winback.delivery.providers import Member, MemberChange
    from winback.delivery.providers.meta import MetaCustomAudienceFile
    from winback.simulation import simulator

    state = tmp_path / "state"
    monkeypatch.setattr(config, "STATE_DIR", state)
    exports = state / "exports"
    exports.mkdir(parents=True, mode=0o755)
    exports.chmod(0o755)  # as an older winback left it
    old_csv = exports / "popup_popup_back.csv"
    old_csv.write_text(",".join(("customer_id", "campaign_id", "step_id", "body")) + "\n")
    old_csv.chmod(0o644)

    popup = PopupCsvExport(exports)
    message = OutgoingMessage("k1", "C1", "popup_back", "popup", None, None, "Welcome back")
    assert asyncio.run(popup.send(message)).outcome == Outcome.ACCEPTED
    assert _mode(exports) == 0o700 and _mode(old_csv) == 0o600

    meta = MetaCustomAudienceFile(exports / "meta")
    change = MemberChange("winback:we_miss_you", Member("C1", "a@shop.test"), "add")
    assert meta._write([change]).accepted == [change]
    assert _mode(exports / "meta") == 0o700
    assert [_mode(p) for p in (exports / "meta").iterdir()] == [0o600]

    day = state / "landing" / "2026-11-20"
    frames = simulator.simulate_shop(simulator.SimulationConfig(customers=20, seed=3))
    simulator.write_landing_files(frames, day)
    assert _mode(state / "landing") == 0o700 and _mode(day) == 0o700
    assert {_mode(p) for p in day.iterdir()} == {0o600}

    shared = tmp_path / "shared-landing"
    shared.mkdir(mode=0o750)
    shared.chmod(0o750)
    simulator.write_landing_files(frames, shared / "2026-11-20")
    assert _mode(shared) == 0o750, "a folder of the user's keeps its mode"
    assert _mode(shared / "2026-11-20") == 0o700
    assert {_mode(p) for p in (shared / "2026-11-20").iterdir()} == {0o600}
