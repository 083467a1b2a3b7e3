"""The live sync against the provider sandbox: exactly once, whatever the provider does."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, date, datetime

import psycopg
import pytest

from winback import config
from winback.campaigns import audiences
from winback.delivery import sync
from winback.delivery.providers import Outcome, OutgoingMessage, SendResult, parse_connection
from winback.delivery.providers.mailchimp import MailchimpAudience, subscriber_hash
from winback.delivery.providers.popup import PopupCsvExport, PopupWebhook
from winback.delivery.providers.ratelimit import RateLimits
from winback.delivery.providers.smtp import SmtpEmail
from winback.delivery.providers.twilio import TwilioSms
from winback.simulation import sandbox
from winback.warehouse import tables

RUN = date(2026, 11, 20)
MAILCHIMP_KEY = sandbox.SandboxSettings().api_key

FEATURES_DDL = """
create schema if not exists marts;
create table marts.customer_features (
    customer_id text primary key,
    email text,
    phone text,
    is_email_subscribed boolean not null default true,
    is_sms_subscribed boolean not null default true,
    is_email_suppressed boolean not null default false,
    is_sms_suppressed boolean not null default false
);
"""


@pytest.fixture
def warehouse(conn):
    return reset_warehouse(conn)


def reset_warehouse(conn):
    """Empty winback schema and a hand-fillable customer_features."""
    conn.execute("drop schema if exists winback cascade")
    conn.execute("drop schema if exists marts cascade")
    conn.execute(FEATURES_DDL)
    tables.ensure_schema(conn)
    conn.commit()
    return conn


@pytest.fixture
def box():
    handle = sandbox.start_sandbox(seed=1)
    yield handle
    handle.stop()


def phone(i: int) -> str:
    return f"+1650555{i:04d}"


def add_customers(conn, n: int, start: int = 0, **flags) -> list[str]:
    ids = [f"c{i}" for i in range(start, start + n)]
    columns = ["customer_id", "email", "phone", *flags]
    with conn.cursor().copy(f"copy marts.customer_features ({', '.join(columns)}) from stdin") as c:
        for i in range(start, start + n):
            c.write_row((f"c{i}", f"User{i}@Shop.test ", phone(i), *flags.values()))
    return ids


def enqueue(conn, customers: list[str], channel: str, campaign="we_miss_you", run=RUN) -> list:
    keys = []
    for customer in customers:
        i = int(customer[1:])
        key = audiences.idempotency_key(campaign, "s1", customer, channel)
        to = {"email": f"user{i}@shop.test", "sms": phone(i), "popup": None}[channel]
        payload = {"to": to, "subject": "We miss you", "body": f"Come back, {customer}!"}
        conn.execute(
            "insert into winback.outbox (idempotency_key, run_date, campaign_id, step_id,"
            " customer_id, channel, payload) values (%s, %s, %s, 's1', %s, %s, %s)",
            (key, run, campaign, customer, channel, json.dumps(payload)),
        )
        keys.append(key)
    conn.commit()
    return keys


def twilio(handle, trust: float | None = None, **limits) -> TwilioSms:
    """The Twilio adapter against `handle`; a lookup that misses is believed once the
    sandbox's list lag has passed (`trust` seconds after the request, by default)."""
    settings = handle.settings
    return TwilioSms(
        handle.url,
        settings.account_sid,
        settings.auth_token,
        "+15005550006",
        "https://shop.test/twilio-status",
        RateLimits(
            requests_per_second=limits.get("rps", 500.0),
            max_concurrency=limits.get("concurrency", 8),
            timeout_seconds=limits.get("timeout", 2.0),
        ),
        lookup_trust_seconds=settings.list_lag + 1.0 if trust is None else trust,
    )


