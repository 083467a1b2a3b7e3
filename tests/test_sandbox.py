"""The provider sandbox: each fault it injects, its rate limit and its record."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from winback.simulation import sandbox

TWILIO = "/2010-04-01/Accounts/ACsandbox/Messages.json"
TWILIO_AUTH = ("ACsandbox", "sandbox-token")
MAILCHIMP_AUTH = ("anyone", "sandbox-key")


def send_sms(url: str, ref: str, to: str = "+16505550001", timeout: float = 5.0):
    form = {"To": to, "From": "+15005550006", "Body": "hi", "StatusCallback": f"x?ref={ref}"}
    return httpx.post(f"{url}{TWILIO}", data=form, timeout=timeout, auth=TWILIO_AUTH)


@pytest.mark.parametrize(
    "fault,status,accepted",
    [
        ("rate_limit", 429, False),
        ("server_error", 500, False),
        ("unavailable", 503, False),
        ("accepted_then_error", 500, True),
    ],
)
def test_each_answered_fault(fault, status, accepted):
    handle = sandbox.start_sandbox(fault_rate=1.0, faults=(fault,), smtp=False)
    try:
        response = send_sms(handle.url, "r1")
        assert response.status_code == status
        if fault == "rate_limit":
            assert response.headers["Retry-After"] == "1"
        assert ("r1" in handle.accepted()["messages_by_reference"]) is accepted
    finally:
        handle.stop()


@pytest.mark.parametrize("fault,accepted", [("timeout", False), ("accepted_then_timeout", True)])
def test_timeouts_leave_the_client_without_an_answer(fault, accepted):
    handle = sandbox.start_sandbox(fault_rate=1.0, faults=(fault,), timeout_delay=0.5, smtp=False)
    try:
        with pytest.raises(httpx.ReadTimeout):
            send_sms(handle.url, "r1", timeout=0.2)
        assert ("r1" in handle.accepted()["messages_by_reference"]) is accepted
    finally:
        handle.stop()


def test_a_partial_batch_rejects_some_operations_and_applies_the_rest():
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
        batch = httpx.post(
            f"{handle.url}/3.0/batches", json={"operations": operations}, auth=MAILCHIMP_AUTH
        ).json()
        status = httpx.get(f"{handle.url}/3.0/batches/{batch['id']}", auth=MAILCHIMP_AUTH).json()
        assert status["status"] == "finished" and 0 < status["errored_operations"] < 40
        archive = httpx.get(status["response_body_url"]).content
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            member = next(m for m in tar.getmembers() if m.isfile())
            results = json.loads(tar.extractfile(member).read())
        failed = {r["operation_id"] for r in results if r["status_code"] == 503}
        assert len(failed) == status["errored_operations"]
        assert len(handle.accepted()["members"]["L"]) == 40 - len(failed)
    finally:
        handle.stop()


def test_faults_are_deterministic_for_a_seed():
    def outcomes(seed: int) -> list[int]:
        handle = sandbox.start_sandbox(fault_rate=0.5, seed=seed, smtp=False, timeout_delay=0.3)
        try:
            codes = []
            for i in range(30):
                try:
                    codes.append(send_sms(handle.url, f"r{i}", timeout=0.2).status_code)
                except httpx.ReadTimeout:
                    codes.append(0)
            return codes
        finally:
            handle.stop()

    first = outcomes(9)
    assert first == outcomes(9)
    assert 5 < sum(code != 201 for code in first) < 25


def test_the_configured_rate_limit_is_enforced_with_429s():
    handle = sandbox.start_sandbox(rate_limit=20, smtp=False)
    try:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: send_sms(handle.url, f"r{i}").status_code, range(40)))
        assert codes.count(429) > 0 and handle.stats()["counters"]["throttled"] > 0
    finally:
        handle.stop()


def test_invalid_numbers_are_rejected_with_twilios_error_code():
    handle = sandbox.start_sandbox(smtp=False)
    try:
        response = send_sms(handle.url, "r1", to="+1555")
        assert response.status_code == 400 and response.json()["code"] == 21211
    finally:
        handle.stop()


def test_feedback_events_follow_the_configured_rates():
    handle = sandbox.start_sandbox(smtp=False, feedback={**sandbox.DEFAULT_FEEDBACK, "stop": 0.5})
    try:
        for i in range(100):
            assert send_sms(handle.url, f"r{i}", to=f"+1650555{i:04d}").status_code == 201
        events = handle.events()
        kinds = [e["type"] for e in events]
        assert kinds.count("delivered") + kinds.count("undelivered") == 100
        assert 30 < kinds.count("inbound") < 70
        stop = next(e for e in events if e["type"] == "inbound")
        assert stop["body"].upper() in sandbox.STOP_WORDS
        assert len({e["event_id"] for e in events}) == len(events)
    finally:
        handle.stop()
