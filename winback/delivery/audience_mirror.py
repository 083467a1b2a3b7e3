"""The audience mirror: what each audience provider holds, kept equal to the audiences.

Audience providers (Mailchimp tags, a Meta Custom Audience) mirror membership instead of
receiving messages: `winback.audience_members` remembers what each provider holds, and a
run sends only the difference: adds for customers who entered, removes for those who
left. Changes a killed run left `sending` are reconciled with the provider first.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import date

from psycopg.rows import dict_row

from winback.delivery import feedback
from winback.delivery.ledger import SEND_WINDOW_HOURS, SyncResult, committed, ensure_schema
from winback.delivery.providers import (
    AccountRefused,
    AudienceProvider,
    AudienceResult,
    Member,
    MemberChange,
)
from winback.delivery.providers.registry import audience_providers
from winback.delivery.send import ATTEMPTS_PER_RUN, with_backoff
from winback.orchestration import progress

log = logging.getLogger(__name__)

AUDIENCE_SLICE = 100_000


def _desired_members(conn, run_date: date) -> dict[tuple[str, str], Member]:
    """(audience, customer) -> member: each email campaign's latest treatment group up to
    `run_date`, with consent and suppression as they are now."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""
            with latest as (
                select campaign_id, max(run_date) as run_date
                from winback.campaign_audiences
                where run_date <= %(run_date)s and channel = 'email'
                group by campaign_id
            )
            select 'winback:' || a.campaign_id as audience, a.customer_id, f.email, f.phone,
                   f.is_email_subscribed
            from winback.campaign_audiences a
            join latest using (campaign_id, run_date)
            join marts.customer_features f on f.customer_id = a.customer_id
            left join winback.suppressions s
              on s.channel = 'email'
             and s.address_hash = {feedback.ADDRESS_HASH_SQL.format("f.email")}
            where a.assigned_group = 'treatment' and a.channel = 'email'
              and f.is_email_subscribed and not f.is_email_suppressed
              and s.address_hash is null and f.email is not null
            """,
            {"run_date": run_date, "window": SEND_WINDOW_HOURS},
        ).fetchall()
    return {
        (r["audience"], r["customer_id"]): Member(
            r["customer_id"], r["email"], r["phone"], bool(r["is_email_subscribed"])
        )
        for r in rows
    }


def _audience_changes(
    conn, name: str, run_date: date
) -> tuple[list[MemberChange], list[tuple[MemberChange, str | None]]]:
    """(changes to make, changes left `sending` by an earlier run with the provider's batch
    id if it took them, to settle first)."""
    desired = _desired_members(conn, run_date)
    with conn.cursor(row_factory=dict_row) as cur:
        current = {
            (r["audience"], r["customer_id"]): r
            for r in cur.execute(
                "select m.*, f.email, f.phone from winback.audience_members m "
                "left join marts.customer_features f using (customer_id) where m.provider = %s",
                (name,),
            )
        }
    changes, unsettled = [], []
    for key, member in desired.items():
        state = current.get(key)
        if state and state["is_member"]:
            continue
        if state and state["status"] == "rejected" and state["pending_action"] == "add":
            continue  # the provider refused this contact for good
        change = MemberChange(key[0], member, "add")
        if state and state["status"] == "sending":
            unsettled.append((change, state["provider_batch_id"]))
        else:
            changes.append(change)
    for key, state in current.items():
        if state["is_member"] and key not in desired:
            member = Member(key[1], state["email"], state["phone"])
            change = MemberChange(key[0], member, "remove")
            if state["status"] == "sending":
                unsettled.append((change, state["provider_batch_id"]))
            else:
                changes.append(change)
    return changes, unsettled


def audience_diff_counts(conn, run_date: date, audiences=None) -> dict[str, dict[str, int]]:
    """What a live run would change per audience provider (dry run: nothing recorded)."""
    ensure_schema(conn)
    names = list(audience_providers()) if audiences is None else list(audiences)
    counts = {}
    for name in names:
        changes, unsettled = _audience_changes(conn, name, run_date)
        counts[name] = {
            "add": sum(1 for c in changes + [c for c, _ in unsettled] if c.action == "add"),
            "remove": sum(1 for c in changes + [c for c, _ in unsettled] if c.action == "remove"),
        }
    return counts


def _record_audience(
    conn,
    name: str,
    changes: list[MemberChange],
    status: str,
    errors: list[str] | None = None,
    batch_id: str | None = None,
    is_attempt: bool = False,
) -> None:
    """Record changes durably, each write committed at once (a kill keeps what was written).

    `sending` marks changes in flight; with `batch_id`, the provider took them in that
    batch, which later attempts and runs poll instead of posting again.
    """
    if not changes:
        return
    with committed(conn):
        conn.execute(
            """
            insert into winback.audience_members
                (provider, audience, customer_id, is_member, pending_action, status, error,
                 attempts, provider_batch_id, updated_at)
            select %(provider)s, v.audience, v.customer_id,
                   case when %(status)s = 'synced' then v.action = 'add'
                        else v.action = 'remove' end,
                   v.action, %(status)s, v.error, %(attempt)s, %(batch)s, now()
            from unnest(%(audiences)s::text[], %(customers)s::text[], %(actions)s::text[],
                        %(errors)s::text[]) as v(audience, customer_id, action, error)
            on conflict (provider, audience, customer_id) do update set
                is_member = case when %(status)s = 'synced'
                                 then excluded.pending_action = 'add'
                                 else audience_members.is_member end,
                pending_action = case when %(status)s = 'synced' then null
                                      else excluded.pending_action end,
                status = %(status)s,
                error = excluded.error,
                attempts = audience_members.attempts + %(attempt)s,
                provider_batch_id = %(batch)s,
                updated_at = now()
            """,
            {
                "provider": name,
                "status": status,
                "attempt": 1 if is_attempt else 0,
                "batch": batch_id if status == "sending" else None,
                "audiences": [c.audience for c in changes],
                "customers": [c.member.customer_id for c in changes],
                "actions": [c.action for c in changes],
                "errors": errors or [None] * len(changes),
            },
        )


def _record_outcome(conn, name: str, outcome: AudienceResult, result: SyncResult) -> None:
    """Accepted and rejected changes recorded; pending ones stay `sending` with their batch."""
    _record_audience(conn, name, outcome.accepted, "synced")
    _record_audience(
        conn,
        name,
        [c for c, _ in outcome.rejected],
        "rejected",
        errors=[e for _, e in outcome.rejected],
    )
    for change in outcome.accepted:
        result.count(name, "added" if change.action == "add" else "removed")
    if outcome.rejected:
        result.count(name, "rejected", len(outcome.rejected))
    if outcome.pending:
        result.count(name, "pending", len(outcome.pending))


async def _settle_unsettled(
    conn, name: str, provider: AudienceProvider, unsettled, result: SyncResult
) -> list[MemberChange]:
    """Changes an earlier attempt or run left `sending`: a batch the provider took is
    polled (never posted again); changes with no batch, or whose batch the provider no
    longer knows, are read back member by member. Returns the changes still to apply."""
    by_batch: dict[str, list[MemberChange]] = defaultdict(list)
    unknown: list[MemberChange] = []
    for change, batch_id in unsettled:
        (by_batch[batch_id] if batch_id else unknown).append(change)
    to_apply: list[MemberChange] = []
    resume = getattr(provider, "resume", None)
    for batch_id, members in by_batch.items():
        outcome = await resume(batch_id, members) if resume else None
        if outcome is None:
            unknown.extend(members)
            continue
        _record_outcome(conn, name, outcome, result)
        to_apply.extend(c for c, _ in outcome.retry)
    if unknown:
        done = await provider.reconcile(unknown)
        _record_audience(conn, name, [c for c in unknown if c in done], "synced")
        if done:
            result.count(name, "reconciled", len(done))
        to_apply.extend(c for c in unknown if c not in done)
    return to_apply


async def sync_audience(
    conn, name: str, provider: AudienceProvider, run_date: date, result: SyncResult
) -> None:
    submitted: set[MemberChange] = set()
    pending: list[MemberChange] = []

    def on_submitted(members: list[MemberChange], batch_id: str) -> None:
        _record_audience(conn, name, members, "sending", batch_id=batch_id)
        submitted.update(members)

    try:
        changes, unsettled = _audience_changes(conn, name, run_date)
        progress.log_audience_changes(name, len(changes) + len(unsettled), provider.limits)
        changes.extend(await _settle_unsettled(conn, name, provider, unsettled, result))
        for start in range(0, len(changes), AUDIENCE_SLICE):
            pending = changes[start : start + AUDIENCE_SLICE]
            _record_audience(conn, name, pending, "sending", is_attempt=True)
            outcome = AudienceResult()
            for attempt in range(ATTEMPTS_PER_RUN):
                outcome = await provider.apply(pending, on_submitted)
                _record_outcome(conn, name, outcome, result)
                pending = [c for c, _ in outcome.retry]
                if not pending:
                    break
                await with_backoff(attempt)
            if pending:  # left for the next run
                _record_audience(conn, name, pending, "retry", errors=[e for _, e in outcome.retry])
                result.count(name, "retry", len(pending))
            pending = []
    except AccountRefused as error:
        # Refused for the account: changes the provider never took wait as `retry`; a batch
        # it took keeps its id and is polled once the account works again.
        result.paused[name] = str(error)
        log.error("%s refused the account (%s): paused for this run", name, error)
        not_taken = [c for c in pending if c not in submitted]
        _record_audience(conn, name, not_taken, "retry", errors=[str(error)] * len(not_taken))
        if not_taken:
            result.count(name, "retry", len(not_taken))
    finally:
        await provider.aclose()
