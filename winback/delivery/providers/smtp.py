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

Sessions are kept open and reused, one message after another (RFC 5321 3.3: a mail
transaction ends with the reply to DATA, and the next MAIL starts a new one), as ESPs ask
of bulk senders (SendGrid takes up to 5,000 messages per connection; SocketLabs
encourages several, up to 50: docs/providers.md): the TCP and TLS handshakes, the
greeting, EHLO and AUTH are paid once per
`messages_per_connection` messages instead of once per message. A session is dropped
after any doubt about its state: a 421 (the server closes the channel), an error after
DATA, a timeout. A reused session found closed before the message went out (the server's
idle timeout) is replaced once, at no risk: nothing was sent on it.

Connection `winback_smtp` (smtp): host, port, login, password; extra: `from`,
`starttls` (bool), `lookup_url`, `requests_per_second`, `max_concurrency`,
`timeout_seconds`, `messages_per_connection`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import smtplib
import threading
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
# Messages sent on one session before it is closed and a new one opened. Providers cap it
# (SendGrid at 5,000, SocketLabs at 50: docs/providers.md); 100 is nodemailer's pooled
# default, and `extra.messages_per_connection` sets the provider's own figure.
DEFAULT_MESSAGES_PER_CONNECTION = 100


_MESSAGE_ID_PURPOSE = b"winback smtp message-id v1"


def message_id(idempotency_key: str) -> str:
    """The row's Message-ID: deterministic (a lookup after a killed run needs it), keyed."""
    from winback.campaigns import personalization

    key = hmac.new(
        personalization.coupon_secret("dry_run"), _MESSAGE_ID_PURPOSE, hashlib.sha256
    ).digest()
    tag = hmac.new(key, idempotency_key.encode(), hashlib.sha256).hexdigest()[:32]
    return f"<{tag}@winback>"


class _Session:
    """An open SMTP session and how many messages it has carried."""

    def __init__(self, smtp: smtplib.SMTP):
        self.smtp, self.messages = smtp, 0


