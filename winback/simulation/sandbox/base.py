"""What every HTTP fake of the sandbox shares: reading a request, answering it, and the
faults that happen before a provider accepts a request or after it did."""

from __future__ import annotations

import base64
import json
import socket
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler

from winback.simulation.sandbox.state import SandboxState


class BaseHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "winback-sandbox/1"
    state: SandboxState

    def log_message(self, format, *args):  # no request log: it would carry phone numbers
        return

    def setup(self) -> None:
        super().setup()
        # The headers and the body leave in two writes; with Nagle's algorithm the second
        # waits for the client's delayed ACK of the first, 40 ms on Linux, on every
        # keep-alive request: the sandbox answered 23 requests a second per connection.
        # Real API servers disable Nagle; so does this one.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- plumbing -------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        payload=None,
        headers: dict | None = None,
        raw=None,
        content_type: str | None = None,
    ):
        data = raw if raw is not None else json.dumps(payload or {}).encode()
        self.send_response(status)
        if content_type is None:
            content_type = "application/json" if raw is None else "application/gzip"
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stall(self) -> None:
        """A timeout as the client sees it: no answer in time, then the connection closes."""
        time.sleep(self.state.settings.timeout_delay)
        self.close_connection = True

    def _basic_auth(self) -> tuple[str, str] | None:
        """(user, password) of an `Authorization: Basic` header (RFC 7617), if any."""
        header = self.headers.get("Authorization") or ""
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        return user, password

    def _retry_after(self, family: str, seconds: float) -> str:
        """A Retry-After value in the configured form, its window recorded as the
        provider's: RFC 9110 allows delay-seconds or an HTTP-date (IMF-fixdate, GMT)."""
        until = self.state.ask_for_quiet(family, seconds)
        if self.state.settings.retry_after_form == "date":
            # An HTTP-date has whole seconds: round the moment up so the date is not early.
            return formatdate(int(until) + 1, usegmt=True)
        return f"{seconds:g}"

    def _fault_response(self, kind: str | None, family: str = "api") -> bool:
        """Answer with the fault if it happens before acceptance; True if answered."""
        if kind == "rate_limit":
            self._send(
                429,
                {"code": 20429, "message": "Too Many Requests", "status": 429},
                {"Retry-After": self._retry_after(family, self.state.settings.retry_after)},
            )
        elif kind == "server_error":
            self._send(500, {"code": 20500, "message": "Internal Server Error", "status": 500})
        elif kind == "unavailable":
            self._send(503, {"code": 20503, "message": "Service Unavailable", "status": 503})
        elif kind == "timeout":
            self._stall()
        else:
            return False
        return True

    def _after_accept(self, kind: str | None, status: int, payload) -> None:
        if kind == "accepted_then_error":
            self._send(500, {"code": 20500, "message": "Internal Server Error", "status": 500})
        elif kind == "accepted_then_timeout":
            self._stall()
        elif kind == "truncated_body":
            data = json.dumps(payload or {}).encode()
            self._send(status, raw=data[: max(1, len(data) // 2)], content_type="application/json")
        else:
            self._send(status, payload)
