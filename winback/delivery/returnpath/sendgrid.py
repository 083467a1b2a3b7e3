"""Twilio SendGrid's Event Webhook, for email sent over SMTP through SendGrid.

Chosen over Mailgun's because its signature is asymmetric: SendGrid signs with a private
key it keeps and winback holds only the public key (`WINBACK_SENDGRID_WEBHOOK_PUBLIC_KEY`,
the base64 DER key shown under Mail Settings), so nothing in winback's configuration can
forge an event. Verified as "Getting Started with the Event Webhook Security Features"
(twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-
security-features) says: an ECDSA P-256 signature, SHA-256, base64 in
`X-Twilio-Email-Event-Webhook-Signature`, over the `X-Twilio-Email-Event-Webhook-Timestamp`
value followed by the raw request body.

The body is a JSON array of events ("Event Webhook Reference"): `sg_event_id` (the id
events are stored once by), `event`, `email`, `timestamp`, and `smtp-id`, the Message-ID
winback put on the message, which links the event to it. delivered, open, click, bounce
(`type` "bounce" is hard and suppresses the address; "blocked" is soft), deferred (soft),
spamreport and unsubscribe / group_unsubscribe are kept; processed and dropped are not
news about a customer.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature"
TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp"
EVENT_TYPES = {
    "delivered": "delivered",
    "open": "opened",
    "click": "clicked",
    "spamreport": "complained",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
    "deferred": "soft_bounced",
}


def is_genuine(public_key_b64: str, body: bytes, signature_b64: str, timestamp: str) -> bool:
    if not (public_key_b64 and signature_b64 and timestamp):
        return False
    try:
        key = serialization.load_der_public_key(base64.b64decode(public_key_b64))
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, binascii.Error):
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.verify(signature, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def events(payload: object) -> list[dict]:
    """SendGrid's events as feedback events; those that are not news are left out."""
    if not isinstance(payload, list):
        raise ValueError("the Event Webhook posts a JSON array of events")
    kept = []
    for item in payload:
        if not isinstance(item, dict) or not item.get("sg_event_id"):
            continue
        kind = item.get("event")
        if kind == "bounce":
            event_type = "bounced" if item.get("type", "bounce") == "bounce" else "soft_bounced"
        else:
            event_type = EVENT_TYPES.get(kind)
        if event_type is None:
            continue
        occurred = item.get("timestamp")
        kept.append(
            {
                "event_id": f"sendgrid:{item['sg_event_id']}",
                "provider": "sendgrid",
                "type": event_type,
                "message_id": item.get("smtp-id"),
                "address": item.get("email")
                if event_type in ("bounced", "complained", "unsubscribed")
                else None,
                "occurred_at": datetime.fromtimestamp(int(occurred), UTC).isoformat()
                if isinstance(occurred, int | float) or str(occurred).isdigit()
                else None,
            }
        )
    return kept
