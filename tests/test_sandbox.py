"""The provider sandbox: each fault it injects, its rate limit and its record."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest

from winback.simulation import sandbox

TWILIO = "/2010-04-01/Accounts/ACsandbox/Messages.json"
TWILIO_AUTH = ("ACsandbox", "sandbox-token")
MAILCHIMP_AUTH = ("anyone", "sandbox-key")


@pytest.fixture(scope="module")
def http():
    """One client for the module: a new client per request loads the CA bundle each time,
    which cost most of this module's CPU."""
    with httpx.Client() as client:
        yield client


def send_sms(http: httpx.Client, url: str, ref: str, to: str = "+16505550001", timeout=5.0):
    form = {"To": to, "From": "+15005550006", "Body": "hi", "StatusCallback": f"x?ref={ref}"}
    return http.post(f"{url}{TWILIO}", data=form, timeout=timeout, auth=TWILIO_AUTH)


@pytest.mark.parametrize(
    "fault,status,accepted",
    [
        ("rate_limit", 429, False),
        ("server_error", 500, False),
        ("unavailable", 503, False),
        ("accepted_then_error", 500, True),
    ],
)
def test_each_answered_fault(http, fault, status, accepted):
    handle = sandbox.start_sandbox(fault_rate=1.0, faults=(fault,), smtp=False)
    try:
        response = send_sms(http, handle.url, "r1")
        assert response.status_code == status
        if fault == "rate_limit":
            assert response.headers["Retry-After"] == "1"
        assert ("r1" in handle.accepted()["messages_by_reference"]) is accepted
    finally:
        handle.stop()


@pytest.mark.parametrize("fault,accepted", [("timeout", False), ("accepted_then_timeout", True)])
def test_timeouts_leave_the_client_without_an_answer(http, fault, accepted):
    handle = sandbox.start_sandbox(fault_rate=1.0, faults=(fault,), timeout_delay=0.5, smtp=False)
    try:
        with pytest.raises(httpx.ReadTimeout):
            send_sms(http, handle.url, "r1", timeout=0.2)
        assert ("r1" in handle.accepted()["messages_by_reference"]) is accepted
    finally:
        handle.stop()


def test_a_partial_batch_rejects_some_operations_and_applies_the_rest(http):
    handle = sandbox.start_sandbox(fault_rate=1.0, faults=("partial_batch",), smtp=False)
    try:
        operations = []
        for i in range(40):
            email = f"u{i}@shop.test"
            member_hash = hashlib.md5(email.encode()).hexdigest()
            operations.append(
                {
                    "method": "PUT",
                    "path": f"/lists/L/members/{member_hash}",
                    "operation_id": str(i),
                    "body": json.dumps({"email_address": email, "status_if_new": "subscribed"}),
                }
            )
        batch = http.post(
            f"{handle.url}/3.0/batches", json={"operations": operations}, auth=MAILCHIMP_AUTH
        ).json()
        status = http.get(f"{handle.url}/3.0/batches/{batch['id']}", auth=MAILCHIMP_AUTH).json()
        assert status["status"] == "finished" and 0 < status["errored_operations"] < 40
        archive = http.get(status["response_body_url"]).content
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            member = next(m for m in tar.getmembers() if m.isfile())
            results = json.loads(tar.extractfile(member).read())
        failed = {r["operation_id"] for r in results if r["status_code"] == 503}
        assert len(failed) == status["errored_operations"]
        assert len(handle.accepted()["members"]["L"]) == 40 - len(failed)
    finally:
        handle.stop()


def test_faults_are_deterministic_for_a_seed(http):
    def outcomes(seed: int) -> list[int]:
        # A stall well beyond the client's timeout, and an answer well within it, even on
        # a busy machine.
        # Sent eight at a time: a fault depends on the seed and the request, not on the
        # order the requests arrive in, and the timeouts wait side by side.
        handle = sandbox.start_sandbox(fault_rate=0.5, seed=seed, smtp=False, timeout_delay=2.0)

        def code(i: int) -> int:
            try:
                return send_sms(http, handle.url, f"r{i}", timeout=1.0).status_code
            except httpx.ReadTimeout:
                return 0

        try:
            with ThreadPoolExecutor(8) as pool:
                return list(pool.map(code, range(30)))
        finally:
            handle.stop()

    first = outcomes(9)
    assert first == outcomes(9)
    assert 5 < sum(code != 201 for code in first) < 25


def test_the_configured_rate_limit_is_enforced_with_429s(http):
    # 5 per second: 8 threads exceed it even on a busy machine.
    handle = sandbox.start_sandbox(rate_limit=5, smtp=False)
    try:
        with ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(lambda i: send_sms(http, handle.url, f"r{i}").status_code, range(40))
            )
        assert codes.count(429) > 0 and handle.stats()["counters"]["throttled"] > 0
    finally:
        handle.stop()


def test_invalid_numbers_are_rejected_with_twilios_error_code(http):
    handle = sandbox.start_sandbox(smtp=False)
    try:
        response = send_sms(http, handle.url, "r1", to="+1555")
        assert response.status_code == 400 and response.json()["code"] == 21211
    finally:
        handle.stop()


