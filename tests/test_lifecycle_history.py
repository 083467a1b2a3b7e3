"""The lifecycle history as validity ranges answers "stage on day D" exactly as the daily
snapshot did, over 90 simulated days run in order, with a gap backfilled later, reruns
with late data and days out of order (issue 19).

The daily lifecycle snapshots are simulated (a few hundred customers whose stage and
RFM segment change, who appear, and who are now and then gone for a day) and written to
`marts.customer_lifecycle` / `marts.customer_rfm` before each run of the two history
models, on the real PostgreSQL through dbt. The old design is computed here from the same
snapshots: the rows of each recorded day, as its last run wrote them.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

import pytest
from conftest import create_database, using_database

from winback import config
from winback.local import dbt_runner
from winback.warehouse import db, relations, tables

FIRST_DAY = date(2026, 1, 1)
DAYS = 90
CUSTOMERS = 150
STAGES = ("new", "active", "at_risk", "inactive", "lost", "reactivated")
SEGMENTS = ("champions", "loyal", "at_risk", "hibernating", None)  # None: not in customer_rfm
RECORDED_DAYS = "marts.customer_lifecycle_recorded_days"
BY_DAY = "marts.customer_lifecycle_by_day"  # the daily rows, from the ranges
HISTORY_MODELS = "customer_lifecycle_recorded_days customer_lifecycle_history"

Snapshot = dict[str, tuple[str, str | None]]


def day(index: int) -> date:
    return FIRST_DAY + timedelta(days=index)


def simulated_snapshots(seed: int = 19) -> list[Snapshot]:
    """Each day's (stage, segment) per customer present: a customer appears on their
    first order day, changes stage (10% a day) and segment (5%), and is gone on 3% of
    days (all their orders refunded, say)."""
    rng = random.Random(seed)
    snapshots: list[Snapshot] = [{} for _ in range(DAYS)]
    for number in range(CUSTOMERS):
        customer = f"c{number:03d}"
        first = rng.randrange(0, 70)
        stage, segment = rng.choice(STAGES), rng.choice(SEGMENTS)
        for index in range(first, DAYS):
            if rng.random() < 0.10:
                stage = rng.choice(STAGES)
            if rng.random() < 0.05:
                segment = rng.choice(SEGMENTS)
            if rng.random() >= 0.03:
                snapshots[index][customer] = (stage, segment)
    return snapshots


def revised(snapshot: Snapshot, index: int, revision: int) -> Snapshot:
    """The snapshot of day `index` when it is rerun with late data (revision > 0): some
    customers' stage differs, a few are gone, one is new."""
    if revision == 0:
        return dict(snapshot)
    rng = random.Random(index * 100 + revision)
    result = {}
    for customer, (stage, segment) in sorted(snapshot.items()):
        draw = rng.random()
        if draw < 0.05:
            continue
        result[customer] = (rng.choice(STAGES), segment) if draw < 0.25 else (stage, segment)
    result[f"late{index}r{revision}"] = ("new", None)
    return result


def write_snapshot(conn, snapshot: Snapshot) -> None:
    conn.execute("truncate marts.customer_lifecycle, marts.customer_rfm")
    with conn.cursor().copy("copy marts.customer_lifecycle from stdin") as copy:
        for customer, (stage, _) in snapshot.items():
            copy.write_row((customer, stage))
    with conn.cursor().copy("copy marts.customer_rfm from stdin") as copy:
        for customer, (_, segment) in snapshot.items():
            if segment is not None:
                copy.write_row((customer, segment))
    conn.commit()


class InProcessDbt:
    """dbt in this process, from a manifest parsed once: each of the hundred runs here then
    costs its two models' SQL, not dbt's start-up and parse (seconds each)."""

    def __init__(self, target_path) -> None:
        from dbt.cli.main import dbtRunner

        self.common = [
            "--project-dir", str(config.DBT_PROJECT_DIR),
            "--profiles-dir", str(dbt_runner.COMMITTED_PROFILES_DIR),
            "--target-path", str(target_path),
        ]  # fmt: skip
        parsed = dbtRunner().invoke(["parse", "--quiet", *self.common])
        assert parsed.success, parsed.exception
        self.runner = dbtRunner(manifest=parsed.result)

    def __call__(self, command: str, selection: str, run_date: date, *extra: str) -> bool:
        result = self.runner.invoke(
            [command, "--quiet", "--select", selection,
             "--vars", f"{{as_of_date: {run_date}}}", *extra, *self.common]
        )  # fmt: skip
        return result.success


