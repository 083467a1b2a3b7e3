"""What real exports leave empty loads: no category, a guest checkout, no country, fee
products; an unknown product type is still quarantined."""

from __future__ import annotations

from datetime import date

from test_loader import customer, order, write_csv

from winback.ingest import loader
from winback.warehouse import raw_schema

DAY = date(2026, 11, 20)


def test_guest_orders_missing_categories_and_countries_load(conn, tmp_path):
    conn.execute("drop schema if exists raw cascade")
    raw_schema.ensure_raw_schema(conn)
    folder = tmp_path / DAY.isoformat()
    write_csv(
        folder,
        "products",
        [
            {"product_id": "P1", "product_name": "Teapot", "list_price": "20.00"},
            {"product_id": "POST", "product_name": "POSTAGE", "list_price": "18.00",
             "product_type": "shipping"},
            {"product_id": "X", "product_name": "Odd", "list_price": "1.00",
             "product_type": "voucher"},
        ],
        header=["product_id", "product_name", "list_price", "product_type"],
    )  # fmt: skip
    write_csv(
        folder,
        "customers",
        [customer("c1"), customer("c2", country="", phone="+447911123456")],
    )
    write_csv(
        folder,
        "orders",
        [order("o1", "c1"), order("o2", ""), order("o3", "c2")],
    )
    lines = [("o1", "1", "P1"), ("o2", "1", "P1"), ("o2", "2", "POST"), ("o3", "1", "P1")]
    write_csv(
        folder,
        "order_lines",
        [
            {"order_id": o, "line_number": n, "product_id": p, "category": "",
             "quantity": "1", "unit_price": "10.00"}
            for o, n, p in lines
        ],
    )  # fmt: skip
    report = loader.load_day(conn, tmp_path, DAY)
    rules = conn.execute("select table_name, rule from raw.quarantine").fetchall()
    assert [table for table, _ in rules] == ["products"], rules
    assert report.rows_quarantined == 1
    assert conn.execute(
        "select count(*) filter (where customer_id is null), count(*) from raw.orders"
    ).fetchone() == (1, 3)
    assert conn.execute(
        "select country, phone from raw.customers where customer_id = 'c2'"
    ).fetchone() == (None, "+447911123456")
    assert (
        conn.execute("select count(*) from raw.order_lines where category is null").fetchone()[0]
        == 4
    )
    assert (
        conn.execute("select product_type from raw.products where product_id = 'POST'").fetchone()[
            0
        ]
        == "shipping"
    )