def test_feedback_events_follow_the_configured_rates(http):
    handle = sandbox.start_sandbox(smtp=False, feedback={**sandbox.DEFAULT_FEEDBACK, "stop": 0.5})
    try:
        for i in range(100):
            assert send_sms(http, handle.url, f"r{i}", to=f"+1650555{i:04d}").status_code == 201
        events = handle.events()
        kinds = [e["type"] for e in events]
        assert kinds.count("delivered") + kinds.count("undelivered") == 100
        assert 30 < kinds.count("inbound") < 70
        stop = next(e for e in events if e["type"] == "inbound")
        assert stop["body"].upper() in sandbox.STOP_WORDS
        assert len({e["event_id"] for e in events}) == len(events)
    finally:
        handle.stop()


def test_twilio_messages_are_queued_then_sent_and_listed_late_page_by_page(http):
    """Queued with date_sent null, a list that lags, GMT DateSent filters, real pages."""
    handle = sandbox.start_sandbox(smtp=False, queue_seconds=2.5, list_lag=0.6)
    try:
        created = [send_sms(http, handle.url, f"r{i}").json() for i in range(5)]
        last_created = time.monotonic()
        assert all(m["status"] == "queued" and m["date_sent"] is None for m in created)
        assert created[0]["date_created"].endswith("+0000")  # RFC 2822, GMT
        listed = http.get(f"{handle.url}{TWILIO}", auth=TWILIO_AUTH).json()
        assert len(listed["messages"]) < 5, "the list lags behind creates"
        time.sleep(0.7)
        today = datetime.now(UTC).date().isoformat()
        by_date = {"To": "+16505550001", "DateSent>": today}
        queued = http.get(f"{handle.url}{TWILIO}", params=by_date, auth=TWILIO_AUTH).json()
        assert queued["messages"] == [], "no date_sent yet: no DateSent filter matches"
        seen, url, params = [], TWILIO, {"To": "+16505550001", "PageSize": 2}
        while url:
            page = http.get(f"{handle.url}{url}", params=params, auth=TWILIO_AUTH).json()
            assert page["page_size"] == 2
            seen += [m["sid"] for m in page["messages"]]
            url, params = page["next_page_uri"], None
        assert seen == [m["sid"] for m in reversed(created)], "newest first, each once"
        time.sleep(max(0.0, last_created + 2.7 - time.monotonic()))
        sent = http.get(f"{handle.url}{TWILIO}", params=by_date, auth=TWILIO_AUTH).json()
        assert len(sent["messages"]) == 5 and all(m["status"] == "sent" for m in sent["messages"])
        wrong = http.post(f"{handle.url}{TWILIO}", data={"To": "+1"}, auth=("ACsandbox", "no"))
        assert wrong.status_code == 401 and wrong.json()["code"] == 20003
    finally:
        handle.stop()


def test_a_full_sender_queue_answers_21611_and_drains(http):
    handle = sandbox.start_sandbox(smtp=False, queue_seconds=1.0, sender_queue_limit=2)
    try:
        codes = [send_sms(http, handle.url, f"q{i}").status_code for i in range(3)]
        assert codes == [201, 201, 400]
        assert send_sms(http, handle.url, "q3").json()["code"] == 21611
        time.sleep(1.1)
        assert send_sms(http, handle.url, "q4").status_code == 201
    finally:
        handle.stop()


def test_a_mailchimp_batch_runs_for_its_time_and_its_results_refuse_credentials(http):
    handle = sandbox.start_sandbox(smtp=False, batch_seconds=1.0)
    try:
        email = "slow@shop.test"
        member = hashlib.md5(email.encode()).hexdigest()
        operation = {
            "method": "PUT",
            "path": f"/lists/L/members/{member}",
            "operation_id": "one",
            "body": json.dumps({"email_address": email, "status_if_new": "subscribed"}),
        }
        batches = f"{handle.url}/3.0/batches"
        batch = http.post(batches, json={"operations": [operation]}, auth=MAILCHIMP_AUTH).json()
        status = http.get(f"{batches}/{batch['id']}", auth=MAILCHIMP_AUTH).json()
        assert status["status"] in ("pending", "started") and status["response_body_url"] == ""
        assert "L" not in handle.accepted()["members"], "nothing applied before it finishes"
        assert http.get(f"{batches}/{batch['id']}").status_code == 401
        time.sleep(1.1)
        status = http.get(f"{batches}/{batch['id']}", auth=MAILCHIMP_AUTH).json()
        assert status["status"] == "finished" and not status["response_body_url"].startswith(
            handle.url
        ), "results live on another host"
        refused = http.get(status["response_body_url"], auth=MAILCHIMP_AUTH)
        assert refused.status_code == 400 and b"Only one auth mechanism" in refused.content
        assert http.get(status["response_body_url"]).status_code == 200
        assert http.get(status["response_body_url"] + "0").status_code == 403
    finally:
        handle.stop()
