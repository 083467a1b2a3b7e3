"""Mailchimp's Marketing API (v3.0): list members, member tags and batch operations.

Each behaviour follows the Mailchimp Marketing API reference (mailchimp.com/developer/
marketing/api/: List Members, List Member Tags, Batch Operations) and its guide "Run Async
Requests with the Batch Endpoint":

* every request authenticates with HTTP Basic, any user name and the API key as the
  password; a wrong key gets 401 "API Key Invalid";
* `PUT /3.0/lists/{list}/members/{subscriber_hash}` upserts a member (`status_if_new`
  applies to a new one; a hash that is not the MD5 of the lower-cased address is a 400),
  `POST …/members/{hash}/tags` sets tags active or inactive (404 for an unknown member),
  `GET …/members/{hash}` reads a member with its tags;
* `POST /3.0/batches` answers at once with the batch (`id`, `status` `pending`); the
  batch then runs in the background, one batch at a time per account ("only one batch
  request is run at a time", Batch Operations: delete), taking `batch_seconds` each:
  `pending`, `started`, then `finished`, when its operations take effect. `GET
  /3.0/batches[/{id}]` reports it; only a finished batch has a `response_body_url`;
* the results are a gzipped tar of JSON, one `{status_code, operation_id, response}` per
  operation, on another host: at Mailchimp a presigned Amazon S3 URL. Like S3 (Amazon S3
  user guide, "Download and upload objects with presigned URLs"), the results host
  checks the URL's `X-Amz-Signature` and `X-Amz-Expires`, and refuses a request that also
  carries an `Authorization` header with 400 `InvalidArgument` "Only one auth mechanism
  allowed" (counted as `results_with_credentials`).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import tarfile
import time
import uuid
from urllib.parse import parse_qs, urlencode, urlsplit

from winback.simulation.sandbox.base import BaseHandler
from winback.simulation.sandbox.state import BATCH_FAULT_KINDS, unit


def apply_member_operation(state, method: str, path: str, body: dict) -> tuple[int, dict]:
    parts = [p for p in path.split("/") if p]
    if len(parts) < 4 or parts[0] != "lists" or parts[2] != "members":
        return 404, {"status": 404, "detail": "no such resource"}
    list_id, member_hash = parts[1], parts[3]
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


def settle_batches(state) -> None:
    """Run every batch whose time has come: its operations take effect, its results are
    kept for the results host."""
    now = time.time()
    with state.batch_lock:
        with state.lock:
            due = [
                (batch_id, batch)
                for batch_id, batch in state.batches.items()
                if batch["results"] is None and batch["finishes"] <= now
            ]
        for _, batch in sorted(due, key=lambda item: item[1]["finishes"]):
            results = []
            for index, op in enumerate(batch["operations"]):
                partial = batch["kind"] == "partial_batch"
                if partial and unit(state.settings.seed, batch["key"], index) < 0.3:
                    status, payload = 503, {"status": 503, "detail": "temporarily unavailable"}
                else:
                    status, payload = apply_member_operation(
                        state, op["method"], op["path"], json.loads(op.get("body") or "{}")
                    )
                results.append(
                    {
                        "status_code": status,
                        "operation_id": op.get("operation_id"),
                        "response": json.dumps(payload),
                    }
                )
            with state.lock:
                batch["errored"] = sum(1 for r in results if r["status_code"] >= 400)
                batch["results"] = results


def results_signature(state, batch_id: str, expires: int) -> str:
    return hmac.new(state.results_secret, f"{batch_id}|{expires}".encode(), "sha256").hexdigest()


class MailchimpRoutes(BaseHandler):
    def _mailchimp_authorized(self) -> bool:
        credentials = self._basic_auth()
        if credentials and credentials[1] == self.state.credentials["api_key"]:
            return True
        with self.state.lock:
            self.state.counters["unauthorized"] += 1
        self._send(
            401,
            {
                "title": "API Key Invalid",
                "status": 401,
                "detail": "Your API key may be invalid, or you've attempted to access the"
                " wrong datacenter.",
            },
        )
        return False

    def mailchimp_put_member(self, parts, query):
        body = json.loads(self._body() or b"{}")
        status, payload = apply_member_operation(self.state, "PUT", "/".join(parts[1:]), body)
        self._send(status, payload)

    def mailchimp_tags(self, parts, query):
        body = json.loads(self._body() or b"{}")
        status, payload = apply_member_operation(self.state, "POST", "/".join(parts[1:]), body)
        self._send(status, payload)

    def mailchimp_get_member(self, parts, query):
        settle_batches(self.state)
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
        if self._fault_response(kind, "mailchimp"):
            return
        batch_id = uuid.uuid4().hex[:10]
        now = time.time()
        with state.lock:
            starts = max(now, state.last_batch_finish)
            finishes = starts + state.settings.batch_seconds
            state.last_batch_finish = finishes
            state.batches[batch_id] = {
                "operations": operations,
                "kind": kind,
                "key": key,
                "submitted": now,
                "starts": starts,
                "finishes": finishes,
                "results": None,
                "errored": 0,
            }
            state.counters["batches_posted"] += 1
            state.counters["batch_operations"] += len(operations)
        settle_batches(state)
        self._after_accept(
            kind, 200, {"id": batch_id, "status": "pending", "total_operations": len(operations)}
        )

    def _batch_resource(self, batch_id: str, batch: dict) -> dict:
        now = time.time()
        total = len(batch["operations"])
        finished = batch["results"] is not None
        if finished:
            status, done = "finished", total
        elif now < batch["starts"]:
            status, done = "pending", 0
        else:
            status = "started"
            share = (now - batch["starts"]) / max(1e-9, batch["finishes"] - batch["starts"])
            done = min(total - 1, int(total * share))
        resource = {
            "id": batch_id,
            "status": status,
            "total_operations": total,
            "finished_operations": done,
            "errored_operations": batch["errored"] if finished else 0,
            "response_body_url": "",
        }
        if finished:
            expires = int(now) + 600
            signature = results_signature(self.state, batch_id, expires)
            resource["response_body_url"] = (
                f"{self.state.batch_results_url}/{batch_id}.tar.gz?"
                + urlencode(
                    {
                        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                        "X-Amz-Expires": expires,
                        "X-Amz-Signature": signature,
                    }
                )
            )
        return resource

    def mailchimp_batch_list(self, parts, query):
        settle_batches(self.state)
        with self.state.lock:
            batches = list(self.state.batches.items())
        count = min(1000, int(query.get("count", 10)))
        offset = int(query.get("offset", 0))
        batches = batches[::-1][offset : offset + count]
        listed = [self._batch_resource(i, b) for i, b in batches]
        self._send(200, {"batches": listed, "total_items": len(batches)})

    def mailchimp_batch_status(self, parts, query):
        settle_batches(self.state)
        batch = self.state.batches.get(parts[2])
        if batch is None:
            self._send(404, {"status": 404, "detail": "no such batch"})
            return
        self._send(200, self._batch_resource(parts[2], batch))


class BatchResultsHandler(BaseHandler):
    """The results host (S3 at Mailchimp): presigned URLs only, never an Authorization."""

    def do_GET(self):
        state = self.state
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        batch_id = url.path.rstrip("/").split("/")[-1].removesuffix(".tar.gz")
        if self.headers.get("Authorization"):
            with state.lock:
                state.counters["results_with_credentials"] += 1
            self._send(
                400,
                raw=b"<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism"
                b" allowed; only the X-Amz-Algorithm query parameter, Signature query string"
                b" parameter or the Authorization header should be specified</Message></Error>",
                content_type="application/xml",
            )
            return
        try:
            expires = int(query.get("X-Amz-Expires", "0"))
        except ValueError:
            expires = 0
        signature = query.get("X-Amz-Signature", "")
        expected = results_signature(state, batch_id, expires)
        if not hmac.compare_digest(signature, expected) or expires < time.time():
            self._send(
                403,
                raw=b"<Error><Code>SignatureDoesNotMatch</Code></Error>",
                content_type="application/xml",
            )
            return
        batch = state.batches.get(batch_id)
        if batch is None or batch["results"] is None:
            self._send(
                404, raw=b"<Error><Code>NoSuchKey</Code></Error>", content_type="application/xml"
            )
            return
        data = json.dumps(batch["results"]).encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            info = tarfile.TarInfo(f"{batch_id}/results.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        self._send(200, raw=buffer.getvalue())
