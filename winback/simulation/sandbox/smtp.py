"""An SMTP server (aiosmtpd) and an ESP-style message search by Message-ID.

Replies follow RFC 5321: 250 after DATA is acceptance, a 4yz reply a transient failure
(421 "service not available, closing transmission channel" for throttling, 451 for a
local error), a 5yz reply a permanent one (550 for an unknown mailbox). The message
search (`GET /_sandbox/smtp-messages?message_id=`) stands in for an ESP's API that finds a
message by its `Message-ID` header (RFC 5322).
"""

from __future__ import annotations

from winback.simulation.sandbox.base import BaseHandler
from winback.simulation.sandbox.state import FAULT_KINDS, SandboxState


class SmtpLookupRoutes(BaseHandler):
    def smtp_lookup(self, parts, query):
        found = self.state.by_reference.get(query.get("message_id", ""))
        if found:
            self._send(200, {"message_id": query["message_id"], "accepted": len(found)})
        else:
            self._send(404, {"status": 404})


class SmtpHandler:
    """aiosmtpd handler: accepts mail, records it by Message-ID, injects SMTP faults."""

    def __init__(self, state: SandboxState):
        self.state = state

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # Sessions, not messages: a client that reuses its sessions opens few.
        with self.state.lock:
            self.state.counters["smtp_sessions"] += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if "@" not in address or address.split("@")[-1] in ("invalid", "example.invalid"):
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        import asyncio
        from email import message_from_bytes

        parsed = message_from_bytes(envelope.content)
        reference = "".join(str(parsed.get("Message-ID", "")).split())  # unfold the header
        kind = self.state.fault_for(f"smtp|{reference}", FAULT_KINDS)
        if kind == "rate_limit":
            # A 421 closes the transmission channel (RFC 5321 3.8): once the reply is out.
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.7.0 too many messages, slow down"
        if kind in ("server_error", "unavailable"):
            return "451 4.3.0 temporary failure, try again later"
        if kind == "timeout":
            await asyncio.sleep(self.state.settings.timeout_delay)
            return "451 4.4.2 timeout"
        record = self.state.accept_message(
            "smtp", reference, {"id": reference, "to": envelope.rcpt_tos[0]}
        )
        if kind in ("accepted_then_error", "accepted_then_timeout"):
            await asyncio.sleep(self.state.settings.timeout_delay)
        return f"250 2.0.0 OK queued as {record['accepted_at'][-6:]}"
