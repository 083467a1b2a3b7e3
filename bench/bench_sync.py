"""Benchmark: provider sync against the sandbox, at a set rate limit, clean and with faults.

    .venv/bin/python bench/bench_sync.py                     # both parts, both settings
    .venv/bin/python bench/bench_sync.py --contacts 100000 --sms 20000
    .venv/bin/python bench/bench_sync.py --contacts 2000 --sms 300 --sms-rate 50   # smoke

The sandbox behaves like the real providers (docs/providers.md): every request takes
`--latency` (200 ms by default), Twilio keeps a message queued with `date_sent` null for
`--queue-seconds` and lists it only `--list-lag` seconds after its creation, an injected
429 asks for quiet with an HTTP-date Retry-After, Mailchimp runs one batch at a time for
`--batch-seconds`. The client runs at its defaults: SMS concurrency is derived from the
rate and the expected latency (rate x latency x 1.5), not set by hand.

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
member tagged, the ledger agreeing with the provider; duplicates are also counted by
(recipient, body), and `inside_retry_after` counts requests that arrived inside a window a
429 asked to be left alone.

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
from winback.delivery.providers.twilio import EXPECTED_LATENCY_SECONDS as TWILIO_EXPECTED_LATENCY
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


def run_sms(url: str, n: int, rate: float, fault_rate: float, seed: int, args) -> dict:
    handle = sandbox.start_sandbox(
        fault_rate=fault_rate,
        seed=seed,
        rate_limit=rate,
        smtp=False,
        in_process=True,
        timeout_delay=0.6 + args.latency,
        # An injected 429 pauses the whole provider (Retry-After is account-wide): at 30%
        # faults, one request in twenty gets one, so a long pause would measure the
        # pauses, not the client. Given as an HTTP date, it is a whole second.
        retry_after=1.0,
        retry_after_form="date",
        latency=args.latency,
        queue_seconds=args.queue_seconds,
        list_lag=args.list_lag,
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
                    # The adapter's default: connections from the rate and its expected
                    # latency (docs/providers.md); only the timeout is the bench's.
                    RateLimits.derived(
                        rate, TWILIO_EXPECTED_LATENCY, timeout_seconds=0.5 + args.latency
                    ),
                    lookup_trust_seconds=args.list_lag + 1.0,
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
        record = handle.accepted()
        accepted = record["messages_by_reference"]
        by_content = record["messages_by_recipient_and_body"]
        stats = handle.stats()
    finally:
        handle.stop()
    lost = sum(1 for k in keys if k not in accepted)
    duplicates = sum(n - 1 for n in accepted.values() if n > 1)
    duplicates_by_content = sum(n - 1 for n in by_content.values() if n > 1)
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
        "duplicates_by_content": duplicates_by_content,
        "inside_retry_after": stats["counters"].get("inside_retry_after", 0),
        "max_concurrency": provider.limits.max_concurrency,
        "ledger_matches_provider": acknowledged_ids == len(accepted) == ledger.get("acknowledged"),
    }


def run_audience(url: str, n: int, rate: float, fault_rate: float, seed: int, args) -> dict:
    handle = sandbox.start_sandbox(
        fault_rate=fault_rate,
        seed=seed,
        rate_limit=rate,
        smtp=False,
        in_process=True,
        timeout_delay=3.0,
        retry_after=1.0,
        retry_after_form="date",
        latency=args.latency,
        batch_seconds=args.batch_seconds,
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
        operations_posted = stats["counters"].get("batch_operations", 0)
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
        # Every member is added with an upsert and a tag: more means a batch went twice
        # (or a partial batch's failed operations were sent again, as they must be).
        "operations_posted": operations_posted,
        "operations_needed": 2 * n,
        "results_with_credentials": stats["counters"].get("results_with_credentials", 0),
        "inside_retry_after": stats["counters"].get("inside_retry_after", 0),
        "unexpected_members": len(tagged - expected),
        "subscribed": sum(1 for m in members.values() if m["status"] == "subscribed"),
        "ledger_synced": synced,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--sms", type=int, default=20_000)
    # With faults, every injected 429 asks the whole account for a second of quiet (an
    # HTTP-date has whole seconds): the faulty run checks exactness, on fewer messages.
    parser.add_argument("--fault-sms", type=int, default=2_000)
    parser.add_argument("--audience-rate", type=float, default=12.0)
    parser.add_argument("--sms-rate", type=float, default=250.0)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request")
    parser.add_argument("--queue-seconds", type=float, default=30.0)
    parser.add_argument("--list-lag", type=float, default=2.0)
    parser.add_argument("--batch-seconds", type=float, default=0.2)
    parser.add_argument("--parts", default="audience,sms")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    url = bench_database()
    results = []
    for part in args.parts.split(","):
        for fault_rate in (0.0, args.fault_rate):
            if part == "audience":
                result = run_audience(
                    url, args.contacts, args.audience_rate, fault_rate, args.seed, args
                )
            else:
                n = args.sms if fault_rate == 0 else min(args.sms, args.fault_sms)
                result = run_sms(url, n, args.sms_rate, fault_rate, args.seed, args)
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
    ok = all(
        r["lost"] == 0
        and r.get("duplicates", 0) == 0
        and r.get("duplicates_by_content", 0) == 0
        and r.get("inside_retry_after", 0) == 0
        for r in results
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
