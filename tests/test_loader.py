"""The loader against the real PostgreSQL: contract checks, quarantine, reconciliation."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from winback import contract, loader

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
