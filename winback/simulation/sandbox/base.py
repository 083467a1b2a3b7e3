"""What every HTTP fake of the sandbox shares: reading a request, answering it, and the
faults that happen before a provider accepts a request or after it did."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler

from winback.simulation.sandbox.state import SandboxState


class BaseHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "winback-sandbox/1"
    state: SandboxState

    def log_message(self, format, *args):  # no request log: it would carry phone numbers
        return

    # -- plumbing -------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload=None, headers: dict | None = None, raw=None):
        data = raw if raw is not None else json.dumps(payload or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "application/gzip")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stall(self) -> None:
        """A timeout as the client sees it: no answer in time, then the connection closes."""
        time.sleep(self.state.settings.timeout_delay)
        self.close_connection = True

    def _fault_response(self, kind: str | None) -> bool:
        """Answer with the fault if it happens before acceptance; True if answered."""
        if kind == "rate_limit":
            self._send(
                429,
                {"code": 20429, "message": "Too Many Requests", "status": 429},
                {"Retry-After": f"{self.state.settings.retry_after:g}"},
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
        else:
            self._send(status, payload)
