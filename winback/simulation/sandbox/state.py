"""The sandbox's record of what it accepted, its fault injection and its rate limit.

Faults are injected at a set rate, deterministically from the seed, the request's key and
its attempt number, so a run can be replayed; every accepted message also produces the
engagement feedback a provider reports, at configurable deterministic rates.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

FAULT_KINDS = (
    "rate_limit",
    "server_error",
    "unavailable",
    "timeout",
    "accepted_then_error",
    "accepted_then_timeout",
    # Accepted, then a 2xx whose JSON body is cut short (Content-Length matches the cut).
    "truncated_body",
)
BATCH_FAULT_KINDS = (*FAULT_KINDS, "partial_batch")
STOP_WORDS = ("STOP", "UNSUBSCRIBE", "END", "QUIT", "STOPALL", "REVOKE", "OPTOUT", "CANCEL")

DEFAULT_FEEDBACK = {
    "delivered": 0.97,  # else bounced (email) / undelivered (SMS)
    "opened": 0.35,  # of delivered emails
    "clicked": 0.25,  # of opened emails
    "unsubscribed": 0.01,  # of delivered emails
    "complained": 0.002,  # of delivered emails
    "stop": 0.01,  # of delivered SMS: a STOP reply
}


def unit(*parts) -> float:
    """A deterministic number in [0, 1) from the parts."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class SandboxSettings:
    fault_rate: float = 0.0
    seed: int = 0
    rate_limit: float | None = None  # requests per second, enforced with 429s
    timeout_delay: float = 1.5  # how long a "timeout" fault keeps the client waiting
    retry_after: float = 1.0  # the Retry-After of an injected 429 (throttling says 1 s)
    faults: tuple[str, ...] = BATCH_FAULT_KINDS
    feedback: dict = field(default_factory=lambda: dict(DEFAULT_FEEDBACK))
    account_sid: str = "ACsandbox"
    auth_token: str = "sandbox-token"
    api_key: str = "sandbox-key"
    # The events feed (/_sandbox/events) takes only `Authorization: Bearer <this>` when
    # set, as a provider's feed would; None: open, as the tests' direct reads expect.
    events_token: str | None = None
    # -- as the real providers behave (docs/providers.md cites each); 0 = off ------------
    latency: float = 0.0  # seconds every API request takes before it is answered
    # Twilio: a created message stays `queued` with `date_sent` null this long, then `sent`.
    queue_seconds: float = 0.0
    # Twilio: a created message shows in the Messages list only this long after creation.
    list_lag: float = 0.0
    # Twilio: 21611 when a `From` already has this many messages queued (None: no limit).
    sender_queue_limit: int | None = None
    # Retry-After of an injected 429 as delay-seconds ("seconds") or an HTTP-date ("date").
    retry_after_form: str = "seconds"
    # A request inside such a window is always counted (`inside_retry_after`); with this
    # it is also refused with another 429, as a provider enforcing its window does.
    refuse_inside_retry_after: bool = False
    # Mailchimp: each batch runs this long, one batch at a time per account.
    batch_seconds: float = 0.0
    # -- feedback pushed as signed webhooks to `winback serve` (sandbox/webhooks.py) -----
    webhook_url: str | None = None  # None: events are only served at /_sandbox/events
    webhook_delay: float = 0.0  # seconds each event is held back
    webhook_duplicate_rate: float = 0.0  # share of events sent twice
    webhook_shuffle: bool = False  # each batch in a random order
    webhook_bad_signature_rate: float = 0.0  # share first sent with a broken signature
    # SendGrid signs with a private key it keeps; winback gets the public key.
    sendgrid_private_key: str = ""
    sendgrid_public_key: str = ""


class ServerBucket:
    """The provider side of a rate limit: a bucket with a burst of a fifth of a second."""

    def __init__(self, rate: float):
        self.rate, self.burst = rate, max(2.0, rate / 5)
        self.tokens, self.updated = self.burst, time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False


