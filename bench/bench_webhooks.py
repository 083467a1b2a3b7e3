"""Benchmark: the return path (`winback serve`) on this machine, over real HTTP.

    .venv/bin/python bench/bench_webhooks.py                 # 60 s flat out, 60 s at 200/s
    .venv/bin/python bench/bench_webhooks.py --seconds 5     # a quick check

1. Ingestion, flat out: `--concurrency` clients post signed Twilio status callbacks
   (form-encoded, `X-Twilio-Signature` checked on every one, each stored and committed
   before its 204) for `--seconds`. Reported: events per second acknowledged.
2. Ingestion at a steady `--rate` (default 200 events/s) for `--seconds`: p50 and p99
   latency, measured from when each request was due (so a queue behind a slow answer
   counts).
3. Redirects at `--rate` requests per second: `GET /r/{code}` over `--codes` tracked links
   (each code's first tap records its click): p50 and p99.

After each ingestion phase the database is counted against what was acknowledged: every
acknowledged event stored (`lost` = 0) and none twice (`doubled` = 0; event ids are the
primary key, so a second copy of one would be a different id). `winback serve` runs as its
own process on 127.0.0.1, on a separate database (`winback_bench_webhooks`) of winback's
server. Every phase is bounded in time; the load average is reported with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from urllib.parse import urlencode

import httpx
import psycopg

from winback.campaigns import personalization
from winback.delivery.returnpath import twilio
from winback.local.ports import free_port
from winback.warehouse import db, tables

BENCH_DB = "winback_bench_webhooks"
AUTH_TOKEN = "bench-auth-token-0123456789abcdef0123"


def prepare(url: str, codes: int) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("drop schema if exists winback cascade")
        tables.ensure_schema(conn)
        links = [
            personalization.TrackedLink(
                f"{n:010d}", "bench", "s1", f"C{n:07d}", "email", "https://shop.example.com/"
            )
            for n in range(codes)
        ]
        personalization.upsert_tracked_links(conn, links)


def start_service(url: str, port: int) -> subprocess.Popen:
    env = dict(os.environ)
    env |= {
        "WINBACK_DATABASE_URL": url,
        "WINBACK_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW_CONN_WINBACK_TWILIO": json.dumps(
            {"conn_type": "http", "login": "ACbench", "password": AUTH_TOKEN}
        ),
    }
    service = subprocess.Popen(
        [sys.executable, "-m", "winback.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return service
        except httpx.HTTPError:
            time.sleep(0.2)
    service.kill()
    raise SystemExit("winback serve did not start")


def callback(base: str, sid: str) -> tuple[bytes, dict]:
    path = "/webhooks/twilio/status"
    form = {
        "MessageSid": sid,
        "MessageStatus": "delivered",
        "AccountSid": "ACbench",
        "To": "+447911123456",
    }
    signature = twilio.expected_signature(AUTH_TOKEN, base + path, list(form.items()))
    headers = {
        "content-type": "application/x-www-form-urlencoded",
        twilio.SIGNATURE_HEADER: signature,
    }
    return urlencode(form).encode(), headers


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


async def flat_out(base: str, prefix: str, seconds: float, concurrency: int) -> dict:
    acknowledged, errors = [], 0
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            sid = f"{prefix}{next(counter):010d}"
            body, headers = callback(base, sid)
            try:
                response = await client.post(
                    "/webhooks/twilio/status", content=body, headers=headers
                )
            except httpx.HTTPError:
                errors += 1
                continue
            if response.status_code == 204:
                acknowledged.append(sid)
            else:
                errors += 1

    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    return {
        "acknowledged": acknowledged,
        "errors": errors,
        "seconds": elapsed,
        "per_second": len(acknowledged) / elapsed,
    }


async def paced(base: str, rate: float, seconds: float, request) -> dict:
    """`request(client, n)` at `rate` per second; latency counted from when each was due."""
    latencies, errors, statuses = [], 0, {}
    total = int(rate * seconds)
    started = time.monotonic()

    async def one(client: httpx.AsyncClient, n: int) -> None:
        nonlocal errors
        due = started + n / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        try:
            response = await request(client, n)
        except httpx.HTTPError:
            errors += 1
            return
        latencies.append((time.monotonic() - due) * 1000)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    async with httpx.AsyncClient(
        base_url=base, timeout=30, limits=httpx.Limits(max_connections=64)
    ) as client:
        await asyncio.wait_for(
            asyncio.gather(*(one(client, n) for n in range(total))), timeout=seconds + 120
        )
    return {
        "requests": total,
        "errors": errors,
        "statuses": statuses,
        "p50_ms": round(percentile(latencies, 0.50), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
    }


def reconcile(url: str, prefix: str, acknowledged: list[str]) -> dict:
    with psycopg.connect(url) as conn:
        stored = {
            row[0]
            for row in conn.execute(
                "select provider_message_id from winback.message_events where event_id like %s",
                (f"twilio:{prefix}%",),
            )
        }
    acked = set(acknowledged)
    return {
        "acknowledged": len(acked),
        "stored": len(stored),
        "lost": len(acked - stored),
        "doubled": len(acknowledged) - len(acked),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--codes", type=int, default=20000)
    args = parser.parse_args()

    server = db.database_url()
    with psycopg.connect(db.with_database(server, "postgres"), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{BENCH_DB}" with (force)')
        conn.execute(f'create database "{BENCH_DB}"')
    url = db.with_database(server, BENCH_DB)
    prepare(url, args.codes)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    service = start_service(url, port)
    try:
        flat = asyncio.run(flat_out(base, "SMflat", args.seconds, args.concurrency))
        flat_check = reconcile(url, "SMflat", flat.pop("acknowledged"))

        async def post(client, n):
            body, headers = callback(base, f"SMpaced{n:010d}")
            return await client.post("/webhooks/twilio/status", content=body, headers=headers)

        steady = asyncio.run(paced(base, args.rate, args.seconds, post))
        with psycopg.connect(url) as conn:
            steady_stored = conn.execute(
                "select count(*) from winback.message_events where event_id like 'twilio:SMpaced%'"
            ).fetchone()[0]
        steady["stored"] = steady_stored

        async def tap(client, n):
            return await client.get(f"/r/{n % args.codes:010d}")

        redirects = asyncio.run(paced(base, args.rate, args.seconds, tap))
    finally:
        service.terminate()
        service.wait(10)
    report = {
        "machine": f"{platform.node()} {os.cpu_count()} cores",
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "ingestion_flat_out": {
            **flat,
            "per_second": round(flat["per_second"], 1),
            "seconds": round(flat["seconds"], 1),
            **flat_check,
        },
        f"ingestion_at_{args.rate:g}_per_s": steady,
        f"redirects_at_{args.rate:g}_per_s": redirects,
    }
    print(json.dumps(report, indent=2))
    ok = flat_check["lost"] == 0 and flat_check["doubled"] == 0
    ok = ok and steady["stored"] == steady["requests"] - steady["errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
