"""The shop's popup webhook: winback's own small contract, not a third party's.

`POST /popup/entries` with an `Idempotency-Key` header (required: 400 without it) is
idempotent on that key, as the IETF draft "The Idempotency-Key HTTP Header Field"
describes; `GET /popup/entries/{key}` answers 200 with the entry or 404.
"""

from __future__ import annotations

import json
import uuid

from winback.simulation.sandbox.base import BaseHandler
from winback.simulation.sandbox.state import FAULT_KINDS


class PopupRoutes(BaseHandler):
    def popup_create(self, parts, query):
        state = self.state
        entry = json.loads(self._body() or b"{}")
        key = self.headers.get("Idempotency-Key")
        if not key:
            self._send(400, {"status": 400, "detail": "Idempotency-Key header required"})
            return
        kind = state.fault_for(f"popup|{key}", FAULT_KINDS)
        if self._fault_response(kind):
            return
        with state.lock:
            existing = state.popup.get(key)
        if existing is None:  # the endpoint is idempotent on its key, as webhooks should be
            existing = state.accept_message("popup", key, {"id": uuid.uuid4().hex, **entry})
            with state.lock:
                state.popup[key] = existing
        self._after_accept(kind, 201, {"id": existing["id"]})

    def popup_get(self, parts, query):
        entry = self.state.popup.get(parts[2] if len(parts) > 2 else "")
        if entry is None:
            self._send(404, {"status": 404})
        else:
            self._send(200, {"id": entry["id"]})