def ledger_rows(conn) -> dict[str, tuple]:
    rows = conn.execute(
        "select idempotency_key, status, provider_message_id, error from winback.send_ledger "
        "where mode = 'live'"
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def assert_exactly_once(handle, keys: list[str], conn) -> None:
    """The sandbox's own record: each key accepted once, and the ledger agrees."""
    accepted = handle.accepted()["messages_by_reference"]
    missing = [k for k in keys if k not in accepted]
    doubles = {k: n for k, n in accepted.items() if n > 1}
    assert not missing, f"{len(missing)} messages lost"
    assert not doubles, f"{len(doubles)} messages sent more than once"
    states = ledger_rows(conn)
    assert all(states[k][0] == "acknowledged" and states[k][1] for k in keys)


def test_a_live_sync_sends_each_row_once_and_a_rerun_sends_nothing(warehouse, box):
    keys = enqueue(warehouse, add_customers(warehouse, 40), "sms")
    first = sync.run(warehouse, RUN, "live", {"sms": twilio(box)}, {}, collect_feedback=False)
    assert first.by_provider["twilio"] == {"acknowledged": 40}
    assert_exactly_once(box, keys, warehouse)
    again = sync.run(warehouse, RUN, "live", {"sms": twilio(box)}, {}, collect_feedback=False)
    assert again.by_provider == {}
    assert box.stats()["messages"] == 40
    sids = {state[1] for state in ledger_rows(warehouse).values()}
    assert len(sids) == 40 and all(s.startswith("SM") for s in sids)


@pytest.mark.parametrize("fault", sandbox.FAULT_KINDS)
def test_every_fault_kind_ends_in_exactly_one_accepted_message(warehouse, fault):
    handle = sandbox.start_sandbox(fault_rate=0.5, seed=3, faults=(fault,), timeout_delay=0.6)
    try:
        keys = enqueue(warehouse, add_customers(warehouse, 30), "sms")
        acknowledged = 0
        for _ in range(3):  # a row unlucky six times in a run is left to the next run
            provider = twilio(handle, timeout=0.3)
            result = sync.run(warehouse, RUN, "live", {"sms": provider}, {}, collect_feedback=False)
            counts = result.by_provider.get("twilio", {})
            # `sending`: answered unclear, not listed yet; the next run looks it up first.
            assert set(counts) <= {"acknowledged", "retry", "sending"}
            acknowledged += counts.get("acknowledged", 0)
        stats = handle.stats()
        assert stats["counters"].get(f"fault:{fault}", 0) > 0, "the fault was injected"
        assert acknowledged == 30
        assert_exactly_once(handle, keys, warehouse)
    finally:
        handle.stop()


def test_a_permanent_rejection_carries_the_providers_reason(warehouse, box):
    customers = add_customers(warehouse, 3)
    keys = enqueue(warehouse, customers, "sms")
    warehouse.execute(
        "update winback.outbox set payload = jsonb_set(payload, '{to}', '\"+1555\"') "
        "where customer_id = 'c1'"
    )
    warehouse.commit()
    result = sync.run(warehouse, RUN, "live", {"sms": twilio(box)}, {}, collect_feedback=False)
    assert result.by_provider["twilio"] == {"acknowledged": 2, "rejected": 1}
    status, _, error = ledger_rows(warehouse)[keys[1]]
    assert status == "rejected" and "21211" in error
    # A rejected row is never sent again.
    sync.run(warehouse, RUN, "live", {"sms": twilio(box)}, {}, collect_feedback=False)
    assert ledger_rows(warehouse)[keys[1]][0] == "rejected"


def test_consent_withdrawn_between_build_and_send_is_not_sent(warehouse, box):
    keys = enqueue(warehouse, add_customers(warehouse, 5), "sms")
    warehouse.execute(
        "update marts.customer_features set is_sms_subscribed = false where customer_id = 'c2'"
    )
    warehouse.execute(
        "update marts.customer_features set is_sms_suppressed = true where customer_id = 'c3'"
    )
    warehouse.commit()
    result = sync.run(warehouse, RUN, "live", {"sms": twilio(box)}, {}, collect_feedback=False)
    assert result.by_provider["twilio"] == {"acknowledged": 3, "skipped": 2}
    states = ledger_rows(warehouse)
    assert states[keys[2]][0] == "skipped" and "consent withdrawn" in states[keys[2]][2]
    assert states[keys[3]][0] == "skipped" and "suppressed" in states[keys[3]][2]
    accepted = box.accepted()["messages_by_reference"]
    assert keys[2] not in accepted and keys[3] not in accepted


def test_retryable_failures_are_sent_by_a_later_run(warehouse, box):
    keys = enqueue(warehouse, add_customers(warehouse, 10), "sms")
    closed = sandbox.start_sandbox()
    closed.stop()  # nothing listens there any more: the requests never leave
    down = twilio(closed)
    result = sync.run(warehouse, RUN, "live", {"sms": down}, {}, collect_feedback=False)
    assert result.by_provider["twilio"] == {"retry": 10}
    assert {s[0] for s in ledger_rows(warehouse).values()} == {"retry"}
    later = sync.run(
        warehouse, date(2026, 11, 21), "live", {"sms": twilio(box)}, {}, collect_feedback=False
    )
    assert later.by_provider["twilio"] == {"acknowledged": 10}
    assert_exactly_once(box, keys, warehouse)


def test_a_killed_sync_run_again_loses_nothing_and_sends_nothing_twice(warehouse, tmp_path):
    handle = sandbox.start_sandbox(fault_rate=0.2, seed=11, timeout_delay=0.6)
    try:
        today = datetime.now(UTC).date()
        keys = enqueue(warehouse, add_customers(warehouse, 300), "sms", run=today)
        env = {**os.environ, **handle.connections_env()}
        twilio_conn = json.loads(env["AIRFLOW_CONN_WINBACK_TWILIO"])
        twilio_conn["extra"].update(requests_per_second=60, max_concurrency=4, timeout_seconds=0.3)
        env["AIRFLOW_CONN_WINBACK_TWILIO"] = json.dumps(twilio_conn)
        env.pop("AIRFLOW_CONN_WINBACK_MAILCHIMP")
        command = [
            sys.executable,
            "-m",
            "winback.cli",
            "sync",
            "--date",
            today.isoformat(),
            "--mode",
            "live",
        ]
        log = open(tmp_path / "killed.log", "w")
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            sent = handle.stats()["messages"]
            if sent >= 100:
                break
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.05)
        process.kill()  # no clean-up, no final flush: as if the worker died
        process.wait()
        assert 100 <= handle.stats()["messages"] < 300, "killed midway"
        with psycopg.connect(os.environ[config.DATABASE_URL_ENV]) as check:
            open_rows = check.execute(
                "select count(*) from winback.send_ledger where status = 'sending'"
            ).fetchone()[0]
        assert open_rows > 0, "the kill left rows whose outcome was never recorded"
        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
        warehouse.rollback()
        assert_exactly_once(handle, keys, warehouse)
    finally:
        handle.stop()


