"""The audience mirror: what each audience provider holds, kept equal to the audiences.

Audience providers (Mailchimp tags, a Meta Custom Audience) mirror membership instead of
receiving messages: `winback.audience_members` remembers what each provider holds, and a
run sends only the difference: adds for customers who entered, removes for those who
left. Changes a killed run left `sending` are reconciled with the provider first.
"""

from __future__ import annotations

from datetime import date

from psycopg.rows import dict_row

from winback.delivery import feedback
from winback.delivery.ledger import SEND_WINDOW_HOURS, SyncResult, ensure_schema
from winback.delivery.providers import AudienceProvider, Member, MemberChange
from winback.delivery.providers.registry import audience_providers
from winback.delivery.send import ATTEMPTS_PER_RUN, with_backoff

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
) -> tuple[list[MemberChange], list[MemberChange]]:
    """(changes to make, changes left `sending` by an earlier run, to reconcile first)."""
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
        (unsettled if state and state["status"] == "sending" else changes).append(change)
    for key, state in current.items():
        if state["is_member"] and key not in desired:
            member = Member(key[1], state["email"], state["phone"])
            change = MemberChange(key[0], member, "remove")
            (unsettled if state["status"] == "sending" else changes).append(change)
    return changes, unsettled


def audience_diff_counts(conn, run_date: date, audiences=None) -> dict[str, dict[str, int]]:
    """What a live run would change per audience provider (dry run: nothing recorded)."""
    ensure_schema(conn)
    names = list(audience_providers()) if audiences is None else list(audiences)
    counts = {}
    for name in names:
        changes, unsettled = _audience_changes(conn, name, run_date)
        counts[name] = {
            "add": sum(1 for c in changes + unsettled if c.action == "add"),
            "remove": sum(1 for c in changes + unsettled if c.action == "remove"),
        }
    return counts


def _record_audience(conn, name: str, changes: list[MemberChange], **columns) -> None:
    if not changes:
        return
    with conn.transaction():
        conn.execute(
            """
            insert into winback.audience_members
                (provider, audience, customer_id, is_member, pending_action, status, error,
                 attempts, updated_at)
            select %(provider)s, v.audience, v.customer_id,
                   case when %(status)s = 'synced' then v.action = 'add'
                        else v.action = 'remove' end,
                   v.action, %(status)s, v.error, 0, now()
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
                attempts = audience_members.attempts
                           + case when %(status)s = 'sending' then 1 else 0 end,
                updated_at = now()
            """,
            {
                "provider": name,
                "status": columns["status"],
                "audiences": [c.audience for c in changes],
                "customers": [c.member.customer_id for c in changes],
                "actions": [c.action for c in changes],
                "errors": columns.get("errors") or [None] * len(changes),
            },
        )


async def sync_audience(
    conn, name: str, provider: AudienceProvider, run_date: date, result: SyncResult
) -> None:
    try:
        changes, unsettled = _audience_changes(conn, name, run_date)
        if unsettled:
            done = await provider.reconcile(unsettled)
            _record_audience(conn, name, [c for c in unsettled if c in done], status="synced")
            if done:
                result.count(name, "reconciled", len(done))
            changes.extend(c for c in unsettled if c not in done)
        for start in range(0, len(changes), AUDIENCE_SLICE):
            pending = changes[start : start + AUDIENCE_SLICE]
            _record_audience(conn, name, pending, status="sending")
            for attempt in range(ATTEMPTS_PER_RUN):
                outcome = await provider.apply(pending)
                _record_audience(conn, name, outcome.accepted, status="synced")
                _record_audience(
                    conn,
                    name,
                    [c for c, _ in outcome.rejected],
                    status="rejected",
                    errors=[e for _, e in outcome.rejected],
                )
                for change in outcome.accepted:
                    result.count(name, "added" if change.action == "add" else "removed")
                if outcome.rejected:
                    result.count(name, "rejected", len(outcome.rejected))
                pending = [c for c, _ in outcome.retry]
                if not pending:
                    break
                await with_backoff(attempt)
            if pending:  # left for the next run
                _record_audience(
                    conn, name, pending, status="retry", errors=[e for _, e in outcome.retry]
                )
                result.count(name, "retry", len(pending))
    finally:
        await provider.aclose()
