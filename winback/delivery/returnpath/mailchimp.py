"""Mailchimp's list webhooks: unsubscribes and cleaned addresses.

Mailchimp documents no signature for list webhooks ("Sync audience data with webhooks",
mailchimp.com/developer/marketing/guides/sync-audience-data-webhooks): its advice is a
secret in the webhook URL. winback's is `/webhooks/mailchimp/<secret>`, the secret
(`WINBACK_MAILCHIMP_WEBHOOK_SECRET`, 32 characters or more) compared in constant time.
Mailchimp checks a new webhook URL with a `GET`, which is answered 200. Events are
form-encoded: `type` (subscribe, unsubscribe, profile, upemail, cleaned, campaign),
`fired_at`, and `data[...]` fields such as `data[email]` and `data[list_id]`.
`unsubscribe` and `cleaned` suppress the address for email; the others are acknowledged
and not stored.
"""

from __future__ import annotations

import hashlib
import hmac

SUPPRESSING = {
    "unsubscribe": ("unsubscribed", "unsubscribed in Mailchimp"),
    "cleaned": ("bounced", "cleaned by Mailchimp"),
}


def is_genuine(expected_secret: str, presented: str) -> bool:
    return bool(expected_secret) and hmac.compare_digest(
        expected_secret.encode(), presented.encode()
    )


def list_event(form: dict[str, str]) -> dict | None:
    kind = form.get("type", "")
    email = form.get("data[email]", "")
    if kind not in SUPPRESSING or not email:
        return None
    event_type, reason = SUPPRESSING[kind]
    # No event id in the payload: the event is its type, list, address and time.
    identity = "|".join(
        (kind, form.get("data[list_id]", ""), email.lower(), form.get("fired_at", ""))
    )
    return {
        "event_id": "mailchimp:" + hashlib.sha256(identity.encode()).hexdigest()[:32],
        "provider": "mailchimp",
        "type": event_type,
        "address": email,
        "reason": reason,
    }
