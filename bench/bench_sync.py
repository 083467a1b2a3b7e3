"""Benchmark: provider sync against the sandbox, at a set rate limit, clean and with faults.

    .venv/bin/python bench/bench_sync.py                     # both parts, both settings
    .venv/bin/python bench/bench_sync.py --contacts 100000 --sms 20000

1. Audience sync: `--contacts` customers enter a Mailchimp-shaped audience (a tag per
   campaign): upserts and tags in batch operations of 500, `--audience-rate` requests per
   second (POST /batches, its status and its results each count), 10 connections.
2. SMS: `--sms` Twilio-shaped messages, one POST each, at `--sms-rate` requests per second.

Each part runs twice: without faults, then with `--fault-rate` of the requests failing
(every kind the sandbox injects, chosen at random: 429, 500, 503, timeouts, accepted then
5xx or timeout, partial batches). The sync runs again until nothing is left open (a row
unlucky six times in a run waits for the next run, as in production). The sandbox runs in
its own process and enforces the rate limit itself (429 + Retry-After), so `throttled` >
0 would mean winback exceeded it.

Reported per run: wall time; API requests per second over the provider's busy time as a
fraction of the limit (goal >= 0.9 without faults); goodput (messages or members
acknowledged per second); the peak of concurrent connections; and the check against the
sandbox's own record: every message accepted exactly once (`lost`, `duplicates`), every
member tagged, the ledger agreeing with the provider.

The warehouse is a separate database (`winback_bench_sync`) on winback's server.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date

import psycopg

from winback.campaigns import audiences
from winback.delivery import ledger, sync
from winback.delivery.providers.mailchimp import MailchimpAudience, subscriber_hash
from winback.delivery.providers.ratelimit import RateLimits
from winback.delivery.providers.twilio import TwilioSms
from winback.simulation import sandbox
from winback.warehouse import db

RUN = date(2026, 11, 20)
BENCH_DB = "winback_bench_sync"
MAX_RUNS = 6

FEATURES_DDL = """
drop schema if exists winback cascade;
drop schema if exists marts cascade;
create schema marts;
create table marts.customer_features (
    customer_id text primary key, email text, phone text,
    is_email_subscribed boolean, is_sms_subscribed boolean,
    is_email_suppressed boolean, is_sms_suppressed boolean
);
"""


def bench_database() -> str:
    from winback.local.embedded_pg import ensure_databases

    ensure_databases(db.with_database(db.database_url(), "postgres"), [BENCH_DB])
    return db.with_database(db.database_url(), BENCH_DB)


def phone(i: int) -> str:
    # Valid US numbers: area codes 201-989 with an exchange of 555 and four digits.
    return f"+1{201 + i // 10000:03d}555{i % 10000:04d}"


def prepare(conn, n: int, channel: str) -> list[str]:
    conn.execute(FEATURES_DDL)
    ledger.ensure_schema(conn)
    with conn.cursor().copy("copy marts.customer_features from stdin") as copy:
        for i in range(n):
            copy.write_row((f"c{i}", f"user{i}@shop.test", phone(i), True, True, False, False))
    keys = []
    if channel == "email_audience":
        with conn.cursor().copy(
            "copy winback.campaign_audiences (run_date, campaign_id, customer_id, channel,"
            " assigned_group) from stdin"
        ) as copy:
            for i in range(n):
                copy.write_row((RUN, "we_miss_you", f"c{i}", "email", "treatment"))
    else:
        with conn.cursor().copy(
            "copy winback.outbox (idempotency_key, run_date, campaign_id, step_id, customer_id,"
            " channel, payload) from stdin"
        ) as copy:
            for i in range(n):
                key = audiences.idempotency_key("we_miss_you", "s1", f"c{i}", "sms")
                payload = {"to": phone(i), "body": f"We miss you! 15% off with CODE{i}"}
                copy.write_row((key, RUN, "we_miss_you", "s1", f"c{i}", "sms", json.dumps(payload)))
                keys.append(key)
    conn.commit()
    return keys


def busy_rate(stats: dict) -> float:
    span = (stats["last_request"] or 0) - (stats["first_request"] or 0)
    return stats["requests"] / span if span > 0 else 0.0


def run_sms(url: str, n: int, rate: float, fault_rate: float, seed: int) -> dict:
    handle = sandbox.start_sandbox(
        fault_rate=fault_rate,
        seed=seed,
        rate_limit=rate,
        smtp=False,
        in_process=True,
        timeout_delay=0.6,
        # An injected 429 pauses the whole provider (Retry-After is account-wide): at 30%
        # faults, one request in twenty gets one, so a long pause would measure the
        # pauses, not the client.
        retry_after=0.02,
    )
    try:
        with psycopg.connect(url) as conn:
            keys = prepare(conn, n, "sms")
            settings = sandbox.SandboxSettings()
            started = time.monotonic()
            runs = 0
            for runs in range(1, MAX_RUNS + 1):  # noqa: B007
                provider = TwilioSms(
                    handle.url,
                    settings.account_sid,
                    settings.auth_token,
                    "+15005550006",
                    f"{handle.url}/_sandbox/twilio-status",
                    RateLimits(requests_per_second=rate, max_concurrency=48, timeout_seconds=0.5),
                )
                sync.run(conn, RUN, "live", {"sms": provider}, {}, collect_feedback=False)
                still_open = conn.execute(
                    "select count(*) from winback.send_ledger where status in ('sending', 'retry')"
                ).fetchone()[0]
                if not still_open:
                    break
            wall = time.monotonic() - started
            ledger = dict(
                conn.execute(
                    "select status, count(*) from winback.send_ledger group by 1"
                ).fetchall()
            )
            acknowledged_ids = conn.execute(
                "select count(distinct provider_message_id) from winback.send_ledger"
                " where status = 'acknowledged'"
            ).fetchone()[0]
        accepted = handle.accepted()["messages_by_reference"]
        stats = handle.stats()
    finally:
        handle.stop()
    lost = sum(1 for k in keys if k not in accepted)
    duplicates = sum(n - 1 for n in accepted.values() if n > 1)
    return {
        "part": "sms",
        "messages": n,
        "fault_rate": fault_rate,
        "rate_limit": rate,
        "runs": runs,
        "wall_seconds": round(wall, 1),
        "requests": stats["requests"],
        "requests_per_second": round(busy_rate(stats), 1),
        "fraction_of_limit": round(busy_rate(stats) / rate, 3),
        "goodput_per_second": round(len(accepted) / wall, 1),
        "peak_connections": stats["peak_concurrency"],
        "throttled": stats["counters"].get("throttled", 0),
        "faults": {k[6:]: v for k, v in stats["counters"].items() if k.startswith("fault:")},
        "ledger": ledger,
        "lost": lost,
        "duplicates": duplicates,
        "ledger_matches_provider": acknowledged_ids == len(accepted) == ledger.get("acknowledged"),
    }


def run_audience(url: str, n: int, rate: float, fault_rate: float, seed: int) -> dict:
    handle = sandbox.start_sandbox(
        fault_rate=fault_rate,
        seed=seed,
        rate_limit=rate,
        smtp=False,
        in_process=True,
        timeout_delay=3.0,
        retry_after=0.2,
    )
    try:
        with psycopg.connect(url) as conn:
            prepare(conn, n, "email_audience")
            started = time.monotonic()
            runs = 0
            for runs in range(1, MAX_RUNS + 1):  # noqa: B007
                provider = MailchimpAudience(
                    handle.url,
                    sandbox.SandboxSettings().api_key,
                    "L",
                    RateLimits(rate, 10, timeout_seconds=2.5),
                )
                sync.run(conn, RUN, "live", {}, {"mailchimp": provider}, collect_feedback=False)
                still_open = conn.execute(
                    "select count(*) from winback.audience_members where status <> 'synced'"
                ).fetchone()[0]
                if not still_open:
                    break
            wall = time.monotonic() - started
            synced = conn.execute(
                "select count(*) from winback.audience_members where is_member"
                " and status = 'synced'"
            ).fetchone()[0]
        members = handle.accepted()["members"].get("L", {})
        stats = handle.stats()
    finally:
        handle.stop()
    expected = {subscriber_hash(f"user{i}@shop.test") for i in range(n)}
    tagged = {h for h, m in members.items() if "winback:we_miss_you" in m["tags"]}
    return {
        "part": "audience",
        "contacts": n,
        "fault_rate": fault_rate,
        "rate_limit": rate,
        "runs": runs,
        "wall_seconds": round(wall, 1),
        "requests": stats["requests"],
        "requests_per_second": round(busy_rate(stats), 2),
        "fraction_of_limit": round(busy_rate(stats) / rate, 3),
        "goodput_per_second": round(len(tagged & expected) / wall, 1),
        "peak_connections": stats["peak_concurrency"],
        "throttled": stats["counters"].get("throttled", 0),
        "faults": {k[6:]: v for k, v in stats["counters"].items() if k.startswith("fault:")},
        "lost": len(expected - tagged),
        "unexpected_members": len(tagged - expected),
        "subscribed": sum(1 for m in members.values() if m["status"] == "subscribed"),
        "ledger_synced": synced,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--sms", type=int, default=20_000)
    parser.add_argument("--audience-rate", type=float, default=12.0)
    parser.add_argument("--sms-rate", type=float, default=250.0)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--parts", default="audience,sms")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    url = bench_database()
    results = []
    for part in args.parts.split(","):
        for fault_rate in (0.0, args.fault_rate):
            if part == "audience":
                result = run_audience(url, args.contacts, args.audience_rate, fault_rate, args.seed)
            else:
                result = run_sms(url, args.sms, args.sms_rate, fault_rate, args.seed)
            print(json.dumps(result), flush=True)
            results.append(result)
    machine = platform.processor() or platform.machine()
    print(f"\nmachine: {machine}, python {sys.version.split()[0]}")
    header = f"{'part':9} {'faults':>6} {'wall s':>7} {'req/s':>7} {'of limit':>8} "
    header += f"{'good/s':>7} {'lost':>5} {'dup':>4} {'throttled':>9}"
    print(header)
    for r in results:
        print(
            f"{r['part']:9} {r['fault_rate']:>6.0%} {r['wall_seconds']:>7} "
            f"{r['requests_per_second']:>7} {r['fraction_of_limit']:>8.2f} "
            f"{r['goodput_per_second']:>7} {r['lost']:>5} {r.get('duplicates', 0):>4} "
            f"{r['throttled']:>9}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    ok = all(r["lost"] == 0 and r.get("duplicates", 0) == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
