"""SMS in the shape of Twilio's Programmable Messaging API.

One POST per message to `/2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded
(`To`, `From`, `Body`, `StatusCallback`), HTTP basic auth with the account SID and auth
token. Twilio answers 201 with the message resource (`sid` "SM…"), 400 with an error
`code` for a number it will never reach (21211 invalid 'To', 21610 unsubscribed
recipient), 429 (code 20429) with Retry-After when over the account's limits.

Twilio has no client-supplied idempotency key on this endpoint, so the idempotency key
travels in the StatusCallback URL (`?ref=`), and a message whose POST ended unclear is
looked up in the account's message list (`GET …/Messages.json`, Twilio's OpenAPI
`twilio_api_v2010`, operation ListMessage): filtered by `To` (and `From`), every page
followed through `next_page_uri`, matched on the body and on `date_created` (RFC 2822, GMT)
no earlier than a day before the intent. Not by `DateSent`: a message Twilio accepted is
`queued` or `accepted` with `date_sent` null until its sender releases it, which can take
hours (error 21611's page: a sender's queue holds up to 10 hours), so a `DateSent` filter
does not see it.

A lookup that does not find the message is believed only `negative_lookup_trusted_after`
seconds after the request: Twilio documents no bound on how soon a new message is listed,
but it documents one on how long it can stay queued, the `ValidityPeriod` (at most and by
default 36,000 s; a queued message older than that is failed, not sent). So the default
bound is that period plus ten minutes; `extra.lookup_trust_seconds` sets it outright.

Errors about the account or the sender, not the message (401 code 20003 bad credentials,
20005 account not active, 404 20404 on the account's own path, 21212 and 21606 an invalid
`From`, 21611 the sender's queue is full, "slow down") pause the provider for the run;
message-level ones (21211 invalid `To`, 21610 the recipient replied STOP, …) reject the
row for good.

Connection `winback_twilio` (http): login = Account SID, password = auth token,
host = API host; extra: `from` (sender number or messaging service SID),
`status_callback` (URL), `requests_per_second`, `max_concurrency` (default: rate x
`expected_latency_seconds`, 0.3 s), `timeout_seconds`, `validity_period` (sent as
`ValidityPeriod`), `lookup_trust_seconds`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode

import httpx

from winback.delivery.providers import (
    Connection,
    MessageProvider,
    Outcome,
    OutgoingMessage,
    SendResult,
    connection,
)
from winback.delivery.providers.http import classify_response, http_client, transport_error_result
from winback.delivery.providers.ratelimit import RateLimits

CONN_ID = "winback_twilio"
# Twilio's REST API answers in a few hundred milliseconds; at 100 requests per second that
# needs 30-45 connections in flight (rate x latency), not 10.
EXPECTED_LATENCY_SECONDS = 0.3
DEFAULT_LIMITS = RateLimits.derived(100.0, EXPECTED_LATENCY_SECONDS, timeout_seconds=10.0)
# Twilio's `ValidityPeriod`: its default and maximum (OpenAPI, CreateMessage).
MAX_VALIDITY_PERIOD = 36_000
# Beyond the validity period, time for a sent message to reach the list.
LIST_LAG_MARGIN_SECONDS = 600
LOOKUP_PAGE_SIZE = 1000  # the maximum PageSize
# Errors about the account or the sender (Twilio's error dictionary): pause, never reject.
ACCOUNT_LEVEL_CODES = frozenset({20003, 20005, 20404, 21212, 21606, 21611})


class TwilioSms(MessageProvider):
    name = "twilio"
    can_lookup = True

    def __init__(
        self,
        base_url: str,
        account_sid: str,
        auth_token: str,
        sender: str,
        status_callback: str | None = None,
        limits: RateLimits = DEFAULT_LIMITS,
        validity_period: int | None = None,
        lookup_trust_seconds: float | None = None,
    ):
        self.limits = limits
        self.account_sid = account_sid
        self.sender = sender
        self.status_callback = status_callback
        self.validity_period = validity_period
        if lookup_trust_seconds is None:
            validity = validity_period or MAX_VALIDITY_PERIOD
            lookup_trust_seconds = validity + LIST_LAG_MARGIN_SECONDS
        self.negative_lookup_trusted_after = float(lookup_trust_seconds)
        self._client = http_client(base_url, limits, auth=(account_sid, auth_token))

    @classmethod
    def from_connection(cls, conn: Connection | None = None) -> TwilioSms:
        conn = conn or connection(CONN_ID)
        sender = conn.extra.get("from") or conn.extra.get("messaging_service_sid")
        if not (conn.login and conn.password and sender):
            raise ValueError(f"{conn.conn_id}: needs login (Account SID), password and extra.from")
        validity = conn.extra.get("validity_period")
        trust = conn.extra.get("lookup_trust_seconds")
        return cls(
            conn.base_url,
            conn.login,
            conn.password,
            str(sender),
            conn.extra.get("status_callback"),
            conn.limits(DEFAULT_LIMITS, EXPECTED_LATENCY_SECONDS),
            int(validity) if validity else None,
            float(trust) if trust is not None else None,
        )

    @property
    def _messages_path(self) -> str:
        return f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"

    async def send(self, message: OutgoingMessage) -> SendResult:
        if not message.to:
            return SendResult(Outcome.REJECTED, reason="no phone number")
        form = {"To": message.to, "Body": message.body}
        form["MessagingServiceSid" if self.sender.startswith("MG") else "From"] = self.sender
        if self.status_callback:
            separator = "&" if "?" in self.status_callback else "?"
            form["StatusCallback"] = (
                f"{self.status_callback}{separator}{urlencode({'ref': message.idempotency_key})}"
            )
        if self.validity_period:
            form["ValidityPeriod"] = str(self.validity_period)
        try:
            response = await self._client.post(self._messages_path, data=form)
        except httpx.TransportError as error:
            return transport_error_result(error)
        return classify_response(
            response,
            id_field="sid",
            account_level_codes=ACCOUNT_LEVEL_CODES,
            account_level_statuses=frozenset({401, 403, 404}),
        )

    async def lookup(self, message: OutgoingMessage, since: datetime) -> SendResult | None:
        """The message if Twilio lists it: same `To` (and `From`), same body, created no
        earlier than a day before `since` (compared in GMT, whatever zone `since` is in)."""
        earliest = since.astimezone(UTC) - timedelta(days=1)
        params = {"To": message.to, "PageSize": LOOKUP_PAGE_SIZE}
        if not self.sender.startswith("MG"):
            params["From"] = self.sender
        url: str | None = self._messages_path
        while url:
            response = await self._client.get(url, params=params)
            response.raise_for_status()
            page = response.json()
            for found in page.get("messages", []):
                if found.get("body") != message.body or found.get("status") in (
                    "failed",
                    "canceled",
                ):
                    continue
                if _gmt(found.get("date_created")) >= earliest:
                    return SendResult(Outcome.ACCEPTED, provider_message_id=found["sid"])
            # `next_page_uri` carries the filters and the page token itself.
            url, params = page.get("next_page_uri"), None
        return None

    async def aclose(self) -> None:
        await self._client.aclose()


def _gmt(rfc2822: str | None) -> datetime:
    """Twilio's `date_created` ("Wed, 18 Nov 2026 21:02:03 +0000"); the epoch if absent."""
    if not rfc2822:
        return datetime(1970, 1, 1, tzinfo=UTC)
    moment = parsedate_to_datetime(rfc2822)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