# ------------------------------------------------------------------ the old design


def old_stage_as_of(recorded: dict[date, Snapshot], on: date) -> Snapshot:
    """The daily snapshot's read: the rows of the latest recorded day on or before `on`."""
    earlier = [d for d in recorded if d <= on]
    return recorded[max(earlier)] if earlier else {}


def old_transitions(recorded: dict[date, Snapshot]) -> set[tuple]:
    """Stage changes between a customer's consecutive recorded days (the old view)."""
    changes, last = set(), {}
    for on in sorted(recorded):
        for customer, (stage, _) in recorded[on].items():
            if customer in last and last[customer] != stage:
                changes.add((customer, last[customer], stage, on))
            last[customer] = stage
    return changes


def expected_ranges(recorded: dict[date, Snapshot]) -> set[tuple]:
    """The fewest ranges giving every recorded day's rows: runs of consecutive recorded
    days with the customer present and unchanged, ending on the next recorded day."""
    days = sorted(recorded)
    ranges, open_ranges = set(), {}
    for position, on in enumerate(days):
        following = days[position + 1] if position + 1 < len(days) else None
        for customer, value in recorded[on].items():
            current = open_ranges.get(customer)
            if current and current[1] == on and current[2] == value:
                open_ranges[customer] = (current[0], following, value)
            else:
                if current:
                    ranges.add((customer, current[0], current[1], *current[2]))
                open_ranges[customer] = (on, following, value)
    for customer, (start, end, value) in open_ranges.items():
        ranges.add((customer, start, end, *value))
    return ranges


# ------------------------------------------------------------------ the checks


def check_against_the_daily_snapshot(conn, recorded: dict[date, Snapshot]) -> None:
    stored = set(
        conn.execute(
            "select customer_id, valid_from, valid_to, lifecycle_stage, rfm_segment"
            f" from {relations.CUSTOMER_LIFECYCLE_HISTORY}"
        ).fetchall()
    )
    assert stored == expected_ranges(recorded)
    listed = {row[0] for row in conn.execute(
        f"select as_of_date from {RECORDED_DAYS}"
    ).fetchall()}  # fmt: skip
    assert listed == set(recorded)
    # "Stage on day D", every recorded day, through the view of daily rows.
    by_day: dict[date, Snapshot] = {}
    for customer, on, stage, segment in conn.execute(
        f"select customer_id, as_of_date, lifecycle_stage, rfm_segment from {BY_DAY}"
    ).fetchall():
        by_day.setdefault(on, {})[customer] = (stage, segment)
    assert by_day == {on: rows for on, rows in recorded.items() if rows}
    # "Stage as of D" (the measurement's read), every day from before the first to after
    # the last, recorded or not.
    query = relations.lifecycle_stage_as_of("%(on)s")
    for index in range(-2, DAYS + 3):
        rows = conn.execute(query, {"on": day(index)}).fetchall()
        assert {c: (s, g) for c, s, g in rows} == old_stage_as_of(recorded, day(index)), index
    transitions = set(conn.execute("select * from marts.customer_lifecycle_transitions").fetchall())
    assert transitions == old_transitions(recorded)


@pytest.fixture
def dbt(session_database, tmp_path, monkeypatch):
    """A fresh warehouse with hand-fillable snapshot tables, and dbt run in-process on it."""
    with using_database(create_database("history")):
        with db.connect() as conn:
            tables.ensure_schema(conn)  # the project's on-run-start hook wants schema winback
            conn.execute(
                "create schema if not exists marts;"
                " create table marts.customer_lifecycle (customer_id text, lifecycle_stage text);"
                " create table marts.customer_rfm (customer_id text, rfm_segment text)"
            )
            conn.commit()
        for name, value in {**db.dbt_env(), "DBT_SEND_ANONYMOUS_USAGE_STATS": "False"}.items():
            monkeypatch.setenv(name, value)
        yield InProcessDbt(tmp_path / "target")


