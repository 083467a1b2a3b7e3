"""Provider adapters' own rules: hashing and normalization, rate limits."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import time

import pytest

from winback.delivery.providers import Member, MemberChange
from winback.delivery.providers.mailchimp import subscriber_hash
from winback.delivery.providers.meta import (
    MetaCustomAudienceFile,
    hashed_identifiers,
    normalize_email,
    normalize_phone,
)
from winback.delivery.providers.ratelimit import Limiter, RateLimits, TokenBucket


def test_meta_normalizes_as_documented_and_hashes_with_sha256():
    assert normalize_email("  John.Doe@Example.COM ") == "john.doe@example.com"
    assert normalize_phone("+1 (650) 555-1234") == "16505551234"
    assert normalize_phone("0044 20 7946 0958") == "442079460958"
    email_hash, phone_hash = hashed_identifiers(" John.Doe@Example.COM", "+1 650-555-1234")
    assert email_hash == hashlib.sha256(b"john.doe@example.com").hexdigest()
    assert phone_hash == hashlib.sha256(b"16505551234").hexdigest()
    assert hashed_identifiers(None, "12") == ("", "")
    with pytest.raises(ValueError):
        normalize_phone("+1 555")


def test_the_meta_file_holds_hashes_only(tmp_path):
    provider = MetaCustomAudienceFile(tmp_path)
    changes = [
        MemberChange("winback:we miss/you", Member("a", "A@Shop.test", "+16505551234"), "add"),
        MemberChange("winback:we miss/you", Member("b", None, None), "add"),
        MemberChange("winback:we miss/you", Member("c", "c@shop.test", None), "remove"),
    ]
    result = asyncio.run(provider.apply(changes))
    assert [c.member.customer_id for c in result.accepted] == ["a", "c"]
    assert result.rejected[0][0].member.customer_id == "b"
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all("/" not in name and name.endswith(".csv") for name in files)
    text = "".join(p.read_text() for p in tmp_path.iterdir())
    assert "shop.test" not in text.lower() and "6505551234" not in text
    added = next(p for p in tmp_path.iterdir() if "_add_" in p.name)
    rows = list(csv.DictReader(added.open()))
    assert rows == [
        {
            "email": hashlib.sha256(b"a@shop.test").hexdigest(),
            "phone": hashlib.sha256(b"16505551234").hexdigest(),
        }
    ]


def test_mailchimp_keys_members_by_md5_of_the_lowercased_email():
    assert (
        subscriber_hash(" Urist.McVankab@Freddiesjokes.com ")
        == hashlib.md5(b"urist.mcvankab@freddiesjokes.com").hexdigest()
    )


def test_the_token_bucket_holds_the_rate_and_pauses_on_retry_after():
    async def take(bucket: TokenBucket, n: int) -> float:
        start = time.monotonic()
        for _ in range(n):
            await bucket.acquire()
        return time.monotonic() - start

    bucket = TokenBucket(200.0)
    elapsed = asyncio.run(take(bucket, 200))
    assert 0.9 <= elapsed <= 1.3, "200 requests at 200/s take about a second, no burst first"

    async def paused() -> float:
        b = TokenBucket(1000.0)
        b.pause(0.5)
        start = time.monotonic()
        await b.acquire()
        return time.monotonic() - start

    assert asyncio.run(paused()) >= 0.5


def test_the_limiter_caps_concurrent_requests():
    active = peak = 0

    async def request(limiter: Limiter) -> None:
        nonlocal active, peak
        async with limiter:
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.02)
            active -= 1

    async def burst() -> None:
        limiter = Limiter(RateLimits(requests_per_second=10_000.0, max_concurrency=3))
        await asyncio.gather(*(request(limiter) for _ in range(40)))

    asyncio.run(burst())
    assert peak == 3
