"""Twilio's Programmable Messaging API, as far as winback uses it.

`POST /2010-04-01/Accounts/{AccountSid}/Messages.json` (form-encoded `To`, `From` or
`MessagingServiceSid`, `Body`, `StatusCallback`) answers 201 with the Message resource
(`sid` "SM…", `status` "queued"), 400 with code 21211 for a `To` that is not a valid
number, 404 for another account; `GET` on the same path lists the account's messages,
filtered by `To` and `DateSent>`. Shapes follow Twilio's OpenAPI description of the
2010-04-01 API (`twilio_api_v2010.json` in github.com/twilio/twilio-oai) and its error
dictionary (www.twilio.com/docs/api/errors).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import phonenumbers

from winback.simulation.sandbox.base import BaseHandler
from winback.simulation.sandbox.state import FAULT_KINDS


class TwilioRoutes(BaseHandler):
    def twilio_create(self, parts, query):
        state = self.state
        form = {k: v[-1] for k, v in parse_qs(self._body().decode()).items()}
        if parts[2] != state.settings.account_sid:
            self._send(404, {"code": 20404, "message": "account not found", "status": 404})
            return
        callback = form.get("StatusCallback", "")
        reference = parse_qs(urlsplit(callback).query).get("ref", [""])[-1] or (
            f"{form.get('To')}|{form.get('Body')}"
        )
        kind = state.fault_for(f"twilio|{reference}", FAULT_KINDS)
        if self._fault_response(kind):
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
        sid = "SM" + uuid.uuid4().hex
        now = datetime.now(UTC)
        resource = {
            "sid": sid,
            "account_sid": state.settings.account_sid,
            "to": to,
            "from": form.get("From") or form.get("MessagingServiceSid"),
            "body": form.get("Body", ""),
            "status": "queued",
            "date_created": now.isoformat(),
            "date_sent": now.date().isoformat(),
        }
        state.accept_message("twilio", reference, {"id": sid, "to": to, "resource": resource})
        self._after_accept(kind, 201, resource)

    def twilio_list(self, parts, query):
        to, since = query.get("To"), query.get("DateSent>", "")
        with self.state.lock:
            candidates = self.state.by_recipient.get(to, []) if to else self.state.messages
            found = [
                m["resource"]
                for m in candidates
                if m["provider"] == "twilio" and m["resource"]["date_sent"] >= since
            ]
        self._send(200, {"messages": found[-int(query.get("PageSize", 50)) :]})