class _SessionLost(Exception):
    """A reused session was closed before this message's data went out."""


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
        messages_per_connection: int = DEFAULT_MESSAGES_PER_CONNECTION,
    ):
        self.host, self.port, self.sender = host, port, sender
        self._login, self._password, self._starttls = login, password, starttls
        self.lookup_url = lookup_url
        self.can_lookup = bool(lookup_url)
        self.negative_lookup_trusted_after = lookup_trust_seconds
        self.limits = limits
        if messages_per_connection < 1:
            raise ValueError("messages_per_connection must be at least 1")
        self.messages_per_connection = messages_per_connection
        # Idle sessions; the limiter's concurrency caps how many exist at once.
        self._idle: list[_Session] = []
        self._idle_lock = threading.Lock()
        self.sessions_opened = 0

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
            int(conn.extra.get("messages_per_connection", DEFAULT_MESSAGES_PER_CONNECTION)),
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

    def _open(self) -> _Session:
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.limits.timeout_seconds)
        try:
            smtp.ehlo()
            if self._starttls:
                smtp.starttls()
                smtp.ehlo()
            if self._login:
                smtp.login(self._login, self._password or "")
        except BaseException:
            smtp.close()
            raise
        with self._idle_lock:
            self.sessions_opened += 1
        return _Session(smtp)

    def _take(self) -> _Session | None:
        with self._idle_lock:
            return self._idle.pop() if self._idle else None

    def _give_back(self, session: _Session) -> None:
        if session.messages >= self.messages_per_connection:
            _quit(session)
            return
        with self._idle_lock:
            self._idle.append(session)

    def _send_blocking(self, message: OutgoingMessage, data: bytes) -> SendResult:
        session = self._take()
        if session is not None:
            try:
                return self._transaction(session, message, data, reused=True)
            except _SessionLost:
                pass  # closed while idle, before anything of this message went out
        try:
            session = self._open()
        except smtplib.SMTPResponseException as error:  # a refused greeting, EHLO or login
            return _reply_result(error.smtp_code, error.smtp_error)
        except (TimeoutError, smtplib.SMTPException, OSError) as error:
            return SendResult(Outcome.RETRY, reason=type(error).__name__)
        try:
            return self._transaction(session, message, data, reused=False)
        except _SessionLost as lost:
            return SendResult(Outcome.RETRY, reason=str(lost))

    def _transaction(
        self, session: _Session, message: OutgoingMessage, data: bytes, reused: bool
    ) -> SendResult:
        """One mail transaction on `session`; the session goes back to the pool only when
        its state is known to be clean."""
        smtp, data_sent = session.smtp, False
        try:
            code, reply = smtp.mail(self.sender)
            if code == 421 and reused:
                # A server ending an idle session answers the next command with 421 and
                # closes (RFC 5321 3.8, 4.5.3.2.7): nothing of this message was sent.
                _drop(session)
                raise _SessionLost("421 on a reused session")
            if code >= 400:
                return self._refused(session, code, reply)
            code, reply = smtp.rcpt(message.to)
            if code >= 400:
                return self._refused(session, code, reply)
            data_sent = True
            code, reply = smtp.data(data)
            session.messages += 1
            if code == 421:
                _drop(session)  # the server closes the channel after a 421 (RFC 5321 3.8)
            else:
                self._give_back(session)
            if code >= 400:
                return _reply_result(code, reply)
            return SendResult(
                Outcome.ACCEPTED, provider_message_id=message_id(message.idempotency_key)
            )
        except smtplib.SMTPResponseException as error:  # a reply outside the dialogue above
            _drop(session)
            if error.smtp_code == 421 and reused and not data_sent:
                raise _SessionLost(type(error).__name__) from error
            return _reply_result(error.smtp_code, error.smtp_error)
        except (TimeoutError, smtplib.SMTPServerDisconnected, OSError) as error:
            _drop(session)
            if data_sent:
                return SendResult(Outcome.UNCLEAR, reason=f"{type(error).__name__} after DATA")
            if reused and not isinstance(error, TimeoutError):
                raise _SessionLost(type(error).__name__) from error
            return SendResult(Outcome.RETRY, reason=type(error).__name__)

    def _refused(self, session: _Session, code: int, reply) -> SendResult:
        """MAIL or RCPT refused: the transaction is abandoned with RSET (RFC 5321 4.1.1.5)
        and the session kept, unless the refusal closes it."""
        if code == 421:
            _drop(session)
        else:
            try:
                session.smtp.rset()
                self._give_back(session)
            except (smtplib.SMTPException, OSError):
                _drop(session)
        return _reply_result(code, reply)

    async def send(self, message: OutgoingMessage) -> SendResult:
        if not message.to:
            return SendResult(Outcome.REJECTED, reason="no email address")
        try:
            # Header values are checked when serialised, not when set. SMTP lines end in
            # CRLF (RFC 5321 2.3.8); smtplib converts bare LFs only in text, so the bytes
            # are made with the SMTP policy's line ends.
            data = self._build(message).as_bytes(policy=SMTP_POLICY)
        except (ValueError, TypeError, UnicodeError) as error:
            # A header the email library refuses (a line break or other vertical space in a
            # rendered subject, an address it cannot parse) is this message's failure: nothing
            # was sent, and no later run can send it either. The reason names the class of
            # problem only, never the value, which may hold customer data.
            return SendResult(
                Outcome.REJECTED, reason=f"message cannot be built: {type(error).__name__}"
            )
        return await asyncio.to_thread(self._send_blocking, message, data)

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
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for session in idle:
            await asyncio.to_thread(_quit, session)


def _quit(session: _Session) -> None:
    try:
        session.smtp.quit()
    except (smtplib.SMTPException, OSError):
        session.smtp.close()


def _drop(session: _Session) -> None:
    session.smtp.close()


def _reply_result(code: int, reply: bytes | str) -> SendResult:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    reason = f"SMTP {code} {text}"[:300]
    if 400 <= code < 500:
        return SendResult(Outcome.RETRY, reason=reason)
    return SendResult(Outcome.REJECTED, reason=reason)