def test_ranges_answer_stage_on_day_d_as_the_daily_snapshot_did(dbt):
    snapshots = simulated_snapshots()
    recorded: dict[date, Snapshot] = {}

    def run(index: int, revision: int = 0) -> None:
        snapshot = revised(snapshots[index], index, revision)
        with db.connect() as conn:
            write_snapshot(conn, snapshot)
        assert dbt("run", HISTORY_MODELS, day(index)), f"dbt failed for day {index}"
        recorded[day(index)] = snapshot

    # The views over the history are built once; they read the tables as they change.
    for index in range(0, 40):
        run(index)
    assert dbt("run", "customer_lifecycle_by_day customer_lifecycle_transitions", day(0))
    for index in range(46, 60):  # days 40..45 not yet run: a gap
        run(index)
    with db.connect() as conn:
        check_against_the_daily_snapshot(conn, recorded)
    for index in range(45, 39, -1):  # the gap backfilled, newest day first
        run(index)
    for index, revision in ((10, 1), (30, 1), (0, 1), (59, 1)):  # reruns with late data
        run(index, revision)
    with db.connect() as conn:
        check_against_the_daily_snapshot(conn, recorded)
    for index in [*range(75, 90), *range(60, 75)]:  # out of order
        run(index)
    for index, revision in ((10, 0), (89, 1), (89, 1), (50, 2), (0, 0)):  # and back
        run(index, revision)
    with db.connect() as conn:
        check_against_the_daily_snapshot(conn, recorded)
        ranges, days_times_customers = conn.execute(
            f"select (select count(*) from {relations.CUSTOMER_LIFECYCLE_HISTORY}),"
            f" (select count(*) from {BY_DAY})"
        ).fetchone()
    # It grows with changes, not with days x customers.
    assert ranges < days_times_customers / 4
    # The models' data tests pass on the last run date.
    assert dbt("test", f"{HISTORY_MODELS} customer_lifecycle_by_day", day(89))


def test_a_daily_history_from_before_ranges_is_converted_on_its_first_run(dbt):
    """An existing warehouse: the old daily table (with a gap) becomes ranges in the first
    run, here a backfill into the gap, and the days it had are listed as recorded. A full
    refresh of the history alone is refused, as it would forget those days."""
    snapshots = simulated_snapshots(seed=7)
    recorded = {day(index): snapshots[index] for index in [*range(0, 10), 12, 13]}
    with db.connect() as conn:
        conn.execute(
            "create table marts.customer_lifecycle_history (customer_id text, as_of_date date,"
            " lifecycle_stage text, rfm_segment text, days_since_last_order integer);"
            " create unique index customer_lifecycle_history_pk"
            " on marts.customer_lifecycle_history (as_of_date, customer_id)"
        )
        with conn.cursor().copy("copy marts.customer_lifecycle_history from stdin") as copy:
            for on, snapshot in recorded.items():
                for customer, (stage, segment) in snapshot.items():
                    copy.write_row((customer, on, stage, segment, 3))
        conn.commit()
    for index in (11, 14):
        with db.connect() as conn:
            write_snapshot(conn, snapshots[index])
        assert dbt("run", HISTORY_MODELS, day(index)), f"dbt failed for day {index}"
        recorded[day(index)] = snapshots[index]
    assert dbt("run", "customer_lifecycle_by_day customer_lifecycle_transitions", day(14))
    with db.connect() as conn:
        check_against_the_daily_snapshot(conn, recorded)
        kept = conn.execute(
            "select count(*) from marts.customer_lifecycle_history_daily"
        ).fetchone()[0]
        assert kept == sum(len(snapshots[i]) for i in [*range(0, 10), 12, 13])
    assert not dbt("run", "customer_lifecycle_history", day(14), "--full-refresh")
    with db.connect() as conn:
        check_against_the_daily_snapshot(conn, recorded)
