"""Provider feedback: stored once per event, and opt-outs suppress before the next send."""

from __future__ import annotations

import json

import pytest

from tests.test_sync import RUN, add_customers, enqueue, ledger_rows, reset_warehouse, twilio
from winback.delivery import feedback, sync
from winback.delivery.providers import Outcome
from winback.delivery.providers.ratelimit import RateLimits
from winback.delivery.providers.twilio import TwilioSms
from winback.simulation import sandbox


@pytest.fixture
def warehouse(conn):
    return reset_warehouse(conn)


@pytest.fixture
def box():
    handle = sandbox.start_sandbox(
        seed=4, feedback={**sandbox.DEFAULT_FEEDBACK, "stop": 0.2, "delivered": 0.9}
    )
    yield handle
    handle.stop()


def test_a_duplicate_webhook_changes_nothing(warehouse, box):
    enqueue(warehouse, add_customers(warehouse, 10), "sms")
    sync.run(warehouse, RUN, "live", {"sms": twilio(box)}, {}, collect_feedback=False)
    events = box.events()
    first = feedback.ingest(warehouse, events)
    warehouse.commit()
    before = warehouse.execute("select count(*) from winback.message_events").fetchone()[0]
    again = feedback.ingest(warehouse, events[:3] + events)
    warehouse.commit()
    after = warehouse.execute("select count(*) from winback.message_events").fetchone()[0]
    assert first.stored > 0 and before == first.stored
    assert again.stored == 0 and again.duplicates == first.stored + 3
    assert after == before
    linked = warehouse.execute(
        "select count(*) from winback.message_events where idempotency_key is null"
    ).fetchone()[0]
    assert linked == 0, "every event is tied to its outbox row"


def test_a_stop_reply_suppresses_the_number_in_the_same_run(warehouse, box):
    customers = add_customers(warehouse, 30)
    enqueue(warehouse, customers, "sms", campaign="first")
    sync.run(warehouse, RUN, "live", {"sms": twilio(box)}, {}, collect_feedback=False)
    stopped = [e for e in box.events() if e["type"] == "inbound"]
    assert stopped, "the sandbox sent STOP replies at the configured rate"
    # The next campaign's messages to the same numbers: the live run collects feedback
    # first, so a STOP received since the last run already holds.
    second = enqueue(warehouse, customers, "sms", campaign="second")
    collected = feedback.collect(warehouse, RUN, url=f"{box.url}/_sandbox/events")
    assert collected["suppressions_added"] >= len(stopped)
    result = sync.run(warehouse, RUN, "live", {"sms": twilio(box)}, {}, collect_feedback=False)
    states = ledger_rows(warehouse)
    skipped = [k for k in second if states[k][0] == "skipped"]
    assert len(skipped) == result.by_provider["twilio"]["skipped"] >= len(stopped)
    assert all("SMS stop word" in states[k][2] for k in skipped)
    stored = warehouse.execute("select address_hash from winback.suppressions").fetchall()
    plain = {e["from"] for e in stopped}
    assert not any(row[0] in plain for row in stored), "no phone number stored in plaintext"


def test_a_live_run_collects_feedback_first_and_a_second_collect_adds_nothing(
    warehouse, box, monkeypatch
):
    for name, value in box.connections_env().items():
        monkeypatch.setenv(name, value)
    enqueue(warehouse, add_customers(warehouse, 20), "email")
    esp = box.connections_env()["AIRFLOW_CONN_WINBACK_SMTP"]
    assert json.loads(esp)["port"] == box.smtp_port
    first = sync.run(warehouse, RUN, "live", audiences={})
    assert first.by_provider["smtp"] == {"acknowledged": 20}
    collected = feedback.collect(warehouse, RUN)
    assert collected["stored"] > 0
    assert feedback.collect(warehouse, RUN)["stored"] == 0
    funnel = dict(
        warehouse.execute(
            "select event_type, count(*) from winback.message_events group by 1"
        ).fetchall()
    )
    assert funnel["delivered"] >= funnel.get("opened", 0) >= funnel.get("clicked", 0)
    assert funnel["delivered"] + funnel.get("bounced", 0) == 20


def test_stop_words_are_recognised_whatever_the_case():
    for word in (
        "stop",
        " Stop ",
        "UNSUBSCRIBE",
        "cancel",
        "end",
        "quit",
        "stopall",
        "revoke",
        "optout",
    ):
        event = {
            "event_id": "e",
            "provider": "twilio",
            "type": "inbound",
            "from": "+1",
            "body": word,
        }
        assert feedback._normalize(event)["event_type"] == "unsubscribed"
    chat = {
        "event_id": "e",
        "provider": "twilio",
        "type": "inbound",
        "from": "+1",
        "body": "stop by tomorrow?",
    }
    assert feedback._normalize(chat) is None


def test_twilio_lookup_finds_a_message_the_provider_accepted(box):
    import asyncio
    from datetime import UTC, datetime

    from winback.delivery.providers import OutgoingMessage

    provider = TwilioSms(
        box.url, "ACsandbox", "sandbox-token", "+15005550006", limits=RateLimits(10.0, 2)
    )
    message = OutgoingMessage("k", "c", "camp", "sms", "+16505550001", None, "hello")

    async def scenario():
        try:
            before = await provider.lookup(message, datetime.now(UTC))
            sent = await provider.send(message)
            after = await provider.lookup(message, datetime.now(UTC))
            return before, sent, after
        finally:
            await provider.aclose()

    before, sent, after = asyncio.run(scenario())
    assert before is None and sent.outcome is Outcome.ACCEPTED
    assert after.provider_message_id == sent.provider_message_id
