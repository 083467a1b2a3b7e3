"""Audience sync in the shape of the Mailchimp Marketing API (v3.0).

Members are keyed by the MD5 of the lower-cased email (`subscriber_hash`); segment
membership is a tag per campaign (`winback:<campaign>`). A change becomes batch
operations, at most `BATCH_SIZE` per `POST /3.0/batches`:

* add: `PUT /lists/{list}/members/{hash}` (an upsert; `status_if_new` is `subscribed`
  only for a contact with newsletter consent, `transactional` otherwise, so no one is
  ever subscribed without it), then `POST /lists/{list}/members/{hash}/tags` active;
* remove: `POST /lists/{list}/members/{hash}/tags` inactive (the contact stays).

A batch runs asynchronously at Mailchimp (`pending`, `preprocessing`, `started`,
`finalizing`, `finished`; at busy times for minutes): `GET /3.0/batches/{id}` until
`finished`, then the per-operation results come as a gzipped tar of JSON at
`response_body_url`, a presigned S3 URL fetched without the API key. The batch's id is
kept with its members (`winback.audience_members.provider_batch_id`) the moment Mailchimp
takes it, so a batch still running when a run stops waiting is polled by the next run,
never posted again. Every
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
import time
import uuid

import httpx

from winback.delivery.providers import (
    AccountRefused,
    AudienceProvider,
    AudienceResult,
    Connection,
    MemberChange,
    connection,
)
from winback.delivery.providers.http import error_reason, http_client, retry_after_seconds
from winback.delivery.providers.ratelimit import Limiter, RateLimits

CONN_ID = "winback_mailchimp"
BATCH_SIZE = 500
# Mailchimp allows 10 simultaneous connections per API key ("Run Async Requests with the
# Batch Endpoint"): a documented cap, so the concurrency is not derived from the rate.
DEFAULT_LIMITS = RateLimits(requests_per_second=10.0, max_concurrency=10, timeout_seconds=30.0)
# Polling a batch: from 0.2 s, growing to 5 s between status requests.
BATCH_POLL_FIRST_SECONDS = 0.2
BATCH_POLL_MAX_SECONDS = 5.0
# How long one run waits for its batches; a batch still running after that is polled by the
# next run (its id is in `winback.audience_members`), never posted again.
DEFAULT_BATCH_WAIT_SECONDS = 600.0


def subscriber_hash(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode()).hexdigest()


class BatchUnclear(Exception):
    """The batch may or may not have run (timeout, 5xx on the POST or its results)."""


class BatchPending(Exception):
    """Mailchimp took the batch and is still running it."""

    def __init__(self, batch_id: str):
        super().__init__(f"batch {batch_id} still running")
        self.batch_id = batch_id


def operation_key(operation_id: str) -> tuple[str, str, str]:
    """(kind, member hash, audience) of an operation id `nonce|kind|hash|audience`."""
    _, kind, member_hash, audience = operation_id.split("|", 3)
    return kind, member_hash, audience


class MailchimpAudience(AudienceProvider):
    name = "mailchimp"

    def __init__(
        self,
        base_url: str,
        api_key: str,
        list_id: str,
        limits=DEFAULT_LIMITS,
        batch_wait_seconds: float = DEFAULT_BATCH_WAIT_SECONDS,
    ):
        self.limits = limits
        self.list_id = list_id
        self.batch_wait_seconds = batch_wait_seconds
        self._client = http_client(f"{base_url}/3.0", limits, auth=("winback", api_key))
        # Batch results live on storage outside the API (a presigned S3 URL at Mailchimp):
        # fetched by a client that carries no credentials, so the API key never goes to
        # another host, and S3 does not refuse a second auth mechanism.
        self._results_client = http_client("", limits)
        self._limiter = Limiter(limits)
        self._known_batches: set[str] = set()

    @classmethod
    def from_connection(cls, conn: Connection | None = None) -> MailchimpAudience:
        conn = conn or connection(CONN_ID)
        if not (conn.password and conn.extra.get("list_id")):
            raise ValueError(f"{conn.conn_id}: needs password (API key) and extra.list_id")
        return cls(
            conn.base_url,
            conn.password,
            str(conn.extra["list_id"]),
            conn.limits(DEFAULT_LIMITS),
            float(conn.extra.get("batch_wait_seconds", DEFAULT_BATCH_WAIT_SECONDS)),
        )

    def _member_path(self, change: MemberChange) -> str:
        return f"/lists/{self.list_id}/members/{subscriber_hash(change.member.email or '')}"

    def operations(self, change: MemberChange, nonce: str = "") -> list[dict]:
        path = self._member_path(change)
        member_hash = subscriber_hash(change.member.email or "")
        tag_status = "active" if change.action == "add" else "inactive"
        tags = {
            "method": "POST",
            "path": f"{path}/tags",
            "operation_id": f"{nonce}|tag|{member_hash}|{change.audience}",
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
            "operation_id": f"{nonce}|upsert|{member_hash}|{change.audience}",
            "body": json.dumps(upsert_body),
        }
        return [upsert, tags]

    async def _request(self, method: str, url: str, **kwargs) -> httpx.Response:
        """One request within the limits; 429 waits Retry-After and tries again; 401 and
        403 refuse the whole account."""
        while True:
            async with self._limiter:
                response = await self._client.request(method, url, **kwargs)
            if response.status_code in (401, 403):
                raise AccountRefused(f"HTTP {response.status_code} {error_reason(response)}")
            if response.status_code != 429:
                return response
            self._limiter.bucket.pause(retry_after_seconds(response))

    async def _batch_results_of(self, batch: dict, wait: float) -> dict[str, tuple[int, str]]:
        """Poll one batch until finished (for at most `wait` seconds) and read its results.

        Raises BatchPending when it is still running: its id is kept, and it is polled
        again later, by this run or the next; a batch Mailchimp took is never posted again.
        """
        deadline = time.monotonic() + wait
        pause = BATCH_POLL_FIRST_SECONDS
        while True:
            if batch.get("status") == "finished":
                archive = await self._results_client.request("GET", batch["response_body_url"])
                if archive.status_code >= 500:
                    raise BatchUnclear(f"HTTP {archive.status_code} fetching batch results")
                archive.raise_for_status()
                return _batch_results(archive.content)
            if time.monotonic() + pause > deadline:
                raise BatchPending(batch["id"])
            await asyncio.sleep(pause)
            pause = min(BATCH_POLL_MAX_SECONDS, pause * 1.5)
            status = await self._request("GET", f"/batches/{batch['id']}")
            if status.status_code < 500:
                status.raise_for_status()
                batch = status.json()

    async def _run_batch(self, operations: list[dict], on_submitted, members) -> dict:
        """operation_id -> (status code, detail) for every operation of one batch."""
        try:
            started = await self._request("POST", "/batches", json={"operations": operations})
            if started.status_code >= 500:
                raise BatchUnclear(f"HTTP {started.status_code} on POST /batches")
            started.raise_for_status()
            try:
                batch = started.json()
                batch_id = batch["id"]
            except (ValueError, KeyError, TypeError) as error:
                raise BatchUnclear("POST /batches answered with an unreadable body") from error
            self._known_batches.add(batch_id)
            if on_submitted is not None:
                on_submitted(members, batch_id)
            return await self._batch_results_of(batch, self.batch_wait_seconds)
        except httpx.TransportError as error:
            raise BatchUnclear(type(error).__name__) from error

    async def _find_batch(self, nonce: str) -> dict[str, tuple[int, str]] | None:
        """After an unclear POST: the results of our batch if Mailchimp has it, else None.

        Mailchimp lists recent batches (`GET /batches`); operation ids carry the
        batch's nonce, so ours is recognised among the finished batches not seen before.
        """
        listing = await self._request("GET", "/batches", params={"count": 1000})
        listing.raise_for_status()
        for batch in listing.json().get("batches", []):
            if batch["id"] in self._known_batches or batch.get("status") != "finished":
                continue
            results = await self._batch_results_of(batch, 0.0)
            self._known_batches.add(batch["id"])  # settled: ours or another caller's
            if any(op.startswith(f"{nonce}|") for op in results):
                return results
        return None

    async def apply(self, changes: list[MemberChange], on_submitted=None) -> AudienceResult:
        """Apply the changes in batches of at most `BATCH_SIZE` operations.

        `on_submitted(changes, batch_id)` is called as soon as Mailchimp took a batch, so
        the caller can keep its id durably before the (possibly long) wait for results.
        """
        result = AudienceResult()
        chunks, operations, members = [], [], []
        for change in changes:
            ops = self.operations(change)
            if len(operations) + len(ops) > BATCH_SIZE:
                chunks.append((operations, members))
                operations, members = [], []
            operations.extend(ops)
            members.append(change)
        if operations:
            chunks.append((operations, members))
        outcomes = await asyncio.gather(
            *(self._apply_chunk(ops, chunk, on_submitted) for ops, chunk in chunks)
        )
        for part in outcomes:
            result.extend(part)
        return result

    async def _apply_chunk(self, operations, members, on_submitted) -> AudienceResult:
        result = AudienceResult()
        nonce = uuid.uuid4().hex[:12]
        for op in operations:
            op["operation_id"] = f"{nonce}{op['operation_id']}"
        try:
            by_operation = await self._run_batch(operations, on_submitted, members)
        except BatchPending as pending:
            result.pending.extend((c, pending.batch_id) for c in members)
            return result
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
        return _outcome(by_operation, members)

    async def resume(self, batch_id: str, changes: list[MemberChange]) -> AudienceResult | None:
        """The outcome of a batch an earlier attempt or run submitted; None when Mailchimp
        no longer knows it (the caller then reads the members back). Changes of a batch
        still running come back as pending."""
        response = await self._request("GET", f"/batches/{batch_id}")
        if response.status_code == 404:
            return None
        if response.status_code >= 500:
            return AudienceResult(pending=[(c, batch_id) for c in changes])
        response.raise_for_status()
        try:
            by_operation = await self._batch_results_of(response.json(), self.batch_wait_seconds)
        except BatchPending:
            return AudienceResult(pending=[(c, batch_id) for c in changes])
        return _outcome(by_operation, changes)

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
        await self._results_client.aclose()


def _outcome(by_operation: dict[str, tuple[int, str]], members: list[MemberChange]):
    """Each change's result from its operations' answers (by kind, member and tag)."""
    answers_by_key = {operation_key(op): answer for op, answer in by_operation.items()}
    result = AudienceResult()
    for change in members:
        member_hash = subscriber_hash(change.member.email or "")
        kinds = ("upsert", "tag") if change.action == "add" else ("tag",)
        answers = [
            answers_by_key.get((kind, member_hash, change.audience), (0, "no result"))
            for kind in kinds
        ]
        failed = [(code, detail) for code, detail in answers if not 200 <= code < 300]
        if not failed:
            result.accepted.append(change)
        elif any(code == 429 or code >= 500 or code == 0 for code, _ in failed):
            result.retry.append((change, "; ".join(f"{c} {d}" for c, d in failed)[:300]))
        else:
            result.rejected.append((change, "; ".join(f"{c} {d}" for c, d in failed)[:300]))
    return result


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
