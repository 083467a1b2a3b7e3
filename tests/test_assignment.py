"""One hashing helper for every deterministic split: holdout and A/B variant.

The expected values below were computed with the two helpers this module replaced
(`audiences.assignment_hash` and `journeys.unit_hash`): a change here would move
customers between groups, which a rerun or backfill must never do.
"""

from __future__ import annotations

import hashlib

from psycopg import sql

from winback.campaigns import assignment, journeys
from winback.campaigns import campaign_files as campaigns


def test_holdout_places_are_the_ones_assigned_before():
    places = [assignment.assignment_hash("we_miss_you", f"c{i}") for i in range(5)]
    assert places == [3579749650, 193506533, 1758000627, 1112899126, 1251378224]
    assert assignment.holdout_threshold(0.2) == 858993459


def test_variant_points_and_choices_are_the_ones_assigned_before():
    points = [assignment.unit_hash("we_miss_you", "s1", f"c{i}") for i in range(5)]
    expected = [0.068804356502, 0.193686672719, 0.64898329298, 0.051069578622, 0.373474546243]
    assert [round(p, 12) for p in points] == expected
    [we_miss_you] = [c for c in campaigns.load_campaigns() if c.id == "we_miss_you"]
    step = we_miss_you.steps[0]
    chosen = "".join(
        journeys.choose_variant(we_miss_you.id, step, f"c{i:03d}")[-1] for i in range(40)
    )
    assert chosen == "lslssslllllssllssssllslsslssslsllsslslll"  # personal / products


def test_the_place_is_the_md5_prefix_of_the_joined_parts():
    digest = hashlib.md5(b"a:b:c").hexdigest()
    assert assignment.assignment_hash("a", "b", "c") == int(digest[:8], 16)
    assert 0 <= assignment.unit_hash("a", "b", "c") < 1


def test_weights_split_customers_in_proportion():
    options = [("a", 1.0), ("b", 3.0)]
    picks = [assignment.pick_by_weight(options, "campaign", f"c{i}") for i in range(20_000)]
    assert abs(picks.count("b") / len(picks) - 0.75) < 0.01
    assert assignment.pick_by_weight([("only", 1.0)], "x") == "only"


def test_the_sql_twin_sorts_as_python_does(conn):
    """The holdout is filled in SQL order; measurement validation assigns in Python."""
    customers = [f"c{i}" for i in range(200)]
    query = sql.SQL("select c, {} from unnest(%(customers)s::text[]) as c").format(
        assignment.hash_sql(sql.Placeholder("campaign"), sql.SQL("c"))
    )
    rows = conn.execute(query, {"campaign": "we_miss_you", "customers": customers}).fetchall()
    for customer, digest in rows:
        assert int(digest[:8], 16) == assignment.assignment_hash("we_miss_you", customer)
    in_sql = [
        c
        for (c,) in conn.execute(
            sql.SQL("select c from unnest(%(customers)s::text[]) as c order by {}, c").format(
                assignment.hash_sql(sql.Placeholder("campaign"), sql.SQL("c"))
            ),
            {"campaign": "we_miss_you", "customers": customers},
        )
    ]
    in_python = sorted(customers, key=lambda c: hashlib.md5(f"we_miss_you:{c}".encode()).digest())
    assert in_sql == in_python
