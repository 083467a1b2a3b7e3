"""The return path over real HTTP: `winback serve` against a real PostgreSQL.

Signatures are checked with the example values the providers publish (Twilio's request
validator vectors, SendGrid's signed-event example) and with keys made here; every
webhook is sent as the provider sends it, to the running application.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from datetime import date
from urllib.parse import urlencode

import httpx
import psycopg
import pytest
import uvicorn
from conftest import create_database, using_database
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from winback.campaigns import journeys, personalization
from winback.delivery import feedback, ledger
from winback.delivery.returnpath import app as service
from winback.delivery.returnpath import sendgrid, tokens, twilio
from winback.local.ports import free_port
from winback.warehouse import tables

RUN_DATE = date(2026, 11, 20)
AUTH_TOKEN = "twilio-auth-token-for-the-tests-0123456789"
MAILCHIMP_SECRET = "mailchimp-webhook-secret-0123456789abcdef"
CUSTOMER = "C0001"
EMAIL = "eve@example.com"
PHONE = "+447700900123"


# --- the providers' published examples ---------------------------------------------------


def test_twilio_signature_matches_twilios_published_vectors():
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+14158675309"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
    ]
    assert twilio.expected_signature("12345", url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert twilio.is_genuine(["12345"], url, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678")]
    repeated += [("Digits", "1234"), ("Digits", "1234")]
    assert twilio.expected_signature("12345", url, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    tampered = [*params[:2], ("Digits", "9999"), *params[3:]]
    assert not twilio.is_genuine(["12345"], url, tampered, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not twilio.is_genuine(["12345"], url + "&x=1", params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not twilio.is_genuine(["12345"], url, params, "")


# SendGrid's example of a signed event (its Event Webhook SDKs' shared test values).
SENDGRID_PUBLIC_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7"
    "yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA=="
)
SENDGRID_SIGNATURE = (
    "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xon"
    "ZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0="
)
SENDGRID_TIMESTAMP = "1588788367"
SENDGRID_PAYLOAD = b'{"category":"example_payload","event":"test_event","message_id":"message_id"}'


def test_sendgrid_signature_matches_sendgrids_published_example():
    assert sendgrid.is_genuine(
        SENDGRID_PUBLIC_KEY, SENDGRID_PAYLOAD, SENDGRID_SIGNATURE, SENDGRID_TIMESTAMP
    )
    assert not sendgrid.is_genuine(
        SENDGRID_PUBLIC_KEY, SENDGRID_PAYLOAD + b" ", SENDGRID_SIGNATURE, SENDGRID_TIMESTAMP
    )
    assert not sendgrid.is_genuine(
        SENDGRID_PUBLIC_KEY, SENDGRID_PAYLOAD, SENDGRID_SIGNATURE, "1588788368"
    )
    assert not sendgrid.is_genuine(SENDGRID_PUBLIC_KEY, SENDGRID_PAYLOAD, "not base64!", "1")


def test_unsubscribe_tokens_are_opaque_and_unforgeable():
    key = journeys.idempotency_key("we_miss_you", "s1", CUSTOMER, "email")
    token = tokens.unsubscribe_token(key)
    assert CUSTOMER not in token
    assert tokens.verify_unsubscribe_token(token) == key
    reference, _, tag = token.partition(".")
    forged_tag = ("A" if tag[0] != "A" else "B") + tag[1:]
    assert tokens.verify_unsubscribe_token(f"{reference}.{forged_tag}") is None
    other = journeys.idempotency_key("we_miss_you", "s1", "C0002", "email")
    assert tokens.verify_unsubscribe_token(f"{other}.{tag}") is None
    assert tokens.verify_unsubscribe_token("../../etc/passwd") is None


# --- the running service -----------------------------------------------------------------


class Running:
    def __init__(self, url: str, db_url: str, signing_key: ec.EllipticCurvePrivateKey):
        self.url, self.db_url, self.signing_key = url, db_url, signing_key
        self.client = httpx.Client(base_url=url, timeout=10, follow_redirects=False)

    def sql(self, query: str, params=()) -> list[tuple]:
        with psycopg.connect(self.db_url) as conn:
            return conn.execute(query, params).fetchall()

    def twilio(self, kind: str, form: dict, token: str = AUTH_TOKEN) -> httpx.Response:
        path = f"/webhooks/twilio/{kind}"
        signature = twilio.expected_signature(token, self.url + path, list(form.items()))
        return self.client.post(
            path,
            content=urlencode(form),
            headers={
                "content-type": "application/x-www-form-urlencoded",
                "x-twilio-signature": signature,
            },
        )

    def sendgrid(self, events: list[dict], *, key=None) -> httpx.Response:
        body = json.dumps(events).encode()
        stamp = str(int(time.time()))
        signature = (key or self.signing_key).sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return self.client.post(
            "/webhooks/sendgrid",
            content=body,
            headers={
                "content-type": "application/json",
                sendgrid.SIGNATURE_HEADER: base64.b64encode(signature).decode(),
                sendgrid.TIMESTAMP_HEADER: stamp,
            },
        )

    def suppressed(self, channel: str, address: str) -> list[str]:
        rows = self.sql(
            "select reason from winback.suppressions where channel = %s and address_hash = %s",
            (channel, feedback.address_hash(address)),
        )
        return [r[0] for r in rows]

    def events(self, event_type: str) -> int:
        return self.sql(
            "select count(*) from winback.message_events where event_type = %s", (event_type,)
        )[0][0]


def _seed(conn: psycopg.Connection) -> None:
    """One customer, an email and an SMS of a campaign (sent live), a tracked link."""
    tables.ensure_schema(conn)
    conn.execute("create schema if not exists marts")
    conn.execute(
        "create table marts.customer_features (customer_id text primary key, email text,"
        " phone text, is_email_subscribed boolean, is_email_suppressed boolean,"
        " is_sms_subscribed boolean, is_sms_suppressed boolean)"
    )
    conn.execute(
        "insert into marts.customer_features values (%s, %s, %s, true, false, true, false)",
        (CUSTOMER, EMAIL, PHONE),
    )
    for channel, to in (("email", EMAIL), ("sms", PHONE)):
        key = journeys.idempotency_key("we_miss_you", "s1", CUSTOMER, channel)
        conn.execute(
            "insert into winback.outbox (idempotency_key, run_date, campaign_id, step_id,"
            " customer_id, channel, payload) values (%s, %s, 'we_miss_you', 's1', %s, %s, %s)",
            (key, RUN_DATE, CUSTOMER, channel, json.dumps({"to": to, "body": "hello"})),
        )
        conn.execute(
            "insert into winback.send_ledger (idempotency_key, mode, status, provider, run_date,"
            " provider_message_id, updated_at) values (%s, 'live', 'sent', %s, %s, %s, now())",
            (
                key,
                "twilio" if channel == "sms" else "smtp",
                RUN_DATE,
                f"<{key}@winback>" if channel == "email" else "SM00000000000000000000000000000001",
            ),
        )
    link = personalization.TrackedLink(
        "abcdefghjk", "we_miss_you", "s1", CUSTOMER, "email", "https://shop.example.com/?utm=1"
    )
    personalization.upsert_tracked_links(conn, [link])
    conn.execute(
        "insert into winback.tracked_links (code, campaign_id, step_id, customer_id, channel,"
        " target_url, created_at) values ('oldoldoldo', 'we_miss_you', 's1', %s, 'email',"
        " 'https://shop.example.com/', now() - interval '400 days')",
        (CUSTOMER,),
    )
    conn.commit()


@pytest.fixture(scope="module")
def running(session_database, monkeypatch_module):
    db_url = create_database("returnpath")
    with psycopg.connect(db_url) as conn:
        _seed(conn)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    signing_key = ec.generate_private_key(ec.SECP256R1())
    public_der = signing_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    monkeypatch_module.setenv(tokens.PUBLIC_URL_ENV, url)
    monkeypatch_module.setenv(service.MAILCHIMP_SECRET_ENV, MAILCHIMP_SECRET)
    monkeypatch_module.setenv(service.SENDGRID_KEY_ENV, base64.b64encode(public_der).decode())
    monkeypatch_module.setenv(
        "AIRFLOW_CONN_WINBACK_TWILIO",
        json.dumps({"conn_type": "http", "login": "AC123", "password": AUTH_TOKEN}),
    )
    with using_database(db_url):
        server = uvicorn.Server(
            uvicorn.Config(
                service.create_app(db_url),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                access_log=False,
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "winback serve did not start"
            time.sleep(0.05)
        try:
            yield Running(url, db_url, signing_key)
        finally:
            server.should_exit = True
            thread.join(timeout=10)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_health(running):
    assert running.client.get("/healthz").json() == {"status": "ok"}


def test_a_tracked_link_redirects_and_counts_one_click(running):
    first = running.client.get("/r/abcdefghjk")
    assert first.status_code == 302
    assert first.headers["location"] == "https://shop.example.com/?utm=1"
    assert running.client.get("/r/ABCDEFGHJK").status_code == 302  # codes read aloud
    head = running.client.head("/r/abcdefghjk")
    assert head.status_code == 302
    rows = running.sql(
        "select event_type, channel, campaign_id, customer_id, idempotency_key "
        "from winback.message_events where event_id = 'click:abcdefghjk'"
    )
    key = journeys.idempotency_key("we_miss_you", "s1", CUSTOMER, "email")
    assert rows == [("clicked", "email", "we_miss_you", CUSTOMER, key)], "three taps, one click"


@pytest.mark.parametrize("code", ["zzzzzzzzzz", "oldoldoldo", "short", "abcdefghj%2F", "x" * 500])
def test_unknown_malformed_or_expired_codes_are_a_404_and_no_redirect(running, code):
    response = running.client.get(f"/r/{code}")
    assert response.status_code == 404
    assert "location" not in response.headers


def test_a_forged_stop_is_rejected_and_the_number_stays_reachable(running):
    form = {"MessageSid": "SM-forged", "From": PHONE, "To": "+15005550006", "Body": "STOP"}
    assert running.twilio("inbound", form, token="not-the-auth-token").status_code == 403
    unsigned = running.client.post("/webhooks/twilio/inbound", content=urlencode(form))
    assert unsigned.status_code == 403
    assert running.suppressed("sms", PHONE) == []


def test_stop_suppresses_a_duplicate_changes_nothing_and_start_lifts_it(running):
    stop = {"MessageSid": "SM-stop-1", "From": PHONE, "To": "+15005550006", "Body": " stop "}
    assert running.twilio("inbound", stop).status_code == 200
    assert running.suppressed("sms", PHONE) == ["SMS stop word"]
    before = running.sql("select count(*) from winback.message_events")
    assert running.twilio("inbound", stop).status_code == 200  # Twilio retries
    assert running.sql("select count(*) from winback.message_events") == before
    help_ = {"MessageSid": "SM-help-1", "From": PHONE, "To": "+15005550006", "Body": "HELP"}
    assert running.twilio("inbound", help_).status_code == 200
    assert running.events("help_requested") == 1
    start = {"MessageSid": "SM-start-1", "From": PHONE, "To": "+15005550006", "Body": "START"}
    assert running.twilio("inbound", start).status_code == 200
    assert running.suppressed("sms", PHONE) == [], "START lifts the stop word's suppression"


def test_a_status_callback_is_linked_to_its_message(running):
    form = {
        "MessageSid": "SM00000000000000000000000000000001",
        "MessageStatus": "delivered",
        "To": PHONE,
        "AccountSid": "AC123",
    }
    assert running.twilio("status", form).status_code == 204
    rows = running.sql(
        "select customer_id, channel from winback.message_events "
        "where event_id = 'twilio:SM00000000000000000000000000000001:delivered'"
    )
    assert rows == [(CUSTOMER, "sms")]


def test_mailchimp_webhooks_need_the_secret_and_suppress_unsubscribes(running):
    path = f"/webhooks/mailchimp/{MAILCHIMP_SECRET}"
    assert running.client.get(path).status_code == 200  # Mailchimp's URL check
    form = {
        "type": "unsubscribe",
        "fired_at": "2026-11-20 10:00:00",
        "data[email]": "mc@example.com",
        "data[list_id]": "a6b5da1054",
    }
    wrong = running.client.post(
        "/webhooks/mailchimp/guess",
        content=urlencode(form),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert wrong.status_code == 403
    assert running.suppressed("email", "mc@example.com") == []
    for _ in range(2):
        ok = running.client.post(
            path,
            content=urlencode(form),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert ok.status_code == 200
    assert running.suppressed("email", "mc@example.com") == ["unsubscribed in Mailchimp"]


def test_sendgrid_events_are_verified_stored_once_and_suppress_hard_bounces(running):
    key = journeys.idempotency_key("we_miss_you", "s1", CUSTOMER, "email")
    events = [
        {
            "sg_event_id": "sg-open-1",
            "event": "open",
            "email": EMAIL,
            "timestamp": 1795000000,
            "smtp-id": f"<{key}@winback>",
        },
        {
            "sg_event_id": "sg-bounce-1",
            "event": "bounce",
            "type": "blocked",
            "email": "soft@example.com",
            "timestamp": 1795000000,
        },
        {
            "sg_event_id": "sg-bounce-2",
            "event": "bounce",
            "type": "bounce",
            "email": "hard@example.com",
            "timestamp": 1795000000,
        },
        {"sg_event_id": "sg-processed", "event": "processed", "email": EMAIL},
    ]
    intruder = ec.generate_private_key(ec.SECP256R1())
    assert running.sendgrid(events, key=intruder).status_code == 403
    assert running.events("opened") == 0
    assert running.sendgrid(events).status_code == 204
    assert running.sendgrid(events).status_code == 204  # a retry
    opened = running.sql(
        "select customer_id from winback.message_events where event_id = 'sendgrid:sg-open-1'"
    )
    assert opened == [(CUSTOMER,)]
    assert running.events("soft_bounced") == 1
    assert running.suppressed("email", "hard@example.com") == ["hard bounce"]
    assert running.suppressed("email", "soft@example.com") == []


def test_one_click_unsubscribe_stops_the_next_send_and_twice_changes_nothing(running):
    key = journeys.idempotency_key("we_miss_you", "s1", CUSTOMER, "email")
    token = tokens.unsubscribe_token(key)
    forged = running.client.post(f"/u/{key}.AAAAAAAAAAAAAAAAAAAAAA")
    assert forged.status_code == 404
    for _ in range(2):
        response = running.client.post(
            f"/u/{token}",
            content="List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 200
    assert running.suppressed("email", EMAIL) == ["unsubscribed by link"]
    assert running.sql(
        "select channel from winback.consent_withdrawals where customer_id = %s", (CUSTOMER,)
    ) == [("email",)]
    with psycopg.connect(running.db_url) as conn:
        conn.execute("delete from winback.send_ledger where idempotency_key = %s", (key,))
        rows = ledger.candidates(conn, RUN_DATE)
        conn.rollback()
    reasons = {r["idempotency_key"]: r["not_sendable_because"] for r in rows}
    assert reasons[key] == "on the suppression list: unsubscribed by link"


def test_the_unsubscribe_page_lets_the_customer_choose_sms(running):
    key = journeys.idempotency_key("we_miss_you", "s1", CUSTOMER, "email")
    page = running.client.get(f"/u/{tokens.unsubscribe_token(key)}")
    assert page.status_code == 200 and 'name="channels"' in page.text
    chosen = running.client.post(
        f"/u/{tokens.unsubscribe_token(key)}",
        data={"channels": "sms"},
    )
    assert chosen.status_code == 200
    assert "unsubscribed by link" in running.suppressed("sms", PHONE)
    # The SMS opt-out is an event of the email it came from, not of the SMS to that number.
    assert running.sql(
        "select idempotency_key, customer_id, campaign_id from winback.message_events"
        " where event_id = %s",
        (f"unsubscribe:{key}:sms",),
    ) == [(key, CUSTOMER, "we_miss_you")]


def test_bodies_are_bounded_and_the_access_log_holds_no_identifiers(running, caplog):
    caplog.set_level(logging.INFO, logger="winback.serve")
    too_big = running.client.post("/webhooks/sendgrid", content=b"[" + b" " * 1_100_000 + b"]")
    assert too_big.status_code == 413
    running.client.get("/r/abcdefghjk")
    running.client.get(f"/webhooks/mailchimp/{MAILCHIMP_SECRET}")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert '"route": "/r/{code}"' in logged and '"status": 413' in logged
    for secret in ("abcdefghjk", MAILCHIMP_SECRET, CUSTOMER, EMAIL):
        assert secret not in logged


def test_the_sandbox_pushes_its_feedback_as_signed_webhooks_none_lost_or_doubled(running):
    """Late, twice, out of order, and some first with a broken signature: every event the
    sandbox produced is stored exactly once, and each forged copy was refused."""
    import smtplib
    from email.message import EmailMessage

    from winback.simulation.sandbox import start_sandbox

    feedback_rates = {
        "delivered": 0.8,
        "opened": 0.7,
        "clicked": 0.6,
        "unsubscribed": 0.1,
        "complained": 0.05,
        "stop": 0.3,
    }
    handle = start_sandbox(
        seed=11,
        feedback=feedback_rates,
        webhook_url=running.url,
        webhook_delay=0.2,
        webhook_duplicate_rate=0.3,
        webhook_shuffle=True,
        webhook_bad_signature_rate=0.2,
        account_sid="AC123",
        auth_token=AUTH_TOKEN,
    )
    # The service trusts this sandbox's SendGrid key for the length of the test.
    previous_key = service.os.environ[service.SENDGRID_KEY_ENV]
    service.os.environ[service.SENDGRID_KEY_ENV] = handle.settings.sendgrid_public_key
    try:
        for n in range(40):
            response = httpx.post(
                f"{handle.url}/2010-04-01/Accounts/AC123/Messages.json",
                auth=("AC123", AUTH_TOKEN),
                data={"To": f"+4479111{n:05d}", "From": "+15005550006", "Body": f"hi {n}"},
                timeout=10,
            )
            assert response.status_code == 201, response.text
        with smtplib.SMTP("127.0.0.1", handle.smtp_port) as smtp:
            for n in range(40):
                email = EmailMessage()
                email["From"], email["To"] = "shop@example.com", f"c{n}@example.com"
                email["Message-ID"], email["Subject"] = f"<m{n}@winback>", "hello"
                email.set_content("hello")
                smtp.send_message(email)
        stats = handle.wait_for_webhooks(timeout=120)
        produced = handle.events()
    finally:
        handle.stop()
        service.os.environ[service.SENDGRID_KEY_ENV] = previous_key
    assert stats["failed"] == 0 and stats["refused"] > 0, stats
    expected = set()
    for event in produced:
        if event["provider"] == "twilio" and event["type"] == "inbound":
            expected.add("twilio:inbound:SM" + event["event_id"].encode().hex()[-32:])
        elif event["provider"] == "twilio":
            status = "delivered" if event["type"] == "delivered" else "undelivered"
            expected.add(f"twilio:{event['message_id']}:{status}")
        else:
            expected.add(f"sendgrid:{event['event_id']}")
    stored = {
        row[0]
        for row in running.sql(
            "select event_id from winback.message_events where event_id = any(%s)",
            (list(expected),),
        )
    }
    assert stored == expected, f"lost: {len(expected - stored)}"
    stops = [e for e in produced if e["type"] == "inbound"]
    assert stops and all(running.suppressed("sms", e["from"]) for e in stops)


def test_every_email_carries_one_click_unsubscribe_and_reaches_the_server(monkeypatch):
    """The RFC 8058 headers and the footer link, on a message longer than one SMTP line
    limit: sent with CRLF line ends, the sandbox's SMTP server accepts it."""
    import asyncio

    from winback.delivery.providers import Outcome, OutgoingMessage
    from winback.delivery.providers.smtp import SmtpEmail
    from winback.simulation.sandbox import start_sandbox

    monkeypatch.setenv(tokens.PUBLIC_URL_ENV, "https://links.shop.example")
    key = journeys.idempotency_key("we_miss_you", "s1", CUSTOMER, "email")
    body = "\n".join(f"Line {n} of a long message." for n in range(80))
    message = OutgoingMessage(key, CUSTOMER, "we_miss_you", "email", EMAIL, "Hello", body)
    built = SmtpEmail("127.0.0.1", 25, "shop@shop.example")._build(message)
    token = tokens.unsubscribe_token(key)
    assert built["List-Unsubscribe"] == (
        f"<https://links.shop.example/u/{token}>, "
        f"<mailto:unsubscribe@shop.example?subject=unsubscribe%20{token}>"
    )
    assert built["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert f"Unsubscribe: https://links.shop.example/u/{token}" in built.get_content()
    handle = start_sandbox()
    try:
        sender = SmtpEmail("127.0.0.1", handle.smtp_port, "shop@shop.example")
        result = asyncio.run(sender.send(message))
    finally:
        handle.stop()
    assert result.outcome == Outcome.ACCEPTED, result.reason
