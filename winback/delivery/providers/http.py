"""What every HTTP provider shares: a pooled client within the limits, and the mapping
of an HTTP answer (or its absence) to an outcome."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

import httpx

from winback.delivery.providers import Outcome, SendResult
from winback.delivery.providers.ratelimit import RateLimits


class ThreadedClient:
    """httpx's blocking client on a pool of `max_concurrency` threads, awaited.

    httpx's asyncio client spends most of its time in its connection pool (measured: 57
    requests per second against 300 for the blocking client in threads on the same
    machine); a provider call is I/O-bound, so threads cost little and keep up with the
    limits a provider grants.
    """

    def __init__(self, base_url: str, limits: RateLimits, **kwargs):
        self._client = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(limits.timeout_seconds),
            limits=httpx.Limits(
                max_connections=limits.max_concurrency,
                max_keepalive_connections=limits.max_concurrency,
            ),
            **kwargs,
        )
        self._threads = ThreadPoolExecutor(
            max_workers=limits.max_concurrency, thread_name_prefix="provider"
        )

    async def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        loop = asyncio.get_running_loop()
        call = functools.partial(self._client.request, method, url, **kwargs)
        return await loop.run_in_executor(self._threads, call)

    async def get(self, url: str, **kwargs) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs) -> httpx.Response:
        return await self.request("POST", url, **kwargs)

    async def aclose(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._client.close()


def http_client(base_url: str, limits: RateLimits, **kwargs) -> ThreadedClient:
    return ThreadedClient(base_url, limits, **kwargs)


def retry_after_seconds(response: httpx.Response, default: float = 1.0) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", default)))
    except ValueError:  # an HTTP date: rare from APIs; wait the default
        return default


def classify_response(response: httpx.Response, id_field: str) -> SendResult:
    """2xx accepted; 429 retry after; 5xx unclear (the provider may have acted); other
    4xx rejected with the provider's own code and message."""
    status = response.status_code
    if 200 <= status < 300:
        return SendResult(Outcome.ACCEPTED, provider_message_id=str(response.json()[id_field]))
    if status == 429:
        return SendResult(
            Outcome.RETRY, reason="429 rate limited", retry_after=retry_after_seconds(response)
        )
    if status >= 500:
        return SendResult(Outcome.UNCLEAR, reason=f"HTTP {status}")
    return SendResult(Outcome.REJECTED, reason=error_reason(response))


def error_reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    code = body.get("code") or body.get("title") or ""
    detail = body.get("message") or body.get("detail") or ""
    return f"HTTP {response.status_code} {code}: {detail}".strip()


def transport_error_result(error: httpx.TransportError) -> SendResult:
    """No answer. If the request never left (connect failure, no free connection), it
    was certainly not accepted; otherwise it may have been."""
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return SendResult(Outcome.RETRY, reason=type(error).__name__)
    return SendResult(Outcome.UNCLEAR, reason=type(error).__name__)