def test_smtp_sends_to_a_real_smtp_server_and_never_resends_an_unclear_message(warehouse):
    handle = sandbox.start_sandbox(
        fault_rate=0.5, seed=5, faults=("accepted_then_timeout", "rate_limit"), timeout_delay=1.0
    )
    try:
        keys = enqueue(warehouse, add_customers(warehouse, 12), "email")
        plain = SmtpEmail(
            "127.0.0.1", handle.smtp_port, "shop@shop.test", limits=RateLimits(100.0, 4, 0.5)
        )
        result = sync.run(warehouse, RUN, "live", {"email": plain}, {}, collect_feedback=False)
        counts = result.by_provider["smtp"]
        assert counts.get("unclear", 0) > 0 and counts.get("acknowledged", 0) > 0
        accepted = handle.accepted()["messages_by_reference"]
        assert all(n == 1 for n in accepted.values())
        # With an ESP's message search, the unclear ones are settled without a resend.
        esp = SmtpEmail(
            "127.0.0.1",
            handle.smtp_port,
            "shop@shop.test",
            lookup_url=f"{handle.url}/_sandbox/smtp-messages",
            limits=RateLimits(100.0, 4, 0.5),
        )
        warehouse.execute(
            "update winback.send_ledger set status = 'sending' where status = 'unclear'"
        )
        warehouse.commit()
        sync.run(warehouse, RUN, "live", {"email": esp}, {}, collect_feedback=False)
        assert set(ledger_rows(warehouse)[k][0] for k in keys) == {"acknowledged"}
        accepted = handle.accepted()["messages_by_reference"]
        assert len(accepted) == 12 and all(n == 1 for n in accepted.values())
    finally:
        handle.stop()


