"""SMS in the shape of Twilio's Programmable Messaging API.

One POST per message to `/2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded
(`To`, `From`, `Body`, `StatusCallback`), HTTP basic auth with the account SID and auth
token. Twilio answers 201 with the message resource (`sid` "SM…"), 400 with an error
`code` for a number it will never reach (21211 invalid 'To', 21610 unsubscribed
recipient), 429 (code 20429) with Retry-After when over the account's limits.

Twilio has no client-supplied idempotency key on this endpoint, so the idempotency key
travels in the StatusCallback URL (`?ref=`), and a message whose POST ended unclear is
looked up in the account's message list: same `To`, sent since the intent was recorded,
same body.

Connection `winback_twilio` (http): login = Account SID, password = auth token,
host = API host; extra: `from` (sender number or messaging service SID),
`status_callback` (URL), `requests_per_second`, `max_concurrency`, `timeout_seconds`.
"""

from __future__ import annotations

from datetime import datetime
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
DEFAULT_LIMITS = RateLimits(requests_per_second=100.0, max_concurrency=10, timeout_seconds=10.0)


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
    ):
        self.limits = limits
        self.account_sid = account_sid
        self.sender = sender
        self.status_callback = status_callback
        self._client = http_client(base_url, limits, auth=(account_sid, auth_token))

    @classmethod
    def from_connection(cls, conn: Connection | None = None) -> TwilioSms:
        conn = conn or connection(CONN_ID)
        sender = conn.extra.get("from") or conn.extra.get("messaging_service_sid")
        if not (conn.login and conn.password and sender):
            raise ValueError(f"{conn.conn_id}: needs login (Account SID), password and extra.from")
        return cls(
            conn.base_url,
            conn.login,
            conn.password,
            str(sender),
            conn.extra.get("status_callback"),
            conn.limits(DEFAULT_LIMITS),
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
        try:
            response = await self._client.post(self._messages_path, data=form)
        except httpx.TransportError as error:
            return transport_error_result(error)
        return classify_response(response, id_field="sid")

    async def lookup(self, message: OutgoingMessage, since: datetime) -> SendResult | None:
        params = {"To": message.to, "DateSent>": since.date().isoformat(), "PageSize": 100}
        response = await self._client.get(self._messages_path, params=params)
        response.raise_for_status()
        for found in response.json().get("messages", []):
            if found.get("body") == message.body and found.get("status") not in ("failed",):
                return SendResult(Outcome.ACCEPTED, provider_message_id=found["sid"])
        return None

    async def aclose(self) -> None:
        await self._client.aclose()
