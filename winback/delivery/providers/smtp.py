"""Email over SMTP.

Each message carries `Message-ID: <tag@winback>`, the tag an HMAC of the row's
idempotency key under a key derived from the deployment secret (`WINBACK_COUPON_SECRET`):
the same for every attempt, so an ESP's message search finds it and its events (SendGrid's
`smtp-id`) link back to the ledger's `provider_message_id`, yet not computable from public
values by anyone without the secret. SMTP replies are
mapped as the protocol defines them: 2xx after DATA is acceptance, 4xx a temporary
failure (certainly not accepted: send again later), 5xx a permanent one (rejected, with
the server's reply as the reason). A connection lost after the message data went out is
unclear: plain SMTP cannot say whether the message was queued, so the row stays
`unclear` unless the connection names a `lookup_url` (an ESP's message-search endpoint,
queried by Message-ID) that settles it.

Connection `winback_smtp` (smtp): host, port, login, password; extra: `from`,
`starttls` (bool), `lookup_url`, `requests_per_second`, `max_concurrency`,
`timeout_seconds`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import smtplib
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

import httpx

from winback.delivery.providers import (
    Connection,
    MessageProvider,
    Outcome,
    OutgoingMessage,
    SendResult,
    connection,
)
from winback.delivery.providers.ratelimit import RateLimits
from winback.delivery.returnpath import tokens

CONN_ID = "winback_smtp"
# An ESP's message search is fed from its event pipeline, minutes behind the SMTP answer
# (SendGrid's Email Activity, Mailgun's events): "not found" is believed after 15 minutes
# unless `extra.lookup_trust_seconds` says otherwise.
DEFAULT_LOOKUP_TRUST_SECONDS = 900.0
DEFAULT_LIMITS = RateLimits(requests_per_second=20.0, max_concurrency=4, timeout_seconds=30.0)


_MESSAGE_ID_PURPOSE = b"winback smtp message-id v1"


def message_id(idempotency_key: str) -> str:
    """The row's Message-ID: deterministic (a lookup after a killed run needs it), keyed."""
    from winback.campaigns import personalization

    key = hmac.new(
        personalization.coupon_secret("dry_run"), _MESSAGE_ID_PURPOSE, hashlib.sha256
    ).digest()
    tag = hmac.new(key, idempotency_key.encode(), hashlib.sha256).hexdigest()[:32]
    return f"<{tag}@winback>"


class SmtpEmail(MessageProvider):
    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        login: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        lookup_url: str | None = None,
        limits: RateLimits = DEFAULT_LIMITS,
        lookup_trust_seconds: float = DEFAULT_LOOKUP_TRUST_SECONDS,
    ):
        self.host, self.port, self.sender = host, port, sender
        self._login, self._password, self._starttls = login, password, starttls
        self.lookup_url = lookup_url
        self.can_lookup = bool(lookup_url)
        self.negative_lookup_trusted_after = lookup_trust_seconds
        self.limits = limits

    @classmethod
    def from_connection(cls, conn: Connection | None = None) -> SmtpEmail:
        conn = conn or connection(CONN_ID)
        return cls(
            conn.host or "localhost",
            conn.port or 25,
            str(conn.extra.get("from", "winback@localhost")),
            conn.login,
            conn.password,
            str(conn.extra.get("starttls", "")).lower() in ("1", "true", "yes"),
            conn.extra.get("lookup_url"),
            conn.limits(DEFAULT_LIMITS),
            float(conn.extra.get("lookup_trust_seconds", DEFAULT_LOOKUP_TRUST_SECONDS)),
        )

    def _build(self, message: OutgoingMessage) -> EmailMessage:
        email = EmailMessage()
        email["From"] = self.sender
        email["To"] = message.to
        email["Subject"] = message.subject or ""
        email["Message-ID"] = message_id(message.idempotency_key)
        email["X-Winback-Campaign"] = message.campaign_id
        # Every email carries a working opt-out: the one-click headers (RFC 8058) and a
        # link in the text, both to `winback serve`.
        for name, value in tokens.list_unsubscribe_headers(
            message.idempotency_key, self.sender
        ).items():
            email[name] = value
        footer = f"\n\n--\nUnsubscribe: {tokens.unsubscribe_url(message.idempotency_key)}\n"
        email.set_content(message.body + footer)
        return email

    def _send_blocking(self, message: OutgoingMessage, email: EmailMessage) -> SendResult:
        data_sent = False
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.limits.timeout_seconds) as smtp:
                smtp.ehlo()
                if self._starttls:
                    smtp.starttls()
                    smtp.ehlo()
                if self._login:
                    smtp.login(self._login, self._password or "")
                code, reply = smtp.mail(self.sender)
                if code >= 400:
                    return _reply_result(code, reply)
                code, reply = smtp.rcpt(message.to)
                if code >= 400:
                    return _reply_result(code, reply)
                data_sent = True
                # SMTP lines end in CRLF (RFC 5321 2.3.8); smtplib converts bare LFs only
                # in text, so the bytes are made with the SMTP policy's line ends.
                code, reply = smtp.data(email.as_bytes(policy=SMTP_POLICY))
                if code >= 400:
                    return _reply_result(code, reply)
                return SendResult(Outcome.ACCEPTED, provider_message_id=email["Message-ID"])
        except smtplib.SMTPResponseException as error:  # a reply outside the dialogue above
            return _reply_result(error.smtp_code, error.smtp_error)
        except (TimeoutError, smtplib.SMTPServerDisconnected, OSError) as error:
            if data_sent:
                return SendResult(Outcome.UNCLEAR, reason=f"{type(error).__name__} after DATA")
            return SendResult(Outcome.RETRY, reason=type(error).__name__)

    async def send(self, message: OutgoingMessage) -> SendResult:
        if not message.to:
            return SendResult(Outcome.REJECTED, reason="no email address")
        try:
            email = self._build(message)
            email.as_bytes()  # header values are checked when serialised, not when set
        except (ValueError, TypeError, UnicodeError) as error:
            # A header the email library refuses (a line break or other vertical space in a
            # rendered subject, an address it cannot parse) is this message's failure: nothing
            # was sent, and no later run can send it either. The reason names the class of
            # problem only, never the value, which may hold customer data.
            return SendResult(
                Outcome.REJECTED, reason=f"message cannot be built: {type(error).__name__}"
            )
        return await asyncio.to_thread(self._send_blocking, message, email)

    async def lookup(self, message: OutgoingMessage, since: datetime) -> SendResult | None:
        if not self.lookup_url:
            raise RuntimeError("plain SMTP cannot look a message up")
        msg_id = message_id(message.idempotency_key)
        async with httpx.AsyncClient(timeout=self.limits.timeout_seconds) as client:
            response = await client.get(self.lookup_url, params={"message_id": msg_id})
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return SendResult(Outcome.ACCEPTED, provider_message_id=msg_id)

    async def aclose(self) -> None:
        return None


def _reply_result(code: int, reply: bytes | str) -> SendResult:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    reason = f"SMTP {code} {text}"[:300]
    if 400 <= code < 500:
        return SendResult(Outcome.RETRY, reason=reason)
    return SendResult(Outcome.REJECTED, reason=reason)