def test_smtp_reuses_its_sessions_and_replaces_one_closed_while_idle(warehouse):
    """Many messages per session (what ESPs ask of bulk senders), each still exactly once;
    a session that died while idle is replaced without losing or repeating its message."""
    handle = sandbox.start_sandbox(seed=3)
    try:
        enqueue(warehouse, add_customers(warehouse, 40), "email")
        email = SmtpEmail(
            "127.0.0.1",
            handle.smtp_port,
            "shop@shop.test",
            limits=RateLimits(200.0, 4, 5.0),
            messages_per_connection=10,
        )
        result = sync.run(warehouse, RUN, "live", {"email": email}, {}, collect_feedback=False)
        assert result.by_provider["smtp"] == {"acknowledged": 40}
        accepted = handle.accepted()["messages_by_reference"]
        assert len(accepted) == 40 and all(n == 1 for n in accepted.values())
        assert {row[0] for row in ledger_rows(warehouse).values()} == {"acknowledged"}
        # Each session carries 10 messages before it is retired, except the (at most 4)
        # still open at the end: one session per message would be 40.
        sessions = handle.stats()["counters"]["smtp_sessions"]
        assert sessions == email.sessions_opened and 4 <= sessions <= 40 // 10 + 4

        def message(n: int) -> OutgoingMessage:
            return OutgoingMessage(
                f"idle-{n}", "c0", "we_miss_you", "email", "a@shop.test", "s", "b"
            )

        async def send_twice():
            first = await email.send(message(1))
            # The server ends an idle session (its timeout): the socket goes dead under it.
            email._idle[0].smtp.sock.shutdown(socket.SHUT_RDWR)
            second = await email.send(message(2))
            await email.aclose()
            return first, second

        first, second = asyncio.run(send_twice())
        assert (first.outcome, second.outcome) == (Outcome.ACCEPTED, Outcome.ACCEPTED)
        accepted = handle.accepted()["messages_by_reference"]
        assert accepted[second.provider_message_id] == 1 and len(accepted) == 42
        assert email.sessions_opened == sessions + 2, "the dead session was replaced"
    finally:
        handle.stop()


def test_popup_entries_go_to_the_webhook_or_the_csv_file_once(warehouse, box, tmp_path):
    keys = enqueue(warehouse, add_customers(warehouse, 6), "popup")
    webhook = PopupWebhook(box.url, None)
    result = sync.run(warehouse, RUN, "live", {"popup": webhook}, {}, collect_feedback=False)
    assert result.by_provider["popup_webhook"] == {"acknowledged": 6}
    assert_exactly_once(box, keys, warehouse)
    warehouse.execute("delete from winback.send_ledger")
    warehouse.commit()
    export = PopupCsvExport(tmp_path)
    sync.run(warehouse, RUN, "live", {"popup": export}, {}, collect_feedback=False)
    sync.run(warehouse, RUN, "live", {"popup": export}, {}, collect_feedback=False)
    lines = export.path_for("we_miss_you").read_text().splitlines()
    assert len(lines) == 7 and "@" not in "".join(lines) and lines[0].startswith("customer_id")


def audience(conn, run: date, customers: list[str], campaign="we_miss_you") -> None:
    for customer in customers:
        conn.execute(
            "insert into winback.campaign_audiences (run_date, campaign_id, customer_id, channel,"
            " assigned_group) values (%s, %s, %s, 'email', 'treatment')",
            (run, campaign, customer),
        )
    conn.commit()


