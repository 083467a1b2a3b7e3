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

A paced phase the server cannot keep up with is reported, not waited for: what was still
unanswered `--grace` seconds after its window is cancelled, and the phase says
`kept_pace: false` with the rate it achieved, the backlog when its window closed and the
latencies of what was answered; the next phase runs all the same.

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


PACED_CONNECTIONS = 64


async def paced(base: str, rate: float, seconds: float, request, grace: float) -> dict:
    """`request(client, n)` at `rate` per second for `seconds`; latency counted from when
    each was due.

    `PACED_CONNECTIONS` senders take the requests in order, each waiting until its request
    is due: a slow server holds them up and the next requests go out late, which their
    latency shows. (Handing httpx thousands of requests at once instead makes its
    connection pool's queue the bottleneck: its bookkeeping grows with the queue.)
    A server that falls behind is reported, not waited for: the senders are stopped
    `grace` seconds after the window. The phase kept pace when every request was
    answered, none failed, and at most one second's worth was outstanding as the window
    closed. `acknowledged` lists the numbers answered 2xx/3xx, to reconcile what was
    stored.
    """
    latencies, errors, statuses, acknowledged, answered_at = [], 0, {}, [], []
    total = int(rate * seconds)
    numbers = iter(range(total))  # shared: each number goes to one sender
    started = time.monotonic()

    async def sender(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for n in numbers:
            due = started + n / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            try:
                response = await request(client, n)
            except httpx.HTTPError:
                errors += 1
                continue
            now = time.monotonic()
            answered_at.append(now)
            latencies.append((now - due) * 1000)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code < 400:
                acknowledged.append(n)

    limits = httpx.Limits(max_connections=PACED_CONNECTIONS)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        senders = [asyncio.create_task(sender(client)) for _ in range(PACED_CONNECTIONS)]
        _, still_sending = await asyncio.wait(senders, timeout=seconds + grace)
        for task in still_sending:
            task.cancel()
        await asyncio.gather(*still_sending, return_exceptions=True)
    window_end = started + seconds
    answered_in_window = sum(1 for at in answered_at if at <= window_end)
    unanswered = total - len(latencies) - errors
    # Every request was due by the end of the window: those not answered (nor failed) by
    # then were the backlog.
    backlog = max(0, total - answered_in_window - errors)
    return {
        "requests": total,
        "answered": len(latencies),
        "errors": errors,
        "unanswered_after_grace": unanswered,
        "statuses": statuses,
        "achieved_per_second": round(answered_in_window / seconds, 1),
        "backlog_at_window_end": backlog,
        "kept_pace": unanswered == 0 and errors == 0 and backlog <= rate,
        "p50_ms": round(percentile(latencies, 0.50), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies, default=0.0), 1),
        "acknowledged": acknowledged,
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
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds a paced phase waits after its window before it reports the rest",
    )
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

        steady = asyncio.run(paced(base, args.rate, args.seconds, post, args.grace))
        steady_check = reconcile(
            url, "SMpaced", [f"SMpaced{n:010d}" for n in steady.pop("acknowledged")]
        )

        async def tap(client, n):
            return await client.get(f"/r/{n % args.codes:010d}")

        redirects = asyncio.run(paced(base, args.rate, args.seconds, tap, args.grace))
        redirects.pop("acknowledged")
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
        f"ingestion_at_{args.rate:g}_per_s": {**steady, **steady_check},
        f"redirects_at_{args.rate:g}_per_s": redirects,
    }
    print(json.dumps(report, indent=2))
    for phase, figures in (("ingestion", steady), ("redirects", redirects)):
        if not figures["kept_pace"]:
            print(
                f"{phase} did not keep pace with {args.rate:g}/s: "
                f"{figures['achieved_per_second']}/s answered in the window, "
                f"{figures['backlog_at_window_end']} behind at its end, "
                f"{figures['unanswered_after_grace']} unanswered after {args.grace:g} s more",
                file=sys.stderr,
            )
    # Falling behind is a figure; losing or doubling an acknowledged event is a failure.
    checks = (flat_check, steady_check)
    return 0 if all(c["lost"] == 0 and c["doubled"] == 0 for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
