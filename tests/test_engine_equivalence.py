"""The set-based journey engine gives exactly the per-customer engine's outputs.

The six shipped campaigns (include/campaigns/) run over 60 simulated days, with a rerun and
a backfill, on a small shop, once with the set-based engine in `winback.campaigns.journeys`
and once with the per-customer engine it replaced (kept in tests/journey_reference.py);
`journey_state`, `journey_events`, `campaign_audiences`, `outbox`, the filter log, the
consent the campaigns withdrew and the tracked links must agree row for row, and so must
what each run returned.

The shop is `winback.simulation.campaign_world`, made for the six campaigns: customers in
every segment, stage and risk band, whose days pass, who order, change segment, unsubscribe
and bounce, and who receive, open and click the messages the engine enqueued. Everything
that happens is decided by a hash of (what, day, customer or message), so both runs see the
same world as long as the engines enqueue the same messages: a difference shows, it is not
absorbed.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

import journey_reference
import pytest

from winback import config
from winback.campaigns import audiences, campaign_files, journeys
from winback.simulation import campaign_world

DAY0 = campaign_world.DAY0
DAYS = 60
CUSTOMERS = int(os.environ.get("WINBACK_EQUIVALENCE_CUSTOMERS", "1500"))
# After day 30 day 30 runs again (a rerun); after day 41 day 40 runs again (a backfill).
REPEATS = {30: 30, 41: 40}

TABLES = {  # table -> its key, for a stable order; columns set by the database are left out
    "journey_state": "campaign_id, customer_id",
    "journey_events": "campaign_id, customer_id, step_id, action, run_date",
    "campaign_audiences": "run_date, campaign_id, customer_id",
    "outbox": "idempotency_key",
    "audience_filter_log": "run_date, campaign_id, position",
    "consent_withdrawals": "customer_id, channel",
    "global_control": "customer_id",
    "tracked_links": "code",
}
LEFT_OUT = {"built_at", "created_at", "updated_at"}
# How the engines store which day a journey was advanced through differs (the set-based one
# writes back only the journeys a run changed and logs the run); what it means must not.
STORED_ADVANCE = {"advanced_through", "written_by_run"}


def _comparable(value):
    """A column's value as a hashable one (a JSON payload as its sorted text)."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def snapshot(conn) -> dict[str, list[tuple]]:
    """Every output table's rows in key order, without the columns the database stamps."""
    found = {}
    as_read = journeys.advanced_through_sql("t").as_string(conn)
    for table, key in TABLES.items():
        if table == "journey_state":
            query = f"select t.*, {as_read} as advanced_through_as_read from winback.{table} t"
            left_out = LEFT_OUT | STORED_ADVANCE
        else:
            query, left_out = f"select * from winback.{table} t", LEFT_OUT
        cursor = conn.execute(f"{query} order by {key}")
        keep = [i for i, c in enumerate(cursor.description) if c.name not in left_out]
        names = tuple(cursor.description[i].name for i in keep)
        found[table] = [names] + [
            tuple(_comparable(row[i]) for i in keep) for row in cursor.fetchall()
        ]
    return found


def simulate(conn, customers: int, days: int = DAYS, campaigns=None) -> tuple[dict, list]:
    """`days` days of `campaigns` (the six shipped ones by default); the output tables and
    each run's results."""
    campaign_world.create_marts(conn)
    campaign_world.populate(conn, customers)
    shipped = campaigns or campaign_files.load_campaigns(config.CAMPAIGNS_DIR)
    returned = []
    for n in range(days):
        if n:
            campaign_world.live_a_day(conn, n)
        for day in [n] + ([REPEATS[n]] if n in REPEATS else []):
            results = audiences.build_audiences(conn, shipped, DAY0 + timedelta(days=day))
            conn.commit()
            returned.append((day, sorted((r.campaign_id, vars(r)) for r in results)))
    return snapshot(conn), returned


@pytest.fixture
def global_control(monkeypatch):
    monkeypatch.setenv(config.GLOBAL_CONTROL_SHARE_ENV, "0.05")


def both_engines(conn, monkeypatch, **simulation) -> tuple[tuple, tuple]:
    """(tables, results) of the set-based engine, then of the per-customer reference."""
    new = simulate(conn, **simulation)
    with monkeypatch.context() as patched:
        patched.setattr(journeys, "advance", journey_reference.advance)
        old = simulate(conn, **simulation)
    return new, old