class SandboxState:
    def __init__(self, settings: SandboxSettings):
        self.settings = settings
        self.lock = threading.Lock()
        self.attempts: dict[str, int] = defaultdict(int)
        self.messages: list[dict] = []  # every accepted SMS, email and popup entry
        self.by_reference: dict[str, list[dict]] = defaultdict(list)
        self.by_recipient: dict[str, list[dict]] = defaultdict(list)
        self.popup: dict[str, dict] = {}
        self.members: dict[str, dict[str, dict]] = defaultdict(dict)  # list -> hash -> member
        self.member_writes = 0
        self.batches: dict[str, dict] = {}
        self.events: list[dict] = []
        self.counters: dict[str, int] = defaultdict(int)
        self.active = 0
        self.peak_active = 0
        self.request_times: list[float] = []
        self.bucket = ServerBucket(settings.rate_limit) if settings.rate_limit else None
        # Credentials the sandbox accepts now (rotated by POST /_sandbox/credentials).
        self.credentials = {"auth_token": settings.auth_token, "api_key": settings.api_key}
        # provider family -> (when a Retry-After was sent, until when it asked for quiet)
        self.quiet: dict[str, tuple[float, float]] = {}
        self.batch_results_url = ""  # the results host, set when its server starts
        self.last_batch_finish = 0.0
        self.message_seq = 0
        self.sender_queues: dict = {}  # Twilio: sender -> creation times still queued
        self.batch_lock = threading.Lock()  # Mailchimp: one batch runs at a time
        self.results_secret = os.urandom(16)  # signs the results host's presigned URLs

    # -- faults ---------------------------------------------------------------------------

    def fault_for(self, key: str, kinds: tuple[str, ...]) -> str | None:
        with self.lock:
            self.attempts[key] += 1
            attempt = self.attempts[key]
        if unit(self.settings.seed, key, attempt, "fault") >= self.settings.fault_rate:
            return None
        allowed = [k for k in kinds if k in self.settings.faults]
        if not allowed:
            return None
        kind = allowed[int(unit(self.settings.seed, key, attempt, "kind") * len(allowed))]
        with self.lock:
            self.counters[f"fault:{kind}"] += 1
        return kind

    # -- records --------------------------------------------------------------------------

    def accept_message(self, provider: str, reference: str, record: dict) -> dict:
        with self.lock:
            self.message_seq += 1
            record = {"provider": provider, "reference": reference, **record}
            record["seq"] = self.message_seq
            record["created"] = time.time()
            record["accepted_at"] = datetime.now(UTC).isoformat()
            self.messages.append(record)
            self.by_reference[reference].append(record)
            if record.get("to"):
                self.by_recipient[record["to"]].append(record)
            self._feedback_for(record)
        return record

    def _feedback_for(self, record: dict) -> None:
        rates, seed = self.settings.feedback, self.settings.seed
        message_id, provider = record["id"], record["provider"]

        def event(kind: str, **extra) -> None:
            self.events.append(
                {
                    "seq": len(self.events) + 1,
                    "event_id": f"{provider}:{message_id}:{kind}",
                    "provider": provider,
                    "type": kind,
                    "message_id": message_id,
                    "client_reference": record["reference"],
                    "occurred_at": datetime.now(UTC).isoformat(),
                    "created": time.time(),
                    "to": record.get("to"),
                    **extra,
                }
            )

        if provider == "popup":
            return
        delivered = unit(seed, message_id, "delivered") < rates["delivered"]
        if provider == "twilio":
            event("delivered" if delivered else "undelivered")
            if delivered and unit(seed, message_id, "stop") < rates["stop"]:
                word = STOP_WORDS[int(unit(seed, message_id, "word") * len(STOP_WORDS))]
                event("inbound", **{"from": record["to"], "body": word.lower().title()})
            return
        if not delivered:
            event("bounced")
            return
        event("delivered")
        if unit(seed, message_id, "opened") < rates["opened"]:
            event("opened")
            if unit(seed, message_id, "clicked") < rates["clicked"]:
                event("clicked")
        if unit(seed, message_id, "complained") < rates["complained"]:
            event("complained")
        elif unit(seed, message_id, "unsubscribed") < rates["unsubscribed"]:
            event("unsubscribed")

    # -- Retry-After windows -------------------------------------------------------------

    def ask_for_quiet(self, family: str, seconds: float) -> float:
        """Record that `family`'s clients were asked to wait; returns the end (epoch s)."""
        now = time.time()
        with self.lock:
            _, until = self.quiet.get(family, (0.0, 0.0))
            self.quiet[family] = (now, max(until, now + seconds))
            return self.quiet[family][1]

    def inside_quiet(self, family: str) -> float | None:
        """Seconds left if a request arrives inside a window the provider asked to be left
        alone, later than the requests already in flight could have known (latency + 0.5 s,
        room for a busy machine); counted as `inside_retry_after`."""
        now = time.time()
        with self.lock:
            asked_at, until = self.quiet.get(family, (0.0, 0.0))
            if now >= until or now < asked_at + self.settings.latency + 0.5:
                return None
            self.counters["inside_retry_after"] += 1
            return until - now

    def accepted(self) -> dict:
        with self.lock:
            per_reference = {ref: len(found) for ref, found in self.by_reference.items()}
            per_content: dict[str, int] = defaultdict(int)
            for message in self.messages:
                if message.get("body") is not None:
                    per_content[f"{message.get('to')}|{message['body']}"] += 1
            members = {
                list_id: {
                    h: {"status": m["status"], "tags": sorted(m["tags"])} for h, m in found.items()
                }
                for list_id, found in self.members.items()
            }
            return {
                "messages_by_reference": per_reference,
                "messages_by_recipient_and_body": dict(per_content),
                "members": members,
            }

    def stats(self) -> dict:
        with self.lock:
            times = sorted(self.request_times)
            return {
                "counters": dict(self.counters),
                "peak_concurrency": self.peak_active,
                "requests": len(times),
                "first_request": times[0] if times else None,
                "last_request": times[-1] if times else None,
                "messages": len(self.messages),
                "member_writes": self.member_writes,
            }
