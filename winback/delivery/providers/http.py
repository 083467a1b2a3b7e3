"""What every HTTP provider shares: a pooled client within the limits, and the mapping
of an HTTP answer (or its absence) to an outcome."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

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
    """The wait a `Retry-After` asks for, in seconds from now.

    RFC 9110 section 10.2.3: `Retry-After = HTTP-date / delay-seconds`, so both
    `Retry-After: 120` and `Retry-After: Fri, 31 Dec 1999 23:59:59 GMT` are valid; a date
    is a wall-clock moment (GMT), turned into the seconds left until then. A missing or
    unreadable value waits `default`.
    """
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return default
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return default
    if moment.tzinfo is None:  # RFC 9110 dates are GMT
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


# Answers about the account or its credentials, never about one message (RFC 9110: 401
# the credentials are not valid, 403 refused for this client): no other message would
# fare better, so the provider is paused for the run.
ACCOUNT_LEVEL_STATUSES = frozenset({401, 403})


def classify_response(
    response: httpx.Response,
    id_field: str,
    account_level_codes: frozenset[int] = frozenset(),
    account_level_statuses: frozenset[int] = ACCOUNT_LEVEL_STATUSES,
) -> SendResult:
    """2xx accepted (unclear if its body cannot be read); 429 retry after; 5xx unclear
    (the provider may have acted); 401/403, the given statuses and the provider's
    account- or sender-level error codes pause the provider; other 4xx rejected with the
    provider's own code and message."""
    status = response.status_code
    if 200 <= status < 300:
        try:
            message_id = response.json()[id_field]
        except (ValueError, KeyError, TypeError):
            # Accepted by the status line, but the id is unreadable (a body cut short): the
            # provider may well have the message, so it is looked up, never resent blindly.
            return SendResult(Outcome.UNCLEAR, reason=f"HTTP {status} with an unreadable body")
        return SendResult(Outcome.ACCEPTED, provider_message_id=str(message_id))
    if status == 429:
        return SendResult(
            Outcome.RETRY, reason="429 rate limited", retry_after=retry_after_seconds(response)
        )
    if status >= 500:
        return SendResult(Outcome.UNCLEAR, reason=f"HTTP {status}")
    if status in account_level_statuses or error_code(response) in account_level_codes:
        return SendResult(
            Outcome.PAUSED,
            reason=error_reason(response),
            retry_after=retry_after_seconds(response, default=0.0),
        )
    return SendResult(Outcome.REJECTED, reason=error_reason(response))


def error_code(response: httpx.Response) -> int | None:
    """The provider's own error code in a JSON error body (Twilio's `code`), if any."""
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        return None
    try:
        return int(code)
    except (TypeError, ValueError):
        return None


def error_reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if not isinstance(body, dict):
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
