"""Signed, opaque tokens for links a customer holds: the unsubscribe link.

A token is `<message reference>.<tag>`: the reference is the outbox row's idempotency
key (a SHA-256 of campaign, step, customer and channel: no customer id in clear), the tag
an HMAC-SHA256 of it under a key derived from the deployment secret
(`WINBACK_COUPON_SECRET`, checked for strength in live mode), truncated to 128 bits. A
token cannot be guessed (the reference alone is not enough) or forged (no key), and it
is compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

from winback.campaigns import personalization

PUBLIC_URL_ENV = "WINBACK_PUBLIC_URL"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8090"
UNSUBSCRIBE_MAILTO_ENV = "WINBACK_UNSUBSCRIBE_MAILTO"
_PURPOSE = b"winback unsubscribe v1"
_REFERENCE = re.compile(r"^[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9_-]{22}$")


def _key() -> bytes:
    # The deployment's secret (the demo's documented one when none is set: a live run
    # without a secret never gets this far, as the campaigns stage refuses to mint codes).
    # A key of its own is derived from it, so a tag never helps with coupon or link codes,
    # which use the same secret for other purposes.
    secret = personalization.coupon_secret("dry_run")
    return hmac.new(secret, _PURPOSE, hashlib.sha256).digest()


def _tag(reference: str) -> str:
    digest = hmac.new(_key(), reference.encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def unsubscribe_token(idempotency_key: str) -> str:
    """The token of the unsubscribe link in the message `idempotency_key`."""
    return f"{idempotency_key}.{_tag(idempotency_key)}"


def verify_unsubscribe_token(token: str) -> str | None:
    """The message reference a genuine token names, or None (malformed or forged)."""
    reference, _, tag = token.partition(".")
    if not _REFERENCE.match(reference) or not _TAG.match(tag):
        return None
    if not hmac.compare_digest(tag, _tag(reference)):
        return None
    return reference


def public_url() -> str:
    """The base customers and providers reach `winback serve` at (`WINBACK_PUBLIC_URL`)."""
    return os.environ.get(PUBLIC_URL_ENV, DEFAULT_PUBLIC_URL).rstrip("/")


def unsubscribe_url(idempotency_key: str) -> str:
    return f"{public_url()}/u/{unsubscribe_token(idempotency_key)}"


def list_unsubscribe_headers(idempotency_key: str, sender: str) -> dict[str, str]:
    """RFC 2369 and RFC 8058 headers: the one-click URL first, then a mailto for clients
    that only do mail (`WINBACK_UNSUBSCRIBE_MAILTO`, else unsubscribe@ the sender's domain)."""
    token = unsubscribe_token(idempotency_key)
    domain = sender.rpartition("@")[2].strip("> ") or "localhost"
    mailbox = os.environ.get(UNSUBSCRIBE_MAILTO_ENV) or f"unsubscribe@{domain}"
    return {
        "List-Unsubscribe": (
            f"<{unsubscribe_url(idempotency_key)}>, "
            f"<mailto:{mailbox}?subject=unsubscribe%20{token}>"
        ),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