def test_the_audience_sync_mirrors_membership_and_sends_only_the_difference(warehouse, box):
    add_customers(warehouse, 8)
    audience(warehouse, RUN, ["c0", "c1", "c2", "c3"])
    mailchimp = lambda: MailchimpAudience(box.url, MAILCHIMP_KEY, "L1")  # noqa: E731
    first = sync.run(warehouse, RUN, "live", {}, {"mailchimp": mailchimp()}, collect_feedback=False)
    assert first.by_provider["mailchimp"] == {"added": 4}
    writes = box.stats()["member_writes"]
    assert writes == 8  # an upsert and a tag per member
    day2 = date(2026, 11, 21)
    audience(warehouse, day2, ["c2", "c3", "c4"])
    second = sync.run(
        warehouse, day2, "live", {}, {"mailchimp": mailchimp()}, collect_feedback=False
    )
    assert second.by_provider["mailchimp"] == {"added": 1, "removed": 2}
    assert box.stats()["member_writes"] == writes + 2 + 2  # c4 upsert+tag, c0 and c1 untag
    members = box.accepted()["members"]["L1"]
    tagged = {h for h, m in members.items() if "winback:we_miss_you" in m["tags"]}
    assert tagged == {subscriber_hash(f"user{i}@shop.test") for i in (2, 3, 4)}
    assert all(m["status"] == "subscribed" for m in members.values())
    third = sync.run(
        warehouse, day2, "live", {}, {"mailchimp": mailchimp()}, collect_feedback=False
    )
    assert third.by_provider == {}


def test_a_contact_without_newsletter_consent_is_never_subscribed(box):
    import asyncio

    from winback.delivery.providers import Member, MemberChange

    provider = MailchimpAudience(box.url, MAILCHIMP_KEY, "L2")
    changes = [
        MemberChange("winback:x", Member("a", "a@shop.test", None, True), "add"),
        MemberChange("winback:x", Member("b", "b@shop.test", None, False), "add"),
        MemberChange("winback:x", Member("c", "not-an-email", None, True), "add"),
    ]

    async def apply_and_close():
        try:
            return await provider.apply(changes)
        finally:
            await provider.aclose()

    result = asyncio.run(apply_and_close())
    members = box.accepted()["members"]["L2"]
    assert members[subscriber_hash("a@shop.test")]["status"] == "subscribed"
    assert members[subscriber_hash("b@shop.test")]["status"] == "transactional"
    assert [c.member.customer_id for c, _ in result.rejected] == ["c"]
    assert "invalid" in result.rejected[0][1]


def test_the_audience_sync_survives_faults_and_partial_batches(warehouse):
    handle = sandbox.start_sandbox(fault_rate=0.5, seed=2, timeout_delay=0.6)
    try:
        add_customers(warehouse, 1200)
        audience(warehouse, RUN, [f"c{i}" for i in range(1200)])
        limits = RateLimits(200.0, 10, 0.4)
        for _ in range(4):  # retries left for later runs are taken by the next ones
            sync.run(
                warehouse,
                RUN,
                "live",
                {},
                {"mailchimp": MailchimpAudience(handle.url, MAILCHIMP_KEY, "L", limits)},
                collect_feedback=False,
            )
        members = handle.accepted()["members"]["L"]
        tagged = {h for h, m in members.items() if "winback:we_miss_you" in m["tags"]}
        assert len(tagged) == 1200
        synced = warehouse.execute(
            "select count(*) from winback.audience_members where is_member and status = 'synced'"
        ).fetchone()[0]
        assert synced == 1200
        assert handle.stats()["counters"].get("fault:partial_batch", 0) > 0
    finally:
        handle.stop()


def test_dry_run_calls_nothing_and_records_what_would_be_sent(warehouse, box):
    enqueue(warehouse, add_customers(warehouse, 5), "sms")
    result = sync.run(warehouse, RUN, "dry_run", {"sms": twilio(box)}, {})
    assert result.recorded == 5 and result.by_provider == {"twilio": {"would_send": 5}}
    assert sync.run(warehouse, RUN, "dry_run", {"sms": twilio(box)}, {}).recorded == 0
    assert box.stats()["requests"] == 0


def test_connections_parse_from_json_and_uri_and_never_show_the_password():
    uri = parse_connection(
        "winback_twilio", "http://AC123:s3cret@api.twilio.test:8443/?from=%2B15005550006"
    )
    assert uri.login == "AC123" and uri.password == "s3cret" and uri.port == 8443
    assert uri.extra["from"] == "+15005550006" and uri.base_url == "http://api.twilio.test:8443"
    js = parse_connection(
        "winback_mailchimp",
        '{"conn_type": "http", "host": "us1.api.mailchimp.com", "schema": "https",'
        ' "password": "k-us1", "extra": {"list_id": "L", "requests_per_second": 5}}',
    )
    assert js.base_url == "https://us1.api.mailchimp.com"
    assert js.limits(RateLimits(10.0, 10)).requests_per_second == 5.0
    assert "s3cret" not in repr(uri) and "k-us1" not in repr(js)


