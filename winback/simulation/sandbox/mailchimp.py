"""Mailchimp's Marketing API (v3.0): list members, member tags and batch operations.

`PUT /3.0/lists/{list}/members/{subscriber_hash}` upserts a member (`status_if_new`
applies to a new one; a hash that is not the MD5 of the lower-cased address is a 400),
`POST …/members/{hash}/tags` sets tags active or inactive (404 for an unknown member),
`GET …/members/{hash}` reads a member with its tags. `POST /3.0/batches` takes a list
of operations and answers with the batch (`id`, `status`); `GET /3.0/batches[/{id}]`
reports it, and a finished batch's `response_body_url` points at a gzipped tar of JSON
results, one `{status_code, operation_id, response}` per operation. Shapes follow the
Mailchimp Marketing API reference (mailchimp.com/developer/marketing/api/: List
Members, Member Tags, Batch Operations) and its guide "Run Async Requests with the
Batch Endpoint".
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid

from winback.simulation.sandbox.base import BaseHandler
from winback.simulation.sandbox.state import BATCH_FAULT_KINDS, unit


class MailchimpRoutes(BaseHandler):
    def _apply_member_operation(self, method: str, path: str, body: dict) -> tuple[int, dict]:
        parts = [p for p in path.split("/") if p]
        if len(parts) < 4 or parts[0] != "lists" or parts[2] != "members":
            return 404, {"status": 404, "detail": "no such resource"}
        list_id, member_hash = parts[1], parts[3]
        state = self.state
        with state.lock:
            members = state.members[list_id]
            if len(parts) == 4 and method == "PUT":
                email = (body.get("email_address") or "").strip().lower()
                if "@" not in email or hashlib.md5(email.encode()).hexdigest() != member_hash:
                    return 400, {
                        "status": 400,
                        "title": "Invalid Resource",
                        "detail": "The email address looks fake or invalid.",
                    }
                member = members.get(member_hash)
                if member is None:
                    member = {
                        "status": body.get("status_if_new") or body.get("status"),
                        "tags": set(),
                    }
                    members[member_hash] = member
                elif body.get("status"):
                    member["status"] = body["status"]
                state.member_writes += 1
                return 200, {"id": member_hash, "status": member["status"]}
            if len(parts) == 5 and parts[4] == "tags" and method == "POST":
                member = members.get(member_hash)
                if member is None:
                    return 404, {"status": 404, "detail": "The requested member was not found."}
                for tag in body.get("tags", []):
                    if tag.get("status") == "inactive":
                        member["tags"].discard(tag["name"])
                    else:
                        member["tags"].add(tag["name"])
                state.member_writes += 1
                return 204, {}
        return 405, {"status": 405, "detail": "method not allowed"}

    def mailchimp_put_member(self, parts, query):
        body = json.loads(self._body() or b"{}")
        status, payload = self._apply_member_operation("PUT", "/".join(parts[1:]), body)
        self._send(status, payload)

    def mailchimp_tags(self, parts, query):
        body = json.loads(self._body() or b"{}")
        status, payload = self._apply_member_operation("POST", "/".join(parts[1:]), body)
        self._send(status, payload)

    def mailchimp_get_member(self, parts, query):
        with self.state.lock:
            member = self.state.members[parts[2]].get(parts[4])
            if member is None:
                payload = None
            else:
                payload = {
                    "id": parts[4],
                    "status": member["status"],
                    "tags": [{"name": t} for t in sorted(member["tags"])],
                }
        if payload is None:
            self._send(404, {"status": 404, "detail": "The requested resource could not be found."})
        else:
            self._send(200, payload)

    def mailchimp_batch(self, parts, query):
        state = self.state
        operations = json.loads(self._body() or b"{}").get("operations", [])
        key = (
            "mailchimp-batch|"
            + hashlib.sha256(
                json.dumps([(o["path"], o.get("body")) for o in operations]).encode()
            ).hexdigest()
        )
        kind = state.fault_for(key, BATCH_FAULT_KINDS)
        if self._fault_response(kind):
            return
        results = []
        for index, op in enumerate(operations):
            if kind == "partial_batch" and unit(state.settings.seed, key, index) < 0.3:
                status, payload = 503, {"status": 503, "detail": "temporarily unavailable"}
            else:
                status, payload = self._apply_member_operation(
                    op["method"], op["path"], json.loads(op.get("body") or "{}")
                )
            results.append(
                {
                    "status_code": status,
                    "operation_id": op.get("operation_id"),
                    "response": json.dumps(payload),
                }
            )
        batch_id = uuid.uuid4().hex[:10]
        errored = sum(1 for r in results if r["status_code"] >= 400)
        with state.lock:
            state.batches[batch_id] = {"results": results, "errored": errored}
        self._after_accept(
            kind, 200, {"id": batch_id, "status": "pending", "total_operations": len(operations)}
        )

    def _batch_resource(self, batch_id: str, batch: dict) -> dict:
        return {
            "id": batch_id,
            "status": "finished",
            "total_operations": len(batch["results"]),
            "finished_operations": len(batch["results"]),
            "errored_operations": batch["errored"],
            "response_body_url": (
                f"http://{self.headers.get('Host')}/_sandbox/batch-results/{batch_id}"
            ),
        }

    def mailchimp_batch_list(self, parts, query):
        with self.state.lock:
            batches = list(self.state.batches.items())
        count = int(query.get("count", 10))
        listed = [self._batch_resource(i, b) for i, b in batches[-count:]]
        self._send(200, {"batches": listed, "total_items": len(batches)})

    def mailchimp_batch_status(self, parts, query):
        batch = self.state.batches.get(parts[2])
        if batch is None:
            self._send(404, {"status": 404, "detail": "no such batch"})
            return
        self._send(200, self._batch_resource(parts[2], batch))

    def mailchimp_batch_results(self, parts, query):
        batch = self.state.batches.get(parts[2] if len(parts) > 2 else "")
        if batch is None:
            self._send(404, {"status": 404})
            return
        data = json.dumps(batch["results"]).encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            info = tarfile.TarInfo(f"{parts[2]}/results.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        self._send(200, raw=buffer.getvalue())