def assert_same(new_tables, new_results, old_tables, old_results) -> None:
    for table in TABLES:
        old, new = old_tables[table], new_tables[table]
        assert old[0] == new[0], f"{table}: columns differ"
        only_old = sorted(set(old[1:]) - set(new[1:]))[:5]
        only_new = sorted(set(new[1:]) - set(old[1:]))[:5]
        assert (only_old, only_new) == ([], []), f"{table} differs"
        assert len(old) == len(new), table
    assert new_results == old_results


def test_the_set_based_engine_equals_the_per_customer_one_over_60_days(
    conn, global_control, monkeypatch
):
    (new_tables, new_results), (old_tables, old_results) = both_engines(
        conn, monkeypatch, customers=CUSTOMERS
    )

    # The world did exercise what the engines decide.
    actions = {row[4] for row in old_tables["journey_events"][1:]}
    assert actions >= {"entered", "sent", "held_out", "skipped", "deferred", "exited"}
    assert {row[5] for row in old_tables["outbox"][1:]} == {"email", "sms", "popup"}
    exits = {row[6] for row in old_tables["journey_events"][1:] if row[4] == "exited"}
    assert exits == {"purchase", "unsubscribe", "click"}

    assert_same(new_tables, new_results, old_tables, old_results)


def branching(campaign_id: str, channel: str, outcomes: list[str], **extra):
    """A campaign whose steps follow one another a day apart, each on one outcome of the
    step before; `extra` sets the rest (caps, journey)."""
    first = {"id": "opener", "channel": channel, "subject": "Hi {{ first_name }}"}
    first["body"] = "Hello {{ tracked_link }}"
    steps = [first] + [
        {
            "id": f"on_{outcome}",
            "channel": channel,
            "wait_days": 1 + i % 2,
            "when": {"outcome": outcome, "step": "opener"},
            "subject": f"{outcome} {{{{ coupon_code }}}}",
            "body": f"{outcome}: {{{{ coupon_code }}}} {{{{ tracked_link }}}}",
            "incentive": {"coupon": {"discount_percent": 5, "valid_days": 3}},
        }
        for i, outcome in enumerate(outcomes)
    ]
    if channel == "sms":
        for step in steps:
            step.pop("subject")
    document = {
        "id": campaign_id,
        "description": "every outcome",
        "starts_on": "2026-01-01",
        "ends_on": "2027-12-31",
        "priority": 200 if channel == "email" else 190,
        "holdout": {"share": 0.2, "stratify_by": "churn_risk_band"},
        "channels": [channel],
        "audience": {"rule": "orders_count >= 2 and days_since_last_order > 20"},
        "steps": steps,
        **extra,
    }
    return campaign_files.Campaign.model_validate(document)


def test_every_outcome_cap_and_end_action_is_decided_alike(conn, global_control, monkeypatch):
    """Campaigns made to reach what the shipped six do not: every outcome a step can
    branch on, a step capped out after its deferral, consent withdrawn at the end."""
    outcomes = ["sent", "delivered", "opened", "clicked", "purchased", "nothing"]
    negative = ["not_delivered", "not_opened", "not_clicked"]
    email = branching(
        "every_outcome",
        "email",
        negative + outcomes,
        caps={"max_per_channel_per_week": {"email": 3}, "max_deferral_days": 1},
        journey={"exit_on": ["unsubscribe"], "end_after_days": 2},
    )
    sms = branching(
        "sms_outcomes",
        "sms",
        ["opened", "nothing"] + negative,
        caps={"max_per_channel_per_week": {"sms": 2}, "coupon_cooldown_days": 3},
        journey={
            "exit_on": ["unsubscribe", "click"],
            "end_after_days": 1,
            "on_end": ["withdraw_sms_consent"],
        },
        quiet_hours={"start": "08:00", "end": "20:00"},
    )
    (new_tables, new_results), (old_tables, old_results) = both_engines(
        conn, monkeypatch, customers=600, days=16, campaigns=[email, sms]
    )
    events = old_tables["journey_events"][1:]
    actions = {row[4] for row in events}
    assert actions >= {"sent", "held_out", "skipped", "deferred", "capped_out", "completed"}
    sent_steps = {row[3] for row in events if row[4] == "sent"}
    assert {f"on_{o}" for o in outcomes + negative} <= sent_steps
    assert len(old_tables["consent_withdrawals"]) > 1
    assert_same(new_tables, new_results, old_tables, old_results)
