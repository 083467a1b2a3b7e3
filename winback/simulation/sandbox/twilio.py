"""Twilio's Programmable Messaging API, as far as winback uses it.

Each behaviour follows Twilio's OpenAPI description of the 2010-04-01 API
(`spec/json/twilio_api_v2010.json` in github.com/twilio/twilio-oai, operations
CreateMessage and ListMessage) or the page of the error it answers with
(www.twilio.com/docs/api/errors/<code>):

* `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, HTTP Basic auth with the
  Account SID and auth token; wrong credentials get 401 code 20003 ("Authenticate",
  error page 20003), another account's path 404 code 20404. It answers 201 with the
  Message resource: `sid` "SM…", `status` `queued` and `date_sent` null (the OpenAPI's
  `date_sent` is nullable: "when Twilio sent the message"), `date_created` in RFC 2822
  GMT. The message stays queued for `queue_seconds`, then is `sent` with its `date_sent`.
* 400 code 21211 for a `To` that is not a valid number; 400 code 21611 when the `From`
  already has `sender_queue_limit` messages queued (error page 21611: "This 'From' number
  has exceeded the maximum number of queued messages", retry after slowing down).
* `GET` on the same path lists messages newest first, filtered by `To`, `From` and
  `DateSent` / `DateSent<` / `DateSent>` (GMT dates, on, on-or-before, on-or-after; a
  message with no `date_sent` matches none of them), `PageSize` 50 by default and at most
  1000, with `next_page_uri` (null on the last page) carrying the filters and a
  `PageToken`. A message is listed only `list_lag` seconds after it was created (Twilio
  does not promise a list in step with creates).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import parse_qs, urlencode, urlsplit

import phonenumbers

from winback.simulation.sandbox.base import BaseHandler
from winback.simulation.sandbox.state import FAULT_KINDS

PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX = 50, 1000


def _rfc2822(epoch: float) -> str:
    """Twilio's date format: "Wed, 18 Nov 2026 21:02:03 +0000" (GMT)."""
    return format_datetime(datetime.fromtimestamp(int(epoch), UTC))


class TwilioRoutes(BaseHandler):
    def _twilio_resource(self, record: dict, now: float) -> dict:
        """The Message resource as it is at `now`: queued, then sent."""
        sent_at = record["created"] + self.state.settings.queue_seconds
        is_sent = now >= sent_at
        return {
            **record["resource"],
            "status": "sent" if is_sent else "queued",
            "date_created": _rfc2822(record["created"]),
            "date_updated": _rfc2822(sent_at if is_sent else record["created"]),
            "date_sent": _rfc2822(sent_at) if is_sent else None,
        }

    def _twilio_authorized(self, parts) -> bool:
        """401 20003 unless the request carries the account's current credentials."""
        state = self.state
        credentials = self._basic_auth()
        expected = (state.settings.account_sid, state.credentials["auth_token"])
        if credentials != expected:
            with state.lock:
                state.counters["unauthorized"] += 1
            self._send(
                401,
                {
                    "code": 20003,
                    "message": "Authenticate",
                    "more_info": "https://www.twilio.com/docs/errors/20003",
                    "status": 401,
                },
            )
            return False
        if parts[2] != state.settings.account_sid:
            self._send(404, {"code": 20404, "message": "account not found", "status": 404})
            return False
        return True

    def _sender_queue_full(self, sender: str, now: float) -> bool:
        state = self.state
        limit = state.settings.sender_queue_limit
        if limit is None:
            return False
        with state.lock:
            queued = state.sender_queues.setdefault(sender, deque())
            while queued and queued[0] + state.settings.queue_seconds <= now:
                queued.popleft()
            if len(queued) < limit:
                queued.append(now)
                return False
            state.counters["sender_queue_full"] += 1
            return True

    def twilio_create(self, parts, query):
        state = self.state
        form = {k: v[-1] for k, v in parse_qs(self._body().decode()).items()}
        if not self._twilio_authorized(parts):
            return
        callback = form.get("StatusCallback", "")
        reference = parse_qs(urlsplit(callback).query).get("ref", [""])[-1] or (
            f"{form.get('To')}|{form.get('Body')}"
        )
        kind = state.fault_for(f"twilio|{reference}", FAULT_KINDS)
        if self._fault_response(kind, "twilio"):
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
        sender = form.get("From") or form.get("MessagingServiceSid") or ""
        now = time.time()
        if self._sender_queue_full(sender, now):
            self._send(
                400,
                {
                    "code": 21611,
                    "status": 400,
                    "message": "This 'From' number has exceeded the maximum number"
                    " of queued messages",
                    "more_info": "https://www.twilio.com/docs/errors/21611",
                },
            )
            return
        sid = "SM" + uuid.uuid4().hex
        resource = {
            "sid": sid,
            "account_sid": state.settings.account_sid,
            "to": to,
            "from": sender,
            "body": form.get("Body", ""),
            "error_code": None,
        }
        record = state.accept_message(
            "twilio",
            reference,
            {"id": sid, "to": to, "body": resource["body"], "resource": resource},
        )
        self._after_accept(kind, 201, self._twilio_resource(record, now))

    def twilio_list(self, parts, query):
        if not self._twilio_authorized(parts):
            return
        state, now = self.state, time.time()
        to, sender = query.get("To"), query.get("From")
        on = (query.get("DateSent") or "")[:10]
        on_or_after = (query.get("DateSent>") or "")[:10]
        on_or_before = (query.get("DateSent<") or "")[:10]
        page_size = min(PAGE_SIZE_MAX, max(1, int(query.get("PageSize", PAGE_SIZE_DEFAULT))))
        token = query.get("PageToken", "")
        before_seq = int(token[2:]) if token.startswith("PA") else None
        with state.lock:
            candidates = list(state.by_recipient.get(to, [])) if to else list(state.messages)
        listed = []
        for record in sorted(candidates, key=lambda r: r["seq"], reverse=True):
            if record["provider"] != "twilio" or record["created"] + state.settings.list_lag > now:
                continue
            if sender and record["resource"]["from"] != sender:
                continue
            if before_seq is not None and record["seq"] >= before_seq:
                continue
            resource = self._twilio_resource(record, now)
            if on or on_or_after or on_or_before:
                if resource["date_sent"] is None:
                    continue  # not sent yet: no date to match
                sent_day = (
                    datetime.fromtimestamp(record["created"] + state.settings.queue_seconds, UTC)
                    .date()
                    .isoformat()
                )
                if (on and sent_day != on) or (on_or_after and sent_day < on_or_after):
                    continue
                if on_or_before and sent_day > on_or_before:
                    continue
            listed.append((record["seq"], resource))
            if len(listed) > page_size:
                break
        page, more = listed[:page_size], len(listed) > page_size
        path = urlsplit(self.path).path
        filters = {k: v for k, v in query.items() if k not in ("Page", "PageToken", "PageSize")}
        page_number = int(query.get("Page", 0))
        next_uri = None
        if more:
            next_query = {
                **filters,
                "PageSize": page_size,
                "Page": page_number + 1,
                "PageToken": f"PA{page[-1][0]}",
            }
            next_uri = f"{path}?{urlencode(next_query)}"
        self._send(
            200,
            {
                "messages": [resource for _, resource in page],
                "page": page_number,
                "page_size": page_size,
                "start": page_number * page_size,
                "end": page_number * page_size + max(0, len(page) - 1),
                "uri": self.path,
                "first_page_uri": f"{path}?{urlencode({**filters, 'PageSize': page_size})}",
                "next_page_uri": next_uri,
                "previous_page_uri": None,
            },
        )
