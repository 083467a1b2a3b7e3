"""The loader against the real PostgreSQL: contract checks, quarantine, reconciliation."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from winback.ingest import contract, loader

DAY = date(2026, 11, 20)


def write_csv(folder: Path, table: str, rows: list[dict], header: list[str] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    columns = header or contract.table(table).column_names
    with open(folder / f"{table}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})


def customer(cid: str, **overrides) -> dict:
    row = {
        "customer_id": cid,
        "email": f"{cid}@example.com",
        "phone": "",
        "first_name": "Ada",
        "country": "IT",
        "created_at": "2025-01-01T10:00:00Z",
    }
    row.update(overrides)
    return row


def order(oid: str, cid: str, **overrides) -> dict:
    row = {
        "order_id": oid,
        "customer_id": cid,
        "ordered_at": "2026-11-19T09:30:00Z",
        "status": "completed",
        "total": "49.90",
        "currency": "EUR",
    }
    row.update(overrides)
    return row


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    folder = tmp_path / DAY.isoformat()
    write_csv(
        folder,
        "customers",
        [
            customer("c1", phone="+39 06 6988 1234"),
            customer("c2", email="Ada.Lovelace@Example.COM"),
            customer("c3", email="not-an-email"),
            customer("c4", phone="12"),
            customer("c5", created_at="2025-02-30"),
            customer("c1", first_name="Again"),
            customer("c6", created_at="2027-01-01T00:00:00Z"),
            customer("", first_name="Nobody"),
        ],
    )
    write_csv(
        folder,
        "orders",
        [
            order("o1", "c1"),
            order("o2", "c2", total="-5"),
            order("o3", "c2", total="abc"),
            order("o4", "ghost"),
            order("o5", "c2", status="teleported"),
            order("o6", "c2", ordered_at="yesterday"),
            order("o7", "c2"),
        ],
    )
    return tmp_path


def test_every_broken_row_is_quarantined_with_its_reason(conn, landing):
    report = loader.load_day(conn, landing, DAY)

    by_table = {f.table: f for f in report.files}
    assert (by_table["customers"].rows_read, by_table["customers"].rows_loaded) == (8, 2)
    assert (by_table["orders"].rows_read, by_table["orders"].rows_loaded) == (7, 2)
    assert report.rows_read == report.rows_loaded + report.rows_quarantined

    rules = dict(
        conn.execute(
            "select table_name || ':' || line_number, rule from raw.quarantine "
            "where load_date = %s",
            (DAY,),
        ).fetchall()
    )
    assert rules == {
        "customers:4": "malformed_email",
        "customers:5": "invalid_phone",
        "customers:6": "unparseable_timestamp",
        "customers:7": "duplicate_id",
        "customers:8": "future_timestamp",
        "customers:9": "missing_value",
        "orders:3": "negative_amount",
        "orders:4": "non_numeric_amount",
        "orders:5": "unknown_customer",
        "orders:6": "unexpected_value",
        "orders:7": "unparseable_timestamp",
    }
    reason, column, record = conn.execute(
        "select reason, column_name, raw_record from raw.quarantine "
        "where table_name = 'orders' and line_number = 3"
    ).fetchone()
    assert column == "total" and "negative amount" in reason and record["order_id"] == "o2"


def test_values_are_normalised(conn, landing):
    loader.load_day(conn, landing, DAY)
    rows = dict(conn.execute("select customer_id, email from raw.customers").fetchall())
    assert rows["c2"] == "ada.lovelace@example.com"
    phone = conn.execute("select phone from raw.customers where customer_id = 'c1'").fetchone()[0]
    assert phone == "+390669881234"


def test_loading_the_same_day_twice_changes_nothing(conn, landing):
    first = loader.load_day(conn, landing, DAY)
    snapshot = (
        conn.execute("select * from raw.orders order by order_id").fetchall(),
        conn.execute("select count(*) from raw.quarantine").fetchone(),
    )
    second = loader.load_day(conn, landing, DAY)
    again = (
        conn.execute("select * from raw.orders order by order_id").fetchall(),
        conn.execute("select count(*) from raw.quarantine").fetchone(),
    )
    assert first.as_dict()["rows_loaded"] == second.as_dict()["rows_loaded"]
    assert [r[:-1] for r in snapshot[0]] == [r[:-1] for r in again[0]]  # all but _loaded_at
    assert snapshot[1] == again[1]
    batches = conn.execute(
        "select table_name, rows_read, rows_loaded, rows_quarantined from raw.load_batches"
    ).fetchall()
    assert sorted(batches) == [("customers", 8, 2, 6), ("orders", 7, 2, 5)]


def test_an_older_day_never_overwrites_newer_data(conn, tmp_path):
    newer = date(2026, 11, 21)
    write_csv(tmp_path / newer.isoformat(), "customers", [customer("c9", first_name="New")])
    write_csv(tmp_path / DAY.isoformat(), "customers", [customer("c9", first_name="Old")])
    loader.load_day(conn, tmp_path, newer)
    loader.load_day(conn, tmp_path, DAY)  # a backfill of the earlier day
    name = conn.execute("select first_name from raw.customers where customer_id='c9'").fetchone()
    assert name == ("New",)


def test_a_wrong_header_refuses_the_file_and_names_the_expected_columns(conn, tmp_path):
    header = ["order_id", "customer", "ordered_at", "status", "total", "currency"]
    write_csv(tmp_path / DAY.isoformat(), "orders", [], header=header)
    with pytest.raises(loader.ContractError) as error:
        loader.load_day(conn, tmp_path, DAY)
    message = str(error.value)
    assert "customer_id" in message and "Expected columns: order_id, customer_id" in message
    assert "unexpected: customer" in message


def test_unknown_file_names_and_missing_days_are_errors(conn, tmp_path):
    with pytest.raises(loader.ContractError, match="nothing was delivered"):
        loader.load_day(conn, tmp_path, DAY)
    (tmp_path / DAY.isoformat()).mkdir()
    (tmp_path / DAY.isoformat() / "clients.csv").write_text("a\n1\n")
    with pytest.raises(loader.ContractError, match="not a winback input file"):
        loader.load_day(conn, tmp_path, DAY)


def test_parquet_files_load_like_csv(conn, tmp_path):
    folder = tmp_path / DAY.isoformat()
    folder.mkdir()
    frame = pd.DataFrame([customer("p1"), customer("p2", email="bad")])
    frame.to_parquet(folder / "customers.parquet")
    report = loader.load_day(conn, tmp_path, DAY)
    assert (report.rows_loaded, report.rows_quarantined) == (1, 1)


@pytest.fixture(autouse=True)
def empty_raw_schema(conn):
    conn.execute("drop schema if exists raw cascade")
    conn.commit()


def test_optional_columns_may_be_left_out_of_the_header(conn, tmp_path):
    required = contract.table("customers").required_column_names
    write_csv(tmp_path / DAY.isoformat(), "customers", [customer("c1")], header=required)
    report = loader.load_day(conn, tmp_path, DAY)
    assert report.rows_loaded == 1
    row = conn.execute("select email, phone from raw.customers where customer_id = 'c1'")
    assert row.fetchone() == (None, None)


def order_line(oid: str, line: str, **overrides) -> dict:
    row = {
        "order_id": oid,
        "line_number": line,
        "product_id": "p1",
        "category": "books",
        "quantity": "1",
        "unit_price": "9.90",
    }
    row.update(overrides)
    return row


def quarantined(conn, table: str) -> dict[int, tuple[str, str]]:
    rows = conn.execute(
        "select line_number, rule, reason from raw.quarantine where table_name = %s", (table,)
    ).fetchall()
    return {line: (rule, reason) for line, rule, reason in rows}


@pytest.mark.parametrize("into", ["an empty table", "a table with data"])
def test_a_duplicate_of_a_row_with_an_unknown_reference_is_still_a_duplicate(conn, tmp_path, into):
    # The first row of a key wins even when it is then quarantined for its reference: the
    # later row is a duplicate, not a second chance. Both load paths agree.
    if into == "a table with data":
        earlier = date(2026, 11, 19)
        write_csv(tmp_path / earlier.isoformat(), "customers", [customer("c1")])
        write_csv(tmp_path / earlier.isoformat(), "orders", [order("o0", "c1")])
        loader.load_day(conn, tmp_path, earlier)
    write_csv(tmp_path / DAY.isoformat(), "customers", [customer("c1")])
    write_csv(
        tmp_path / DAY.isoformat(),
        "orders",
        [order("o1", "ghost"), order("o1", "c1"), order("o2", "c1"), order("o2", "c1")],
    )
    report = loader.load_day(conn, tmp_path, DAY)
    orders = {f.table: f for f in report.files}["orders"]
    assert (orders.rows_read, orders.rows_loaded, orders.rows_quarantined) == (4, 1, 3)
    assert quarantined(conn, "orders") == {
        2: ("unknown_customer", "customer_id: unknown customer ghost"),
        3: ("duplicate_id", "order_id: duplicate id o1 (first seen on line 2)"),
        5: ("duplicate_id", "order_id: duplicate id o2 (first seen on line 4)"),
    }
    loaded = conn.execute(
        "select order_id, _source_line from raw.orders where _load_date = %s", (DAY,)
    )
    assert loaded.fetchall() == [("o2", 4)]


def test_composite_keys_compare_as_their_typed_values(conn, tmp_path):
    folder = tmp_path / DAY.isoformat()
    write_csv(folder, "customers", [customer("c1")])
    write_csv(folder, "orders", [order("o1", "c1")])
    write_csv(
        folder,
        "products",
        [{"product_id": "p1", "product_name": "Book", "category": "books", "list_price": "9.90"}],
    )
    write_csv(
        folder,
        "order_lines",
        [
            order_line("o1", "1"),
            order_line("o1", "01"),
            order_line("o1", "2.0"),
            order_line("o9", "1"),
        ],
    )
    report = loader.load_day(conn, tmp_path, DAY)
    assert {f.table: f.rows_loaded for f in report.files}["order_lines"] == 2
    assert quarantined(conn, "order_lines") == {
        3: ("duplicate_id", "order_id: duplicate id o1/1 (first seen on line 2)"),
        5: ("unknown_order", "order_id: unknown order o9"),
    }
    lines = conn.execute("select line_number from raw.order_lines order by 1").fetchall()
    assert lines == [(1,), (2,)]  # '2.0' is a whole number, stored as bigint 2


INTERESTING = [
    "",
    " ",
    "c1",
    " c1 ",
    "\u00a0c1",
    "c1\x1c",
    "Zoë",
    "K\u212a",
    "2026-11-19T09:30:00Z",
    "2026-11-19T09:30:00.5Z",
    "2026-11-19 09:30:00",
    "2026-11-19",
    "2025-02-29T00:00:00Z",
    "2024-02-29T10:00:00Z",
    "2026-11-22T23:59:59Z",
    "2026-11-21T23:59:59Z",
    "1899-12-31T00:00:00Z",
    "2026-04-31",
    "2024-02-29",
    "9999-01-01",
    "0",
    "007",
    "49.90",
    "49.9",
    "-5",
    "1e3",
    "2.0",
    "999999999999.99",
    "1000000000000",
    ".5",
    "a@b.co",
    "Ada.Lovelace@Example.COM",
    "a@b",
    "a b@c.de",
    "ä@b.de",
    "IT",
    "it",
    "ITA",
    "EUR",
    "eur",
    "ß",
    "completed",
    "Completed",
    "teleported",
    "+390669881234",
    "+39 06 6988 1234",
    "12",
    "06 6988 1234",
    # The contract's code lists, bounds and exact numbers.
    "UK",
    "XK",
    "XX",
    "QQQ",
    "XXX",
    "A\x00B",
    "0.005",
    "999999999999.999",
    "1_000",
    "1.00000000000000001",
    "MAR\u212aUS@EXAMPLE.COM",
    "x" * 256,
    "\U0001f600" * 255,
]


@pytest.mark.parametrize("table_name", ["customers", "orders", "loyalty_points"])
def test_the_screen_only_proves_what_the_reference_checks_accept(table_name):
    # Every (column, value) pair of the list, each on its own row beside valid values: a
    # row the screen proves valid must be valid for the reference checks and normalised
    # to the same value.
    raw_table = contract.table(table_name)
    base = {
        "customers": customer("c0", phone="+390669881234"),
        "orders": order("o0", "c0", coupon_code="", discount_total=""),
        "loyalty_points": {
            "entry_id": "l0",
            "customer_id": "c0",
            "occurred_at": "2026-11-19T09:30:00Z",
            "entry_type": "earned",
            "points": "10",
            "expires_at": "2027-11-19",
        },
    }[table_name]
    rows = [dict(base, **{c: v}) for c in raw_table.column_names for v in INTERESTING]
    frame = pd.DataFrame(rows, columns=raw_table.column_names).astype(str)
    frame["_source_line"] = range(2, len(frame) + 2)
    batch = pa.Table.from_pandas(frame, preserve_index=False)
    normalised, proven = loader.screen_batch(raw_table, batch, DAY)
    reference = loader.validate_chunk(raw_table, frame, DAY)
    accepted = reference.valid.set_index("_source_line")
    proven_lines = [
        line for line, ok in zip(frame["_source_line"], proven.to_pylist(), strict=True) if ok
    ]
    assert proven_lines, "the screen proved nothing"
    assert set(proven_lines) <= set(accepted.index)
    for column in raw_table.columns:
        screened = dict(
            zip(frame["_source_line"], normalised[column.name].to_pylist(), strict=True)
        )
        for line in proven_lines:
            mine, theirs = screened[line] or "", accepted.at[line, column.name] or ""
            if column.kind == "timestamp" and mine:
                mine, theirs = pd.Timestamp(mine), pd.Timestamp(theirs)
            if column.kind == "integer" and mine:
                mine, theirs = int(mine), int(theirs)
            assert mine == theirs, (column.name, line)
    # And the strict forms are proven, so the reference checks stay the exception.
    assert len(proven_lines) >= len(raw_table.columns) * 5


def test_values_with_commas_and_quotes_load_unchanged_and_a_line_break_becomes_a_space(
    conn, tmp_path
):
    name = 'Ada "the Countess", of\nLovelace'
    write_csv(tmp_path / DAY.isoformat(), "customers", [customer("c1", first_name=name)])
    loader.load_day(conn, tmp_path, DAY)
    stored = conn.execute("select first_name from raw.customers").fetchone()
    assert stored == ('Ada "the Countess", of Lovelace',)
    kept = conn.execute("select value_as_written from raw.normalised_values").fetchall()
    assert kept == [(name,)]


def test_a_foreign_key_on_a_raw_table_does_not_stop_a_first_load(conn, landing):
    # A first load drops and rebuilds the indexes; a user's foreign key to raw.customers
    # forbids that, and the loader then loads as into a table with data.
    from winback.warehouse import raw_schema

    raw_schema.ensure_raw_schema(conn)
    conn.execute("create table public.vip (customer_id text references raw.customers)")
    conn.commit()
    try:
        report = loader.load_day(conn, landing, DAY)
        by_table = {f.table: f for f in report.files}
        assert (by_table["customers"].rows_read, by_table["customers"].rows_loaded) == (8, 2)
        pkey = conn.execute(
            "select count(*) from pg_constraint where conrelid = 'raw.customers'::regclass "
            "and contype = 'p'"
        ).fetchone()
        assert pkey == (1,)
    finally:
        conn.rollback()
        conn.execute("drop table if exists public.vip")
        conn.commit()


def test_a_first_load_keeps_every_index_of_the_table(conn, landing):
    from winback.warehouse import raw_schema

    raw_schema.ensure_raw_schema(conn)
    conn.commit()
    query = "select indexname, indexdef from pg_indexes where schemaname = 'raw' order by 1"
    before = conn.execute(query).fetchall()
    loader.load_day(conn, landing, DAY)
    assert conn.execute(query).fetchall() == before
    defaults = conn.execute(
        "select table_name, column_name from information_schema.columns "
        "where table_schema = 'raw' and column_name in ('_load_date', '_source_file') "
        "and column_default is not null"
    ).fetchall()
    assert defaults == []  # the lineage defaults of the COPY are gone again


def test_a_file_with_only_its_header_loads_nothing_and_reconciles(conn, tmp_path):
    write_csv(tmp_path / DAY.isoformat(), "customers", [])
    report = loader.load_day(conn, tmp_path, DAY)
    assert (report.rows_read, report.rows_loaded, report.rows_quarantined) == (0, 0, 0)
    assert conn.execute("select count(*) from raw.customers").fetchone() == (0,)


def test_phone_numbers_split_with_the_helper_process_come_back_in_order():
    from winback.ingest import phones

    countries = ["IT", "FR", "DE", "GB", "US", ""]
    pairs = [
        (f"+39 06 {i:08d}"[: 8 + i % 7] if i % 5 else f"0{i:09d}", countries[i % 6])
        for i in range(phones.PARALLEL_FROM + 1)
    ]
    expected = [phones.to_e164(number, country) for number, country in pairs]
    assert any(expected) and not all(expected)
    assert phones.to_e164_many(pairs) == expected
