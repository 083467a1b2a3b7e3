"""Audience sync in the shape of the Mailchimp Marketing API (v3.0).

Members are keyed by the MD5 of the lower-cased email (`subscriber_hash`); segment
membership is a tag per campaign (`winback:<campaign>`). A change becomes batch
operations, at most `BATCH_SIZE` per `POST /3.0/batches`:

* add: `PUT /lists/{list}/members/{hash}` (an upsert; `status_if_new` is `subscribed`
  only for a contact with newsletter consent, `transactional` otherwise, so no one is
  ever subscribed without it), then `POST /lists/{list}/members/{hash}/tags` active;
* remove: `POST /lists/{list}/members/{hash}/tags` inactive (the contact stays).

A batch runs asynchronously at Mailchimp: `GET /3.0/batches/{id}` until `finished`, then
the per-operation results come as a gzipped tar of JSON at `response_body_url`. Every
operation is idempotent (upsert, tag state), so applying a change twice equals once; a
batch whose POST ended unclear is still reconciled with `GET /lists/{list}/members/
{hash}` (its tags) before anything is resent.

Connection `winback_mailchimp` (http): host (`<dc>.api.mailchimp.com`), password = API
key; extra: `list_id`, `requests_per_second`, `max_concurrency` (Mailchimp allows 10
simultaneous connections), `timeout_seconds`.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import uuid

import httpx

from winback.delivery.providers import (
    AudienceProvider,
    AudienceResult,
    Connection,
    MemberChange,
    connection,
)
from winback.delivery.providers.http import http_client, retry_after_seconds
from winback.delivery.providers.ratelimit import Limiter, RateLimits

CONN_ID = "winback_mailchimp"
BATCH_SIZE = 500
DEFAULT_LIMITS = RateLimits(requests_per_second=10.0, max_concurrency=10, timeout_seconds=30.0)
BATCH_POLL_SECONDS = 0.2
BATCH_POLL_LIMIT = 300


def subscriber_hash(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode()).hexdigest()


class BatchUnclear(Exception):
    """The batch may or may not have run (timeout, 5xx on the POST or its results)."""


class MailchimpAudience(AudienceProvider):
    name = "mailchimp"

    def __init__(self, base_url: str, api_key: str, list_id: str, limits=DEFAULT_LIMITS):
        self.limits = limits
        self.list_id = list_id
        self._client = http_client(f"{base_url}/3.0", limits, auth=("winback", api_key))
        self._limiter = Limiter(limits)
        self._known_batches: set[str] = set()

    @classmethod
    def from_connection(cls, conn: Connection | None = None) -> MailchimpAudience:
        conn = conn or connection(CONN_ID)
        if not (conn.password and conn.extra.get("list_id")):
            raise ValueError(f"{conn.conn_id}: needs password (API key) and extra.list_id")
        return cls(
            conn.base_url, conn.password, str(conn.extra["list_id"]), conn.limits(DEFAULT_LIMITS)
        )

    def _member_path(self, change: MemberChange) -> str:
        return f"/lists/{self.list_id}/members/{subscriber_hash(change.member.email or '')}"

    def operations(self, index: int, change: MemberChange, nonce: str = "") -> list[dict]:
        path = self._member_path(change)
        tag_status = "active" if change.action == "add" else "inactive"
        tags = {
            "method": "POST",
            "path": f"{path}/tags",
            "operation_id": f"{nonce}:{index}:tag",
            "body": json.dumps({"tags": [{"name": change.audience, "status": tag_status}]}),
        }
        if change.action != "add":
            return [tags]
        # Without newsletter consent a contact may exist (transactional) but is never
        # subscribed to marketing.
        consent = change.member.has_newsletter_consent
        upsert_body = {
            "email_address": change.member.email,
            "status_if_new": "subscribed" if consent else "transactional",
        }
        upsert = {
            "method": "PUT",
            "path": path,
            "operation_id": f"{nonce}:{index}:upsert",
            "body": json.dumps(upsert_body),
        }
        return [upsert, tags]

    async def _request(self, method: str, url: str, **kwargs) -> httpx.Response:
        """One request within the limits; 429 waits Retry-After and tries again."""
        while True:
            async with self._limiter:
                response = await self._client.request(method, url, **kwargs)
            if response.status_code != 429:
                return response
            self._limiter.bucket.pause(retry_after_seconds(response))

    async def _batch_results_of(self, batch: dict) -> dict[str, tuple[int, str]] | None:
        """Poll one batch until finished and read its results; None if it never finishes."""
        for _ in range(BATCH_POLL_LIMIT):
            if batch.get("status") == "finished":
                # The results live on storage outside the API (S3 at Mailchimp): their
                # download does not count against the API's limits.
                archive = await self._client.request("GET", batch["response_body_url"])
                if archive.status_code >= 500:
                    raise BatchUnclear(f"HTTP {archive.status_code} fetching batch results")
                archive.raise_for_status()
                return _batch_results(archive.content)
            status = await self._request("GET", f"/batches/{batch['id']}")
            if status.status_code < 500:
                status.raise_for_status()
                batch = status.json()
            if batch.get("status") != "finished":
                await asyncio.sleep(BATCH_POLL_SECONDS)
        return None

    async def _run_batch(self, operations: list[dict]) -> dict[str, tuple[int, str]]:
        """operation_id -> (status code, detail) for every operation of one batch."""
        try:
            started = await self._request("POST", "/batches", json={"operations": operations})
            if started.status_code >= 500:
                raise BatchUnclear(f"HTTP {started.status_code} on POST /batches")
            started.raise_for_status()
            self._known_batches.add(started.json()["id"])
            results = await self._batch_results_of(started.json())
        except httpx.TransportError as error:
            raise BatchUnclear(type(error).__name__) from error
        if results is None:
            raise BatchUnclear("batch did not finish")
        return results

    async def _find_batch(self, nonce: str) -> dict[str, tuple[int, str]] | None:
        """After an unclear POST: the results of our batch if Mailchimp has it, else None.

        Mailchimp lists recent batches (`GET /batches`); operation ids carry the
        batch's nonce, so ours is recognised among the batches not seen before.
        """
        listing = await self._request("GET", "/batches", params={"count": 1000})
        listing.raise_for_status()
        for batch in listing.json().get("batches", []):
            if batch["id"] in self._known_batches:
                continue
            results = await self._batch_results_of(batch)
            if results is None:
                raise BatchUnclear(f"batch {batch['id']} did not finish")
            if any(op.startswith(f"{nonce}:") for op in results):
                self._known_batches.add(batch["id"])
                return results
            if results:
                self._known_batches.add(batch["id"])  # another caller's, settled
        return None

    async def apply(self, changes: list[MemberChange]) -> AudienceResult:
        result = AudienceResult()
        chunks, operations, members = [], [], []
        for change in changes:
            ops = self.operations(len(members), change)
            if len(operations) + len(ops) > BATCH_SIZE:
                chunks.append((operations, members))
                operations, members = [], []
                ops = self.operations(0, change)
            operations.extend(ops)
            members.append(change)
        if operations:
            chunks.append((operations, members))
        outcomes = await asyncio.gather(
            *(self._apply_chunk(ops, chunk_members) for ops, chunk_members in chunks)
        )
        for part in outcomes:
            result.accepted.extend(part.accepted)
            result.rejected.extend(part.rejected)
            result.retry.extend(part.retry)
        return result

    async def _apply_chunk(self, operations, members: list[MemberChange]) -> AudienceResult:
        result = AudienceResult()
        nonce = uuid.uuid4().hex[:12]
        for op in operations:
            op["operation_id"] = f"{nonce}{op['operation_id']}"
        try:
            by_operation = await self._run_batch(operations)
        except BatchUnclear as error:
            # Never resend before asking: did Mailchimp take the batch after all?
            try:
                by_operation = await self._find_batch(nonce)
            except (BatchUnclear, httpx.HTTPError):
                settled = await self.reconcile(members)  # member by member, slower
                for change in members:
                    if change in settled:
                        result.accepted.append(change)
                    else:
                        result.retry.append((change, f"batch unclear ({error}), not applied"))
                return result
            if by_operation is None:
                result.retry.extend((c, f"batch not taken ({error})") for c in members)
                return result
        for index, change in enumerate(members):
            answers = [
                by_operation.get(f"{nonce}:{index}:{kind}", (0, "no result for the operation"))
                for kind in (("upsert", "tag") if change.action == "add" else ("tag",))
            ]
            failed = [(code, detail) for code, detail in answers if not 200 <= code < 300]
            if not failed:
                result.accepted.append(change)
            elif any(code == 429 or code >= 500 or code == 0 for code, _ in failed):
                result.retry.append((change, "; ".join(f"{c} {d}" for c, d in failed)[:300]))
            else:
                result.rejected.append((change, "; ".join(f"{c} {d}" for c, d in failed)[:300]))
        return result

    async def reconcile(self, changes: list[MemberChange]) -> set[MemberChange]:
        """The changes Mailchimp already reflects (member present with the tag's state)."""

        async def has_effect(change: MemberChange) -> bool:
            response = await self._request("GET", self._member_path(change))
            if response.status_code == 404:
                return change.action == "remove"
            if response.status_code >= 400:
                return False
            tags = {tag["name"] for tag in response.json().get("tags", [])}
            return (change.audience in tags) == (change.action == "add")

        try:
            flags = await asyncio.gather(*(has_effect(change) for change in changes))
        except httpx.TransportError:
            return set()
        return {change for change, done in zip(changes, flags, strict=True) if done}

    async def aclose(self) -> None:
        await self._client.aclose()


def _batch_results(archive: bytes) -> dict[str, tuple[int, str]]:
    results: dict[str, tuple[int, str]] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for item in tar.getmembers():
            if not item.isfile() or not item.name.endswith(".json"):
                continue
            for answer in json.loads(tar.extractfile(item).read()):
                detail = ""
                if not 200 <= answer["status_code"] < 300:
                    try:
                        detail = json.loads(answer.get("response") or "{}").get("detail", "")
                    except ValueError:
                        detail = str(answer.get("response"))[:200]
                results[answer["operation_id"]] = (answer["status_code"], detail)
    return results
