"""Twilio's webhooks: message status callbacks and inbound SMS.

Verified as Twilio documents it ("Secure webhooks", twilio.com/docs/usage/webhooks/
webhooks-security): `X-Twilio-Signature` is the base64 HMAC-SHA1, keyed with the account's
auth token, of the full URL Twilio requested followed by every POST parameter, sorted by
name, name then value (a repeated name: its distinct values sorted, as Twilio's own
libraries do). The URL is the public one (`WINBACK_PUBLIC_URL` + path + query), not what
a reverse proxy forwards. During a token rotation both the primary and the secondary
token are accepted.

Status callbacks (`MessageStatus`: queued, sending, sent, delivered, undelivered, failed;
`ErrorCode` when it failed) become `delivered` or `bounced` events of the message; error
21610 ("attempt to send to unsubscribed recipient") is the carrier's opt-out and
suppresses the number. Inbound messages follow Twilio's default opt-out keywords
(Advanced Opt-Out, "Opt-out keywords"): STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT
(and REVOKE, OPTOUT) suppress the number for SMS; START, YES, UNSTOP lift that
suppression (SMS is sent again only where the shop's consent still says yes); HELP and
INFO are recorded. Any other reply is acknowledged and not stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Sequence

from winback.delivery import feedback

SIGNATURE_HEADER = "x-twilio-signature"
START_WORDS = frozenset(("START", "YES", "UNSTOP"))
HELP_WORDS = frozenset(("HELP", "INFO"))
STATUS_EVENTS = {"delivered": "delivered", "undelivered": "bounced", "failed": "bounced"}
# Twilio error 21610: the recipient replied STOP to this sender; the carrier refuses.
UNSUBSCRIBED_RECIPIENT = "21610"


def expected_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    values: dict[str, set[str]] = {}
    for name, value in params:
        values.setdefault(name, set()).add(value)
    data = url + "".join(name + value for name in sorted(values) for value in sorted(values[name]))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def is_genuine(
    auth_tokens: Sequence[str], url: str, params: Sequence[tuple[str, str]], signature: str
) -> bool:
    """Whether `signature` is Twilio's for this request under one of `auth_tokens`."""
    if not signature:
        return False
    return any(
        hmac.compare_digest(expected_signature(token, url, params), signature)
        for token in auth_tokens
        if token
    )


def status_event(form: dict[str, str]) -> dict | None:
    """A status callback as a feedback event, or None for a status that is not news."""
    status = form.get("MessageStatus", "")
    sid = form.get("MessageSid", "")
    if not sid or status not in STATUS_EVENTS:
        return None
    event = {
        "event_id": f"twilio:{sid}:{status}",
        "provider": "twilio",
        "type": STATUS_EVENTS[status],
        "message_id": sid,
    }
    if form.get("ErrorCode") == UNSUBSCRIBED_RECIPIENT and form.get("To"):
        event |= {"type": "unsubscribed", "address": form["To"], "reason": "carrier opt-out"}
    return event


def inbound_event(form: dict[str, str]) -> dict | None:
    """An inbound SMS as a feedback event (stop, start, help), or None for other replies."""
    keyword = (form.get("Body") or "").strip().upper()
    sid, sender = form.get("MessageSid", ""), form.get("From", "")
    if not sid or not sender:
        return None
    base = {"event_id": f"twilio:inbound:{sid}", "provider": "twilio", "address": sender}
    if keyword in feedback.STOP_WORDS:
        return base | {"type": "unsubscribed", "reason": "SMS stop word"}
    if keyword in START_WORDS:
        return base | {"type": "resubscribed"}
    if keyword in HELP_WORDS:
        return base | {"type": "help_requested"}
    return None
