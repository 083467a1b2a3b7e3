"""A local provider sandbox: a real HTTP (and SMTP) server speaking the providers' API
shapes, for tests, the benchmark and the demo.

It speaks Twilio's Messages API, Mailchimp's members, tags and batch operations, a popup
webhook, and (optionally) SMTP with an ESP-style message search. It records every
message and member change it accepted, so a caller can check the sync against the
provider's own record: nothing lost, nothing twice. It injects faults at a set rate,
deterministically from the seed, the request's key and its attempt number:

    rate_limit              429 with Retry-After (SMTP: 421)
    server_error            500, nothing accepted
    unavailable             503, nothing accepted
    timeout                 no answer within the client's timeout, nothing accepted
    accepted_then_error     accepted and recorded, then 500: the duplicate trap
    accepted_then_timeout   accepted and recorded, then no answer in time
    partial_batch           (Mailchimp batches) some operations fail with 503, the rest run

A configured `rate_limit` (requests per second) is enforced like a provider does, with
429s; those are counted apart from the injected ones (`stats()["throttled"]`).

For each accepted message it also produces the engagement feedback a real provider sends
(delivered, opened, clicked, bounced, complained, unsubscribed; SMS delivered or
undelivered and STOP replies) at configurable deterministic rates, readable from
`GET /_sandbox/events?after=<seq>`.

    handle = start_sandbox(fault_rate=0.3, seed=7, rate_limit=200)
    handle.url, handle.accepted(), handle.stats(), handle.stop()
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import socket
import tarfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import phonenumbers

FAULT_KINDS = (
    "rate_limit",
    "server_error",
    "unavailable",
    "timeout",
    "accepted_then_error",
    "accepted_then_timeout",
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


def _unit(*parts) -> float:
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


class _ServerBucket:
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
        self.bucket = _ServerBucket(settings.rate_limit) if settings.rate_limit else None

    # -- faults ---------------------------------------------------------------------------

    def fault_for(self, key: str, kinds: tuple[str, ...]) -> str | None:
        with self.lock:
            self.attempts[key] += 1
            attempt = self.attempts[key]
        if _unit(self.settings.seed, key, attempt, "fault") >= self.settings.fault_rate:
            return None
        allowed = [k for k in kinds if k in self.settings.faults]
        if not allowed:
            return None
        kind = allowed[int(_unit(self.settings.seed, key, attempt, "kind") * len(allowed))]
        with self.lock:
            self.counters[f"fault:{kind}"] += 1
        return kind

    # -- records --------------------------------------------------------------------------

    def accept_message(self, provider: str, reference: str, record: dict) -> dict:
        with self.lock:
            record = {"provider": provider, "reference": reference, **record}
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
                    **extra,
                }
            )

        if provider == "popup":
            return
        delivered = _unit(seed, message_id, "delivered") < rates["delivered"]
        if provider == "twilio":
            event("delivered" if delivered else "undelivered")
            if delivered and _unit(seed, message_id, "stop") < rates["stop"]:
                word = STOP_WORDS[int(_unit(seed, message_id, "word") * len(STOP_WORDS))]
                event("inbound", **{"from": record["to"], "body": word.lower().title()})
            return
        if not delivered:
            event("bounced")
            return
        event("delivered")
        if _unit(seed, message_id, "opened") < rates["opened"]:
            event("opened")
            if _unit(seed, message_id, "clicked") < rates["clicked"]:
                event("clicked")
        if _unit(seed, message_id, "complained") < rates["complained"]:
            event("complained")
        elif _unit(seed, message_id, "unsubscribed") < rates["unsubscribed"]:
            event("unsubscribed")

    def accepted(self) -> dict:
        with self.lock:
            per_reference = {ref: len(found) for ref, found in self.by_reference.items()}
            members = {
                list_id: {
                    h: {"status": m["status"], "tags": sorted(m["tags"])} for h, m in found.items()
                }
                for list_id, found in self.members.items()
            }
            return {"messages_by_reference": per_reference, "members": members}

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "winback-sandbox/1"
    state: SandboxState

    def log_message(self, format, *args):  # no request log: it would carry phone numbers
        return

    # -- plumbing -------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload=None, headers: dict | None = None, raw=None):
        data = raw if raw is not None else json.dumps(payload or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "application/gzip")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stall(self) -> None:
        """A timeout as the client sees it: no answer in time, then the connection closes."""
        time.sleep(self.state.settings.timeout_delay)
        self.close_connection = True

    def _fault_response(self, kind: str | None) -> bool:
        """Answer with the fault if it happens before acceptance; True if answered."""
        if kind == "rate_limit":
            self._send(
                429,
                {"code": 20429, "message": "Too Many Requests", "status": 429},
                {"Retry-After": f"{self.state.settings.retry_after:g}"},
            )
        elif kind == "server_error":
            self._send(500, {"code": 20500, "message": "Internal Server Error", "status": 500})
        elif kind == "unavailable":
            self._send(503, {"code": 20503, "message": "Service Unavailable", "status": 503})
        elif kind == "timeout":
            self._stall()
        else:
            return False
        return True

    def _after_accept(self, kind: str | None, status: int, payload) -> None:
        if kind == "accepted_then_error":
            self._send(500, {"code": 20500, "message": "Internal Server Error", "status": 500})
        elif kind == "accepted_then_timeout":
            self._stall()
        else:
            self._send(status, payload)

    def _dispatch(self, method: str) -> None:
        state = self.state
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        own = parts[:1] == ["_sandbox"]  # the sandbox's own endpoints are not API traffic
        if not own:
            with state.lock:
                state.active += 1
                state.peak_active = max(state.peak_active, state.active)
                state.request_times.append(time.monotonic())
        try:
            if not own and state.bucket and not state.bucket.take():
                with state.lock:
                    state.counters["throttled"] += 1
                self._body()
                self._send(
                    429,
                    {"code": 20429, "message": "Too Many Requests", "status": 429},
                    {"Retry-After": "1"},
                )
                return
            route = self._route(method, parts)
            if route is None:
                self._body()
                self._send(404, {"status": 404, "detail": "no such resource"})
                return
            route(parts, query)
        finally:
            if not own:
                with state.lock:
                    state.active -= 1

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _route(self, method: str, parts: list[str]):
        if parts[:2] == ["2010-04-01", "Accounts"] and len(parts) >= 4:
            if parts[3] == "Messages.json":
                return self.twilio_create if method == "POST" else self.twilio_list
        if parts[:1] == ["3.0"]:
            if parts[1:2] == ["batches"]:
                if method == "POST" and len(parts) == 2:
                    return self.mailchimp_batch
                if method == "GET" and len(parts) == 2:
                    return self.mailchimp_batch_list
                if method == "GET" and len(parts) == 3:
                    return self.mailchimp_batch_status
            if parts[1:2] == ["lists"] and len(parts) >= 5 and parts[3] == "members":
                if len(parts) == 5 and method == "PUT":
                    return self.mailchimp_put_member
                if len(parts) == 5 and method == "GET":
                    return self.mailchimp_get_member
                if len(parts) == 6 and parts[5] == "tags" and method == "POST":
                    return self.mailchimp_tags
        if parts[:2] == ["popup", "entries"]:
            return self.popup_create if method == "POST" else self.popup_get
        if parts[:1] == ["_sandbox"] and method == "GET":
            return {
                "events": self.sandbox_events,
                "accepted": self.sandbox_accepted,
                "stats": self.sandbox_stats,
                "batch-results": self.mailchimp_batch_results,
                "smtp-messages": self.smtp_lookup,
            }.get(parts[1] if len(parts) > 1 else "")
        return None

    # -- Twilio ---------------------------------------------------------------------------

    def twilio_create(self, parts, query):
        state = self.state
        form = {k: v[-1] for k, v in parse_qs(self._body().decode()).items()}
        if parts[2] != state.settings.account_sid:
            self._send(404, {"code": 20404, "message": "account not found", "status": 404})
            return
        callback = form.get("StatusCallback", "")
        reference = parse_qs(urlsplit(callback).query).get("ref", [""])[-1] or (
            f"{form.get('To')}|{form.get('Body')}"
        )
        kind = state.fault_for(f"twilio|{reference}", FAULT_KINDS)
        if self._fault_response(kind):
            return
        to = form.get("To", "")
        try:
            valid = phonenumbers.is_valid_number(phonenumbers.parse(to, None))
        except phonenumbers.NumberParseException:
            valid = False
        if not valid:
            self._send(
                400,
                {
                    "code": 21211,
                    "status": 400,
                    "message": "The 'To' number is not a valid phone number.",
                },
            )
            return
        sid = "SM" + uuid.uuid4().hex
        now = datetime.now(UTC)
        resource = {
            "sid": sid,
            "account_sid": state.settings.account_sid,
            "to": to,
            "from": form.get("From") or form.get("MessagingServiceSid"),
            "body": form.get("Body", ""),
            "status": "queued",
            "date_created": now.isoformat(),
            "date_sent": now.date().isoformat(),
        }
        state.accept_message("twilio", reference, {"id": sid, "to": to, "resource": resource})
        self._after_accept(kind, 201, resource)

    def twilio_list(self, parts, query):
        to, since = query.get("To"), query.get("DateSent>", "")
        with self.state.lock:
            candidates = self.state.by_recipient.get(to, []) if to else self.state.messages
            found = [
                m["resource"]
                for m in candidates
                if m["provider"] == "twilio" and m["resource"]["date_sent"] >= since
            ]
        self._send(200, {"messages": found[-int(query.get("PageSize", 50)) :]})

    # -- Mailchimp ------------------------------------------------------------------------

    def _apply_member_operation(self, method: str, path: str, body: dict) -> tuple[int, dict]:
        parts = [p for p in path.split("/") if p]
        if len(parts) < 4 or parts[0] != "lists" or parts[2] != "members":
            return 404, {"status": 404, "detail": "no such resource"}
        list_id, member_hash = parts[1], parts[3]
        state = self.state
        with state.lock:
            members = state.members[list_id]
            if len(parts) == 4 and method == "PUT":
                email = (body.get("email_address") or "").strip().lower()
                if "@" not in email or hashlib.md5(email.encode()).hexdigest() != member_hash:
                    return 400, {
                        "status": 400,
                        "title": "Invalid Resource",
                        "detail": "The email address looks fake or invalid.",
                    }
                member = members.get(member_hash)
                if member is None:
                    member = {
                        "status": body.get("status_if_new") or body.get("status"),
                        "tags": set(),
                    }
                    members[member_hash] = member
                elif body.get("status"):
                    member["status"] = body["status"]
                state.member_writes += 1
                return 200, {"id": member_hash, "status": member["status"]}
            if len(parts) == 5 and parts[4] == "tags" and method == "POST":
                member = members.get(member_hash)
                if member is None:
                    return 404, {"status": 404, "detail": "The requested member was not found."}
                for tag in body.get("tags", []):
                    if tag.get("status") == "inactive":
                        member["tags"].discard(tag["name"])
                    else:
                        member["tags"].add(tag["name"])
                state.member_writes += 1
                return 204, {}
        return 405, {"status": 405, "detail": "method not allowed"}

    def mailchimp_put_member(self, parts, query):
        body = json.loads(self._body() or b"{}")
        status, payload = self._apply_member_operation("PUT", "/".join(parts[1:]), body)
        self._send(status, payload)

    def mailchimp_tags(self, parts, query):
        body = json.loads(self._body() or b"{}")
        status, payload = self._apply_member_operation("POST", "/".join(parts[1:]), body)
        self._send(status, payload)

    def mailchimp_get_member(self, parts, query):
        with self.state.lock:
            member = self.state.members[parts[2]].get(parts[4])
            if member is None:
                payload = None
            else:
                payload = {
                    "id": parts[4],
                    "status": member["status"],
                    "tags": [{"name": t} for t in sorted(member["tags"])],
                }
        if payload is None:
            self._send(404, {"status": 404, "detail": "The requested resource could not be found."})
        else:
            self._send(200, payload)

    def mailchimp_batch(self, parts, query):
        state = self.state
        operations = json.loads(self._body() or b"{}").get("operations", [])
        key = (
            "mailchimp-batch|"
            + hashlib.sha256(
                json.dumps([(o["path"], o.get("body")) for o in operations]).encode()
            ).hexdigest()
        )
        kind = state.fault_for(key, BATCH_FAULT_KINDS)
        if self._fault_response(kind):
            return
        results = []
        for index, op in enumerate(operations):
            if kind == "partial_batch" and _unit(state.settings.seed, key, index) < 0.3:
                status, payload = 503, {"status": 503, "detail": "temporarily unavailable"}
            else:
                status, payload = self._apply_member_operation(
                    op["method"], op["path"], json.loads(op.get("body") or "{}")
                )
            results.append(
                {
                    "status_code": status,
                    "operation_id": op.get("operation_id"),
                    "response": json.dumps(payload),
                }
            )
        batch_id = uuid.uuid4().hex[:10]
        errored = sum(1 for r in results if r["status_code"] >= 400)
        with state.lock:
            state.batches[batch_id] = {"results": results, "errored": errored}
        self._after_accept(
            kind, 200, {"id": batch_id, "status": "pending", "total_operations": len(operations)}
        )

    def _batch_resource(self, batch_id: str, batch: dict) -> dict:
        return {
            "id": batch_id,
            "status": "finished",
            "total_operations": len(batch["results"]),
            "finished_operations": len(batch["results"]),
            "errored_operations": batch["errored"],
            "response_body_url": (
                f"http://{self.headers.get('Host')}/_sandbox/batch-results/{batch_id}"
            ),
        }

    def mailchimp_batch_list(self, parts, query):
        with self.state.lock:
            batches = list(self.state.batches.items())
        count = int(query.get("count", 10))
        listed = [self._batch_resource(i, b) for i, b in batches[-count:]]
        self._send(200, {"batches": listed, "total_items": len(batches)})

    def mailchimp_batch_status(self, parts, query):
        batch = self.state.batches.get(parts[2])
        if batch is None:
            self._send(404, {"status": 404, "detail": "no such batch"})
            return
        self._send(200, self._batch_resource(parts[2], batch))

    def mailchimp_batch_results(self, parts, query):
        batch = self.state.batches.get(parts[2] if len(parts) > 2 else "")
        if batch is None:
            self._send(404, {"status": 404})
            return
        data = json.dumps(batch["results"]).encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            info = tarfile.TarInfo(f"{parts[2]}/results.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        self._send(200, raw=buffer.getvalue())

    # -- popup webhook --------------------------------------------------------------------

    def popup_create(self, parts, query):
        state = self.state
        entry = json.loads(self._body() or b"{}")
        key = self.headers.get("Idempotency-Key")
        if not key:
            self._send(400, {"status": 400, "detail": "Idempotency-Key header required"})
            return
        kind = state.fault_for(f"popup|{key}", FAULT_KINDS)
        if self._fault_response(kind):
            return
        with state.lock:
            existing = state.popup.get(key)
        if existing is None:  # the endpoint is idempotent on its key, as webhooks should be
            existing = state.accept_message("popup", key, {"id": uuid.uuid4().hex, **entry})
            with state.lock:
                state.popup[key] = existing
        self._after_accept(kind, 201, {"id": existing["id"]})

    def popup_get(self, parts, query):
        entry = self.state.popup.get(parts[2] if len(parts) > 2 else "")
        if entry is None:
            self._send(404, {"status": 404})
        else:
            self._send(200, {"id": entry["id"]})

    # -- sandbox's own endpoints ----------------------------------------------------------

    def sandbox_events(self, parts, query):
        after, limit = int(query.get("after", 0)), int(query.get("limit", 1000))
        with self.state.lock:
            events = self.state.events[after : after + limit]
        self._send(200, {"events": events, "next": after + len(events)})

    def sandbox_accepted(self, parts, query):
        self._send(200, self.state.accepted())

    def sandbox_stats(self, parts, query):
        self._send(200, self.state.stats())

    def smtp_lookup(self, parts, query):
        found = self.state.by_reference.get(query.get("message_id", ""))
        if found:
            self._send(200, {"message_id": query["message_id"], "accepted": len(found)})
        else:
            self._send(404, {"status": 404})


# --------------------------------------------------------------------------- SMTP


class _SmtpHandler:
    """aiosmtpd handler: accepts mail, records it by Message-ID, injects SMTP faults."""

    def __init__(self, state: SandboxState):
        self.state = state

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if "@" not in address or address.split("@")[-1] in ("invalid", "example.invalid"):
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        import asyncio
        from email import message_from_bytes

        parsed = message_from_bytes(envelope.content)
        reference = "".join(str(parsed.get("Message-ID", "")).split())  # unfold the header
        kind = self.state.fault_for(f"smtp|{reference}", FAULT_KINDS)
        if kind == "rate_limit":
            return "421 4.7.0 too many messages, slow down"
        if kind in ("server_error", "unavailable"):
            return "451 4.3.0 temporary failure, try again later"
        if kind == "timeout":
            await asyncio.sleep(self.state.settings.timeout_delay)
            return "451 4.4.2 timeout"
        record = self.state.accept_message(
            "smtp", reference, {"id": reference, "to": envelope.rcpt_tos[0]}
        )
        if kind in ("accepted_then_error", "accepted_then_timeout"):
            await asyncio.sleep(self.state.settings.timeout_delay)
        return f"250 2.0.0 OK queued as {record['accepted_at'][-6:]}"


# --------------------------------------------------------------------------- handles


# What this sandbox takes from one client, declared on the connections it hands out the
# way a user declares what their provider agreed to (docs/providers.md), so the sync's
# limiter paces the demo and the tests as it paces production. The sandbox runs in its
# own process on the same machine: measured on two shared cores (load average ~11) it
# served ~60 SMTP messages/s (one connection per message) and ~190 popup requests/s
# with 16 at once; a quiet machine does several times that. A sandbox started with a
# `rate_limit` declares that rate instead, as a provider's contract would.
LOCAL_LIMITS: dict[str, dict[str, float]] = {
    "smtp": {"requests_per_second": 200, "max_concurrency": 8},
    "twilio": {"requests_per_second": 300, "max_concurrency": 8},
    "popup": {"requests_per_second": 300, "max_concurrency": 8},
    "mailchimp": {"requests_per_second": 50, "max_concurrency": 10},
}


@dataclass
class SandboxHandle:
    url: str
    smtp_port: int | None
    _stop: object
    rate_limit: float | None = None  # requests per second the sandbox enforces, if any

    def stop(self) -> None:
        self._stop()

    def _get(self, path: str) -> dict:
        import httpx

        return httpx.get(f"{self.url}{path}", timeout=60).json()

    def accepted(self) -> dict:
        """What the provider accepted: messages per client reference, members per list."""
        return self._get("/_sandbox/accepted")

    def stats(self) -> dict:
        return self._get("/_sandbox/stats")

    def events(self, after: int = 0) -> list[dict]:
        return self._get(f"/_sandbox/events?after={after}&limit=100000")["events"]

    def declared_limits(self, provider: str) -> dict[str, float]:
        """The `requests_per_second` and `max_concurrency` its connections declare."""
        limits = dict(LOCAL_LIMITS[provider])
        if self.rate_limit:
            limits["requests_per_second"] = min(limits["requests_per_second"], self.rate_limit)
        return limits

    def connections_env(self, list_id: str = "winback-list") -> dict[str, str]:
        """`AIRFLOW_CONN_*` values that point winback's providers at this sandbox, with the
        limits it takes (`declared_limits`)."""
        settings = SandboxSettings()
        env = {
            "AIRFLOW_CONN_WINBACK_TWILIO": json.dumps(
                {
                    "conn_type": "http",
                    "login": settings.account_sid,
                    "password": settings.auth_token,
                    "extra": {
                        "base_url": self.url,
                        "from": "+15005550006",
                        "status_callback": f"{self.url}/_sandbox/twilio-status",
                        **self.declared_limits("twilio"),
                    },
                }
            ),
            "AIRFLOW_CONN_WINBACK_MAILCHIMP": json.dumps(
                {
                    "conn_type": "http",
                    "password": settings.api_key,
                    "extra": {
                        "base_url": self.url,
                        "list_id": list_id,
                        **self.declared_limits("mailchimp"),
                    },
                }
            ),
            "AIRFLOW_CONN_WINBACK_EVENTS": json.dumps(
                {"conn_type": "http", "extra": {"url": f"{self.url}/_sandbox/events"}}
            ),
            "AIRFLOW_CONN_WINBACK_POPUP": json.dumps(
                {
                    "conn_type": "http",
                    "extra": {"base_url": self.url, **self.declared_limits("popup")},
                }
            ),
        }
        if self.smtp_port:
            env["AIRFLOW_CONN_WINBACK_SMTP"] = json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": self.smtp_port,
                    "extra": {
                        "from": "winback@shop.test",
                        "lookup_url": f"{self.url}/_sandbox/smtp-messages",
                        **self.declared_limits("smtp"),
                    },
                }
            )
        return env


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that gives up (timeout) or dies (the kill test) resets its connection:
        # expected here, not worth a traceback.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


def _serve(settings: SandboxSettings, host: str, port: int, smtp: bool):
    state = SandboxState(settings)
    handler = type("Handler", (_Handler,), {"state": state})
    server = _Server((host, port), handler)
    server.daemon_threads = True
    controller = None
    if smtp:
        from aiosmtpd.controller import Controller

        # aiosmtpd logs every envelope at INFO, addresses included: keep them out of logs.
        logging.getLogger("mail.log").setLevel(logging.WARNING)

        # aiosmtpd checks its server by connecting to the port: it needs a real one.
        with socket.socket() as probe:
            probe.bind((host, 0))
            smtp_port = probe.getsockname()[1]
        controller = Controller(_SmtpHandler(state), hostname=host, port=smtp_port)
        controller.start()
    return server, controller


def start_sandbox(
    fault_rate: float = 0.0,
    seed: int = 0,
    rate_limit: float | None = None,
    *,
    smtp: bool = True,
    in_process: bool = False,
    host: str = "127.0.0.1",
    port: int = 0,
    **settings,
) -> SandboxHandle:
    """Start the sandbox in a thread (or, `in_process=True`, a child process so its work
    does not compete with the caller's interpreter lock) and return its handle."""
    config = SandboxSettings(fault_rate=fault_rate, seed=seed, rate_limit=rate_limit, **settings)
    if not in_process:
        server, controller = _serve(config, host, port, smtp)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()

        def stop_thread():
            server.shutdown()
            server.server_close()
            if controller:
                controller.stop()

        smtp_port = controller.port if controller else None
        return SandboxHandle(
            f"http://{host}:{server.server_address[1]}", smtp_port, stop_thread, rate_limit
        )

    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    process = context.Process(
        target=_run_child, args=(config, host, port, smtp, ready), daemon=True
    )
    process.start()
    http_port, smtp_port = ready.get(timeout=60)

    def stop_process():
        process.terminate()
        process.join(10)

    return SandboxHandle(f"http://{host}:{http_port}", smtp_port, stop_process, rate_limit)


def _run_child(config: SandboxSettings, host: str, port: int, smtp: bool, ready) -> None:
    server, controller = _serve(config, host, port, smtp)
    smtp_port = controller.port if controller else None
    ready.put((server.server_address[1], smtp_port))
    server.serve_forever()


def serve_forever(handle: SandboxHandle) -> None:  # pragma: no cover - interactive
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        handle.stop()
