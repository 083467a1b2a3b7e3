"""The global control group: assigned once by a stratified hash, never sent anything on any
channel, and the program measured against it (real PostgreSQL, the provider sandbox)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from test_audiences import Shop, campaign, holdout

from winback import config
from winback.campaigns import assignment, audiences
from winback.delivery import sync
from winback.delivery.providers.mailchimp import MailchimpAudience, subscriber_hash
from winback.delivery.providers.popup import PopupWebhook
from winback.delivery.providers.ratelimit import RateLimits
from winback.delivery.providers.smtp import SmtpEmail
from winback.delivery.providers.twilio import TwilioSms
from winback.simulation import sandbox

RUN = date(2026, 11, 20)


@pytest.fixture
def shop(conn):
    return Shop(conn)


def control_of(conn) -> dict[str, tuple[str, bool]]:
    rows = conn.execute("select customer_id, stratum, is_control from winback.global_control")
    return {cid: (stratum, is_control) for cid, stratum, is_control in rows}


def test_the_share_is_exact_per_stratum_stable_and_checked(shop, monkeypatch):
    monkeypatch.setenv(config.GLOBAL_CONTROL_SHARE_ENV, "0.1")
    shop.add_many(700, prefix="a", rfm_segment="At risk")
    shop.add_many(300, prefix="h", rfm_segment="Hibernating")
    shop.add_many(9, prefix="c", rfm_segment="Champions")
    shop.run([campaign()], RUN)
    first = control_of(shop.conn)
    assert len(first) == 1009
    for stratum, size in (("At risk", 700), ("Hibernating", 300), ("Champions", 9)):
        held = sum(c for s, c in first.values() if s == stratum)
        assert held == round(0.1 * size), stratum

    # The same hash, in SQL and in Python, orders a stratum's customers.
    def by_hash(cid: str) -> int:
        return assignment.assignment_hash(audiences.GLOBAL_CONTROL_KEY, cid)

    champions = sorted((cid for cid in first if cid.startswith("c")), key=by_hash)
    assert first[champions[0]][1] and not any(first[c][1] for c in champions[1:])
    # Reruns, later days, a segment change and new customers move nobody; the newcomers
    # fill their stratum up to the share of everyone assigned in it.
    shop.update(rfm_segment="Hibernating")
    shop.add_many(100, prefix="n", rfm_segment="At risk")
    shop.run([campaign()], RUN)
    shop.run([campaign()], RUN + timedelta(days=1))
    second = control_of(shop.conn)
    assert {c: second[c] for c in first} == first
    at_risk = sum(c for s, c in second.values() if s == "At risk")
    assert at_risk == round(0.1 * 800)

    monkeypatch.setenv(config.GLOBAL_CONTROL_SHARE_ENV, "0.9")
    with pytest.raises(ValueError, match="between 0 and 0.5"):
        config.global_control_share()
    monkeypatch.setenv(config.GLOBAL_CONTROL_SHARE_ENV, "five")
    with pytest.raises(ValueError, match="not a number"):
        config.global_control_share()


def test_the_global_control_receives_nothing_on_any_channel(shop, monkeypatch):
    """Email, SMS and popup campaigns, a live sync to the sandbox and the audience sync:
    a control customer enters, is recorded, and is never sent anything anywhere."""
    monkeypatch.setenv(config.GLOBAL_CONTROL_SHARE_ENV, "0.3")
    # Codes made with a deployment's own secret: a live sync refuses the demo key's.
    monkeypatch.setenv("WINBACK_COUPON_SECRET", "global-control-test-secret-" + "x" * 32)
    shop.add_many(120, prefix="e", rfm_segment="At risk")
    shop.add_many(120, prefix="s", rfm_segment="Hibernating")
    shop.add_many(120, prefix="p", rfm_segment="Champions")
    sms_step = {"id": "text", "channel": "sms", "body": "Come back {{ tracked_link }} STOP"}
    popup_step = {"id": "banner", "channel": "popup", "body": "Welcome back"}
    email = campaign(
        id="by_email", audience={"rfm_segments": ["At risk"]}, holdout=holdout(0.2), priority=3
    )
    sms = campaign(
        id="by_sms", channels=["sms"], audience={"rfm_segments": ["Hibernating"]},
        holdout=holdout(0.2), steps=[sms_step], priority=2,
    )  # fmt: skip
    popup = campaign(
        id="by_popup", channels=["popup"], audience={"rfm_segments": ["Champions"]},
        holdout=holdout(0.2), steps=[popup_step], priority=1,
    )  # fmt: skip
    shop.run([email, sms, popup], RUN)
    control = {c for c, (_s, is_control) in control_of(shop.conn).items() if is_control}
    groups = dict(
        shop.conn.execute(
            "select customer_id, assigned_group from winback.campaign_audiences"
        ).fetchall()
    )
    assert {c for c, g in groups.items() if g == "global_control"} == control
    assert 100 < len(control) < 120
    outbox = shop.outbox()
    assert {r["channel"] for r in outbox} == {"email", "sms", "popup"}
    assert not control & {r["customer_id"] for r in outbox}
    assert {r["customer_id"] for r in outbox} == {c for c, g in groups.items() if g == "treatment"}
    held_out = shop.conn.execute(
        "select count(*) from winback.journey_events e join winback.global_control g"
        " using (customer_id) where g.is_control and e.action = 'held_out'"
    ).fetchone()[0]
    assert held_out == len(control)  # recorded at their step, as a holdout is

    assert sync.dry_run(shop.conn, RUN).recorded == len(outbox)  # nothing else would send

    # Live, to the sandbox, on every channel and the audience provider, at send time.
    shop.conn.execute("update winback.outbox set send_at = now()")
    shop.conn.commit()
    box = sandbox.start_sandbox(seed=7)
    try:
        limits = RateLimits(200.0, 4, 2.0)
        settings = sandbox.SandboxSettings()
        providers = {
            "email": SmtpEmail("127.0.0.1", box.smtp_port, "shop@shop.test", limits=limits),
            "sms": TwilioSms(box.url, settings.account_sid, settings.auth_token,
                             "+15005550006", "https://shop.test/status", limits),
            "popup": PopupWebhook(box.url, None),
        }  # fmt: skip
        mailchimp = MailchimpAudience(box.url, settings.api_key, "L1")
        sync.run(shop.conn, RUN, "live", providers, {"mailchimp": mailchimp}, False)
        shop.conn.commit()
        accepted = box.accepted()
    finally:
        box.stop()
    # SMTP's reference is the Message-ID, keyed (unguessable): the ledger maps it back.
    by_message_id = dict(
        shop.conn.execute(
            "select provider_message_id, idempotency_key from winback.send_ledger"
            " where mode = 'live' and provider = 'smtp'"
        ).fetchall()
    )
    sent_keys = {by_message_id.get(ref, ref) for ref in accepted["messages_by_reference"]}
    assert sent_keys == {r["idempotency_key"] for r in outbox}
    control_keys = {
        audiences.idempotency_key(c.id, c.steps[0].id, customer, c.steps[0].channel)
        for c in (email, sms, popup)
        for customer in control
    }
    assert not sent_keys & control_keys
    members = accepted["members"]["L1"]
    tagged = {h for h, m in members.items() if "winback:by_email" in m["tags"]}
    treated_email = {c for c, g in groups.items() if g == "treatment" and c.startswith("e")}
    assert tagged == {subscriber_hash(f"{c}@example.com") for c in treated_email}
    assert not tagged & {subscriber_hash(f"{c}@example.com") for c in control}