def test_a_row_scheduled_for_later_waits_for_its_time_and_not_past_its_window(warehouse, box):
    keys = enqueue(warehouse, add_customers(warehouse, 3), "sms")
    warehouse.execute(
        "update winback.outbox set send_at = now() + interval '2 hours' where customer_id = 'c0'"
    )
    warehouse.execute(
        "update winback.outbox set send_at = now() + interval '1 hour' where customer_id = 'c1'"
    )
    warehouse.commit()
    first = sync.run(warehouse, RUN, "live", {"sms": twilio(box)}, {}, collect_feedback=False)
    assert first.by_provider["twilio"] == {"acknowledged": 1} and first.deferred == 2
    assert ledger_rows(warehouse)[keys[0]][0] == "scheduled"
    # Time passes: c0's slot has just come, c1's passed five hours ago (quiet hours since).
    warehouse.execute(
        "update winback.outbox set send_at = now() - interval '5 minutes' where customer_id = 'c0'"
    )
    warehouse.execute(
        "update winback.outbox set send_at = now() - interval '5 hours' where customer_id = 'c1'"
    )
    warehouse.commit()
    later = sync.run(
        warehouse, date(2026, 11, 21), "live", {"sms": twilio(box)}, {}, collect_feedback=False
    )
    assert later.by_provider["twilio"] == {"acknowledged": 1, "skipped": 1}
    states = ledger_rows(warehouse)
    assert states[keys[0]][0] == "acknowledged"
    assert states[keys[1]][0] == "skipped" and "send window missed" in states[keys[1]][2]
    assert set(box.accepted()["messages_by_reference"]) == {keys[0], keys[2]}


class _Handshake:
    """Two fake providers whose sends wait for each other: only channels synced side by
    side can finish (one channel after the other would wait forever)."""

    def __init__(self):
        self.arrived = {"email": asyncio.Event(), "sms": asyncio.Event()}

    def provider(self, channel: str, other: str):
        handshake = self

        class Provider:
            name = f"handshake_{channel}"
            limits = RateLimits(1000.0, 4, 5.0)
            can_lookup = False
            negative_lookup_trusted_after = 0.0

            async def send(self, message):
                handshake.arrived[channel].set()
                await asyncio.wait_for(handshake.arrived[other].wait(), timeout=10)
                return SendResult(Outcome.ACCEPTED, provider_message_id=message.idempotency_key)

            async def lookup(self, message, since):
                return None

            async def aclose(self):
                return None

        return Provider()


def test_channels_are_synced_side_by_side_and_one_failing_does_not_stop_the_other(warehouse):
    customers = add_customers(warehouse, 6)
    enqueue(warehouse, customers[:3], "email")
    enqueue(warehouse, customers[3:], "sms")
    handshake = _Handshake()
    providers = {
        "email": handshake.provider("email", "sms"),
        "sms": handshake.provider("sms", "email"),
    }
    result = sync.run(warehouse, RUN, "live", providers, {}, collect_feedback=False)
    assert result.by_provider == {
        "handshake_email": {"acknowledged": 3},
        "handshake_sms": {"acknowledged": 3},
    }

    # A channel whose run raises (here its provider cannot close) fails the sync, but only
    # after the other channel has sent all it had.
    customers = add_customers(warehouse, 4, start=100)
    enqueue(warehouse, customers[:2], "email")
    enqueue(warehouse, customers[2:], "sms")
    handshake = _Handshake()
    broken = handshake.provider("email", "sms")

    async def cannot_close():
        raise RuntimeError("connection pool broken")

    broken.aclose = cannot_close
    providers = {"email": broken, "sms": handshake.provider("sms", "email")}
    with pytest.raises(RuntimeError, match="connection pool broken"):
        sync.run(warehouse, RUN, "live", providers, {}, collect_feedback=False)
    warehouse.rollback()
    statuses = {key: row[0] for key, row in ledger_rows(warehouse).items()}
    assert list(statuses.values()).count("acknowledged") == 3 + 3 + 2 + 2
