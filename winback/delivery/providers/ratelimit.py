"""Client-side rate limiting: a token bucket per provider, a cap on concurrent requests,
and a shared pause when the provider answers 429 with Retry-After."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

# Requests in flight needed to hold a rate is rate x latency (Little's law); the headroom
# absorbs latency jitter so the token bucket, not the connection count, sets the pace.
CONCURRENCY_HEADROOM = 1.5


def concurrency_for(requests_per_second: float, latency_seconds: float) -> int:
    """Connections needed to reach `requests_per_second` when a request takes
    `latency_seconds`: at 100 req/s and 200 ms, 20 are busy; with headroom, 30."""
    return max(1, math.ceil(requests_per_second * latency_seconds * CONCURRENCY_HEADROOM))


@dataclass(frozen=True)
class RateLimits:
    requests_per_second: float
    max_concurrency: int
    timeout_seconds: float = 10.0

    @classmethod
    def derived(
        cls, requests_per_second: float, expected_latency: float, timeout_seconds: float = 10.0
    ) -> RateLimits:
        """Limits whose concurrency follows from the rate and the expected latency."""
        return cls(
            requests_per_second,
            concurrency_for(requests_per_second, expected_latency),
            timeout_seconds,
        )


class TokenBucket:
    """At most `rate` requests per second on average and `burst` at once.

    The bucket starts empty so a run never opens with a burst above the rate, and every
    caller waits for its own token in arrival order. `pause(seconds)` stops all callers
    until then: a Retry-After concerns the account, not one request.
    """

    def __init__(self, rate: float, burst: float | None = None):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self._tokens = 0.0
        self._updated = time.monotonic()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self._tokens = 0.0

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    self._updated = time.monotonic()
                    continue
                self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)


class Limiter:
    """Token bucket plus a semaphore: `async with limiter:` around each request."""

    def __init__(self, limits: RateLimits):
        self.limits = limits
        self.bucket = TokenBucket(limits.requests_per_second)
        self._slots = asyncio.Semaphore(limits.max_concurrency)

    async def __aenter__(self) -> Limiter:
        await self._slots.acquire()
        try:
            await self.bucket.acquire()
        except BaseException:
            self._slots.release()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        self._slots.release()
