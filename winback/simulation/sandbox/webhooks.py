"""The sandbox's feedback, pushed as the real providers push it: signed webhooks.

With `SandboxSettings.webhook_url` set (the base URL of `winback serve`), every event the
sandbox produces for an accepted message is sent there in its provider's own format:

- SMS (Twilio): a status callback, form-encoded, to `/webhooks/twilio/status`
  (`MessageSid`, `MessageStatus` delivered or undelivered with `ErrorCode` 30003), and an
  inbound message to `/webhooks/twilio/inbound` for a STOP reply; both signed with the
  sandbox's auth token as Twilio signs them (`X-Twilio-Signature`, "Secure webhooks");
- email (SMTP): Twilio SendGrid's Event Webhook, a JSON array of events (`sg_event_id`,
  `event`, `email`, `timestamp`, `smtp-id`), signed with ECDSA P-256 over timestamp and
  body under a key pair made for this sandbox ("Event Webhook Security Features"); the
  public key is what winback is configured with.

Like a real provider's, delivery is at least once and not in order: `webhook_delay`
holds every event back, `webhook_duplicate_rate` sends a share twice,
`webhook_shuffle` sends each batch in a random order, and `webhook_bad_signature_rate`
sends a share first with a broken signature (which winback must refuse) and then as
signed. A 5xx or a connection error is retried with backoff, as providers retry.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
from datetime import datetime
from urllib.parse import urlencode

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from winback.delivery.returnpath import sendgrid as sendgrid_format
from winback.delivery.returnpath import twilio as twilio_format

log = logging.getLogger(__name__)

SENDGRID_EVENTS = {
    "delivered": "delivered",
    "opened": "open",
    "clicked": "click",
    "bounced": "bounce",
    "complained": "spamreport",
    "unsubscribed": "unsubscribe",
}
SMS_SENDER = "+15005550006"
MAX_ATTEMPTS = 8


def new_signing_key() -> tuple[str, str]:
    """A SendGrid-style key pair: (private key PEM, public key as base64 DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, base64.b64encode(public).decode()


class WebhookDispatcher:
    """Sends the sandbox's events to `winback serve` from a thread of its own."""

    def __init__(self, state, base_url: str):
        self.state, self.base_url = state, base_url.rstrip("/")
        settings = state.settings
        self.random = random.Random(settings.seed)
        self.signing_key = serialization.load_pem_private_key(
            settings.sendgrid_private_key.encode(), password=None
        )
        self.sent = 0
        self.refused = 0  # deliberately broken signatures, answered 403 as they must be
        self.failed = 0  # given up after MAX_ATTEMPTS
        self.cursor = 0
        self.stopping = threading.Event()
        self.idle = threading.Event()
        self.client = httpx.Client(timeout=10)
        self.thread = threading.Thread(target=self._loop, daemon=True, name="sandbox-webhooks")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.client.close()

    def stats(self) -> dict:
        with self.state.lock:
            pending = len(self.state.events) - self.cursor
        return {
            "sent": self.sent,
            "refused": self.refused,
            "failed": self.failed,
            "pending": pending,
        }

    # -- the loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        settings = self.state.settings
        while not self.stopping.is_set():
            with self.state.lock:
                ready = [
                    e
                    for e in self.state.events[self.cursor :]
                    if time.time() - e["created"] >= settings.webhook_delay
                ]
                # Events are appended in time order: take the ready prefix only.
                batch = self.state.events[self.cursor : self.cursor + len(ready)]
            if not batch:
                self.idle.set()
                self.stopping.wait(0.05)
                continue
            self.idle.clear()
            deliveries = [self._delivery(e) for e in batch]
            deliveries = [d for d in deliveries if d is not None]
            if settings.webhook_shuffle:
                self.random.shuffle(deliveries)
            for delivery in deliveries:
                self._post(*delivery)
                if self.random.random() < settings.webhook_duplicate_rate:
                    self._post(*delivery)  # at least once: some events come twice
            self.cursor += len(batch)

    def _delivery(self, event: dict) -> tuple[str, bytes, dict] | None:
        if event["provider"] == "twilio":
            return self._twilio(event)
        if event["provider"] == "smtp":
            return self._sendgrid(event)
        return None

    def _twilio(self, event: dict) -> tuple[str, bytes, dict]:
        if event["type"] == "inbound":
            path = "/webhooks/twilio/inbound"
            form = {
                "MessageSid": "SM" + event["event_id"].encode().hex()[-32:],
                "AccountSid": self.state.settings.account_sid,
                "From": event["from"],
                "To": SMS_SENDER,
                "Body": event["body"],
            }
        else:
            path = "/webhooks/twilio/status"
            status = "delivered" if event["type"] == "delivered" else "undelivered"
            form = {
                "MessageSid": event["message_id"],
                "AccountSid": self.state.settings.account_sid,
                "MessageStatus": status,
                "To": event.get("to", ""),
                "From": SMS_SENDER,
            }
            if status == "undelivered":
                form["ErrorCode"] = "30003"  # Unreachable destination handset
        token = self.state.credentials["auth_token"]
        signature = twilio_format.expected_signature(
            token, self.base_url + path, list(form.items())
        )
        headers = {
            "content-type": "application/x-www-form-urlencoded",
            twilio_format.SIGNATURE_HEADER: signature,
        }
        return path, urlencode(form).encode(), headers

    def _sendgrid(self, event: dict) -> tuple[str, bytes, dict] | None:
        kind = SENDGRID_EVENTS.get(event["type"])
        if kind is None:
            return None
        occurred = datetime.fromisoformat(event["occurred_at"]).timestamp()
        item = {
            "sg_event_id": event["event_id"],
            "event": kind,
            "email": event.get("to", ""),
            "timestamp": int(occurred),
            "smtp-id": event["message_id"],
        }
        if kind == "bounce":
            item["type"] = "bounce"
        body = json.dumps([item]).encode()
        stamp = str(int(time.time()))
        signature = self.signing_key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        headers = {
            "content-type": "application/json",
            sendgrid_format.SIGNATURE_HEADER: base64.b64encode(signature).decode(),
            sendgrid_format.TIMESTAMP_HEADER: stamp,
        }
        return "/webhooks/sendgrid", body, headers

    def _post(self, path: str, body: bytes, headers: dict) -> None:
        settings = self.state.settings
        if self.random.random() < settings.webhook_bad_signature_rate:
            forged = dict(headers)
            for name in (twilio_format.SIGNATURE_HEADER, sendgrid_format.SIGNATURE_HEADER):
                if name in forged:
                    forged[name] = base64.b64encode(b"forged" * 8).decode()
            response = self._send(path, body, forged)
            if response is not None and response.status_code == 403:
                self.refused += 1
        for attempt in range(MAX_ATTEMPTS):
            response = self._send(path, body, headers)
            if response is not None and response.status_code < 500:
                if response.status_code < 300:
                    self.sent += 1
                else:
                    self.failed += 1
                    log.warning("webhook %s answered %s", path, response.status_code)
                return
            self.stopping.wait(min(0.1 * 2**attempt, 5.0))
        self.failed += 1

    def _send(self, path: str, body: bytes, headers: dict) -> httpx.Response | None:
        try:
            return self.client.post(self.base_url + path, content=body, headers=headers)
        except httpx.HTTPError:
            return None
