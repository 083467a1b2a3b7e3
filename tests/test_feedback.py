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


def test_a_provider_event_cannot_name_the_message_it_is_about():
    """Only winback's own opt-outs (the unsubscribe link) name their message; a provider's
    event is linked through the send ledger, whatever its payload claims."""
    row = feedback._normalize(
        {
            "event_id": "sg-1",
            "provider": "sendgrid",
            "type": "unsubscribed",
            "address": "someone@example.com",
            "idempotency_key": "another-customers-message",
            "customer_id": "C0001",
            "campaign_id": "we_miss_you",
        }
    )
    assert row is not None and row["event_type"] == "unsubscribed"
    assert not {"idempotency_key", "customer_id", "campaign_id"} & row.keys()


def _opt_out_row(event_id: str, address: str | None, **link) -> dict:
    return {
        "event_id": event_id,
        "provider": "winback" if link else "sendgrid",
        "event_type": "unsubscribed",
        "channel": "email",
        "provider_message_id": None,
        "occurred_at": "2026-11-20T10:00:00+00:00",
        "address_hash": feedback.address_hash(address) if address else None,
        "reason": "unsubscribed by link" if link else None,
        **link,
    }


def test_winbacks_own_opt_out_suppresses_whenever_recorded_a_providers_only_when_new(conn):
    feedback.ensure_schema(conn)
    conn.execute("truncate winback.message_events, winback.suppressions")
    link = {"idempotency_key": "k-email", "customer_id": "C0001", "campaign_id": "we_miss_you"}
    # The first click found no address on the channel: the event, no suppression.
    first = feedback.store_events(conn, [_opt_out_row("unsubscribe:k:email", None, **link)])
    assert (first.stored, first.suppressions_added) == (1, 0)
    # Clicked again once the address is known: stored before, suppressed now.
    again = feedback.store_events(
        conn, [_opt_out_row("unsubscribe:k:email", "new@example.com", **link)]
    )
    assert (again.stored, again.suppressions_added) == (0, 1)
    assert conn.execute(
        "select idempotency_key, customer_id, campaign_id, provider"
        " from winback.message_events where event_id = 'unsubscribe:k:email'"
    ).fetchall() == [("k-email", "C0001", "we_miss_you", "winback")]
    # A provider's event seen before does not suppress again (a STOP after a START).
    feedback.store_events(conn, [_opt_out_row("sg-2", None)])
    late = feedback.store_events(conn, [_opt_out_row("sg-2", "late@example.com")])
    assert (late.stored, late.suppressions_added) == (0, 0)
    conn.rollback()
