"""The bad-input corpus: hostile landing files as shop systems and spreadsheets export them.

Each case is one landing day built around one hostile file, with its expected outcome:
loaded as is, loaded normalised, quarantined with its rule on its true line, or the file
refused with one clear line. For every case the test also holds the loader to what it
promises whatever the input: no exception but a `ContractError`, rows read = loaded +
quarantined for every file, every good row loaded, and a second load of the same day
changes no row of `raw` (quarantine and load batches included; load timestamps aside).
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winback.ingest import contract, loader, read

DAY = date(2026, 11, 20)
CONTROL = re.compile("[\x01-\x1f\x7f-\x9f\u2028\u2029]+")
CUSTOMERS_HEADER = "customer_id,email,phone,first_name,country,created_at"
ORDERS_HEADER = "order_id,customer_id,ordered_at,status,total,currency"
LINES_HEADER = "order_id,line_number,product_id,category,quantity,unit_price"
CONSENTS_HEADER = "consent_id,customer_id,channel,status,recorded_at"
POINTS_HEADER = "entry_id,customer_id,occurred_at,entry_type,points,expires_at"
PRODUCTS_HEADER = "product_id,product_name,category,list_price"


def customer_row(cid: str, **values: str) -> str:
    row = {
        "customer_id": cid,
        "email": f"{cid.lower()}@example.com",
        "phone": "",
        "first_name": "Ada",
        "country": "IT",
        "created_at": "2025-01-01T10:00:00Z",
    }
    row.update(values)
    return ",".join(row.values())


def order_row(oid: str, cid: str = "C1", **values: str) -> str:
    row = {
        "order_id": oid,
        "customer_id": cid,
        "ordered_at": "2026-11-19T09:30:00Z",
        "status": "completed",
        "total": "49.90",
        "currency": "EUR",
    }
    row.update(values)
    return ",".join(row.values())


def csv_text(header: str, *rows: str, end: str = "\n") -> bytes:
    return (end.join([header, *rows]) + end).encode()


BASE_CUSTOMERS = csv_text(CUSTOMERS_HEADER, customer_row("C1"), customer_row("C2"))


def parquet_bytes(frame: pd.DataFrame | pa.Table) -> bytes:
    sink = io.BytesIO()
    if isinstance(frame, pd.DataFrame):
        frame = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(frame, sink)
    return sink.getvalue()


@dataclass
class Case:
    """One landing day: `files` (name -> bytes) beside the two base customers."""

    name: str
    files: dict[str, bytes]
    table: str = ""  # the table of the hostile file
    quarantined: dict[int, str] = field(default_factory=dict)  # line -> rule
    loaded: int = 0  # good rows of that file, all of which must load
    values: dict[str, dict[str, object]] = field(default_factory=dict)  # id -> column -> value
    refused: str = ""  # a phrase of the one-line refusal
    check: Callable | None = None  # anything else, given (conn, folder)


def _assert_normalised(conn, customers: dict, products: dict | None = None) -> None:
    """Each changed value is recorded, as written, beside what was loaded; nothing else."""
    for table, expected in (("customers", customers), ("products", products or {})):
        rows = conn.execute(
            "select line_number, column_name, value_as_written, value_loaded"
            " from raw.normalised_values where table_name = %s",
            (table,),
        ).fetchall()
        assert {(line, column): written for line, column, written, _ in rows} == expected
        for _, _, written, loaded in rows:
            assert loaded == " ".join(CONTROL.sub(" ", written).split(" ")).strip()
            assert not CONTROL.search(loaded)


def long_id(n: int) -> str:
    return "C" + "x" * (n - 1)


def _symlink_case(folder: Path) -> None:
    secret = folder.parent / "secret.txt"
    secret.write_text("root:SECRET-FIRST-LINE:0:0\n")
    (folder / "customers.csv").symlink_to(secret)


def _directory_case(folder: Path) -> None:
    (folder / "customers.csv").mkdir()


def _named_pipe_case(folder: Path) -> None:
    os.mkfifo(folder / "orders.csv")


CASES = [
    # ---------------------------------------------------------------- malformed lines
    Case(
        "last line cut off mid-row",
        {
            "orders.csv": csv_text(ORDERS_HEADER, order_row("O1"), order_row("O2"), end="\n")[:-1]
            + b"\nO0200,C1,2026-01-05T08:"
        },
        "orders",
        {4: "malformed_line"},
        loaded=2,
    ),
    Case(
        "a row with an extra field",
        {
            "orders.csv": csv_text(
                ORDERS_HEADER, order_row("O1"), order_row("O2") + ",surplus", order_row("O3")
            )
        },
        "orders",
        {3: "malformed_line"},
        loaded=2,
    ),
    Case(
        "a row with too few fields",
        {"orders.csv": csv_text(ORDERS_HEADER, "O1,C1,2026-11-19T09:30:00Z", order_row("O2"))},
        "orders",
        {2: "malformed_line"},
        loaded=1,
    ),
    Case(
        "an unterminated quote in the last row",
        {
            "orders.csv": csv_text(
                ORDERS_HEADER, order_row("O1"), 'O2,C1,"2026-11-19T09:30:00Z,completed,1.00,EUR'
            )
        },
        "orders",
        {3: "malformed_line"},
        loaded=1,
    ),
    Case(
        "a final line of three spaces",
        {"orders.csv": csv_text(ORDERS_HEADER, order_row("O1"), order_row("O2"), "   ")},
        "orders",
        {4: "malformed_line"},
        loaded=2,
    ),
    Case(
        "blank lines and a quoted line break before a broken row: true line numbers",
        {
            "customers.csv": csv_text(
                CUSTOMERS_HEADER,
                customer_row("C1"),
                "",
                customer_row("C2", first_name='"Ada\nLovelace"'),
                "",
                "",
                customer_row("C3", email="not-an-email"),
                customer_row("C4", first_name='"two\n\nbreaks"'),
                "C5,bad",
            )
        },
        "customers",
        {8: "malformed_email", 12: "malformed_line"},
        loaded=3,
        # Line breaks in a name become one space (the value as written is kept).
        values={"C2": {"first_name": "Ada Lovelace"}, "C4": {"first_name": "two breaks"}},
        check=lambda conn, folder: _assert_normalised(
            conn, {(4, "first_name"): "Ada\nLovelace", (9, "first_name"): "two\n\nbreaks"}
        ),
    ),
    Case(
        "CRLF line endings with a broken row",
        {
            "orders.csv": csv_text(
                ORDERS_HEADER,
                order_row("O1"),
                order_row("O2", total="x"),
                order_row("O3", status="cancelled"),
                end="\r\n",
            )
        },
        "orders",
        {3: "non_numeric_amount"},
        loaded=2,
        values={"O3": {"status": "cancelled", "currency": "EUR"}},
    ),
    Case(
        "a UTF-8 byte-order mark and CRLF",
        {"orders.csv": codecs.BOM_UTF8 + csv_text(ORDERS_HEADER, order_row("O1"), end="\r\n")},
        "orders",
        loaded=1,
        values={"O1": {"customer_id": "C1"}},
    ),
    Case(
        "a row of empty fields is a row, a blank line is not",
        {"orders.csv": csv_text(ORDERS_HEADER, order_row("O1"), ",,,,,", "", order_row("O2"))},
        "orders",
        {3: "missing_value"},
        loaded=2,
    ),
    Case(
        "only blank lines after the header",
        {"consents.csv": csv_text(CONSENTS_HEADER, "", "")},
        "consents",
    ),
    Case(
        "a header without a final newline",
        {"consents.csv": CONSENTS_HEADER.encode()},
        "consents",
    ),
    Case("a header with a final newline", {"consents.csv": csv_text(CONSENTS_HEADER)}, "consents"),
    # ---------------------------------------------------------------- numbers
    Case(
        "an amount that rounds past its column",
        {
            "orders.csv": csv_text(
                ORDERS_HEADER,
                order_row("O1", total="999999999999.999"),
                order_row("O2", total="999999999999.99"),
            )
        },
        "orders",
        {2: "too_precise"},
        loaded=1,
        values={"O2": {"total": "999999999999.99"}},
    ),
    Case(
        "more decimals than the column keeps",
        {
            "orders.csv": csv_text(
                ORDERS_HEADER,
                order_row("O1", total="0.005"),
                order_row("O2", total="49.900"),
                order_row("O3", total="1e3"),
            )
        },
        "orders",
        {2: "too_precise"},
        loaded=2,
        values={"O2": {"total": "49.90"}, "O3": {"total": "1000.00"}},
    ),
    Case(
        "numbers Python reads but PostgreSQL does not",
        {
            "orders.csv": csv_text(
                ORDERS_HEADER,
                order_row("O1", total="1_000"),
                order_row("O2", total="NaN"),
                order_row("O3", total="Infinity"),
                order_row("O4", total="\u0661\u0662"),
                order_row("O5", total="1e999999"),
                order_row("O6", total="+.5"),
            )
        },
        "orders",
        {
            2: "non_numeric_amount",
            3: "non_numeric_amount",
            4: "non_numeric_amount",
            5: "non_numeric_amount",
            6: "amount_out_of_range",
        },
        loaded=1,
        values={"O6": {"total": "0.50"}},
    ),
    Case(
        "whole numbers written as decimals, and ones that are not whole",
        {
            "order_lines.csv": csv_text(
                LINES_HEADER,
                "O1,1,P1,shoes,1.00000000000000001,9.90",
                "O1,2,P1,shoes,2.0,9.90",
                "O1,3.0,P1,shoes,1e1,9.90",
                "O1,4,P1,shoes,1000000000000,9.90",
            ),
            "orders.csv": csv_text(ORDERS_HEADER, order_row("O1")),
            "products.csv": csv_text(PRODUCTS_HEADER, "P1,Shoe,shoes,9.90"),
        },
        "order_lines",
        {2: "not_whole_number", 5: "integer_out_of_range"},
        loaded=2,
    ),
    Case(
        "extreme signed integers",
        {
            "loyalty_points.csv": csv_text(
                POINTS_HEADER,
                "L1,C1,2026-11-19T09:30:00Z,earned,999999999999,",
                "L2,C1,2026-11-19T09:30:00Z,spent,-999999999999,9999-12-31",
                "L3,C1,2026-11-19T09:30:00Z,spent,-1000000000000,",
            )
        },
        "loyalty_points",
        {4: "integer_out_of_range"},
        loaded=2,
        values={"L1": {"points": 999999999999}, "L2": {"points": -999999999999}},
    ),
    # ---------------------------------------------------------------- text
    Case(
        "ids of 3,000 and 10,000 characters",
        {
            "customers.csv": csv_text(
                CUSTOMERS_HEADER,
                customer_row(long_id(3000)),
                customer_row(long_id(10000)),
                customer_row("C1"),
            )
        },
        "customers",
        {2: "value_too_long", 3: "value_too_long"},
        loaded=1,
    ),
    Case(
        "the longest id, in four-byte characters, fits the index",
        {
            "customers.csv": csv_text(
                CUSTOMERS_HEADER,
                customer_row("\U0001f600" * 255, email="e@example.com"),
                customer_row("C1"),
            )
        },
        "customers",
        loaded=2,
    ),
    Case(
        "a NUL byte in a name and in an id",
        {
            "customers.csv": csv_text(
                CUSTOMERS_HEADER,
                customer_row("C1", first_name="A\x00B"),
                customer_row("C\x002"),
                customer_row("C3"),
            )
        },
        "customers",
        {2: "invalid_character", 3: "invalid_character"},
        loaded=1,
        check=lambda conn, folder: _assert_record(conn, 2, "first_name", "A\\u0000B"),
    ),
    Case(
        "names at and past their bound",
        {
            "customers.csv": csv_text(
                CUSTOMERS_HEADER,
                customer_row("C1", first_name="é" * 200),
                customer_row("C2", first_name="é" * 201),
            )
        },
        "customers",
        {3: "value_too_long"},
        loaded=1,
    ),
    Case(
        "formula, SQL-looking and emoji text is stored byte for byte",
        {
            "customers.csv": csv_text(
                CUSTOMERS_HEADER,
                customer_row("C1", first_name='"=HYPERLINK(""http://x"",""y"")"'),
                customer_row("C2", first_name="'); drop table raw.customers; --"),
                customer_row("C3", first_name="Zoë 👩‍👩‍👧 ∑"),
                customer_row("C4", first_name='"Lovelace, Ada ""the Countess"""'),
            )
        },
        "customers",
        loaded=4,
        values={
            "C1": {"first_name": '=HYPERLINK("http://x","y")'},
            "C2": {"first_name": "'); drop table raw.customers; --"},
            "C3": {"first_name": "Zoë 👩‍👩‍👧 ∑"},
            "C4": {"first_name": 'Lovelace, Ada "the Countess"'},
        },
    ),
    Case(
        "COPY's end-of-data marker inside values",
        {
            "customers.csv": csv_text(
                CUSTOMERS_HEADER,
                customer_row("C1", first_name='"a\n\\.\nb"'),
                customer_row("C2", first_name="\\."),
                customer_row("C3", first_name='"\\.\nx"'),
                customer_row('"C4\n\\.\nx"', email="c4@example.com"),
            )
        },
        "customers",
        loaded=4,
        values={
            "C1": {"first_name": "a \\. b"},
            "C2": {"first_name": "\\."},
            "C3": {"first_name": "\\. x"},
            "C4\n\\.\nx": {"customer_id": "C4\n\\.\nx"},  # ids are never changed
        },
    ),
    Case(
        "control and line-break characters in names become spaces",
        {
            "customers.csv": csv_text(
                CUSTOMERS_HEADER,
                customer_row("C1", first_name='"Eve\r\nBcc: x@y.test"'),
                customer_row("C2", first_name="Eve\x0bX\x0cY"),
                customer_row("C3", first_name="Eve\x85X\u2028Y\u2029Z"),
                customer_row("C4", first_name="Eve\tX\x1b[31mY\x7fZ"),
                customer_row("C5", first_name="\x1cEve\x1d"),
                customer_row("C6", first_name="Eve\x00X"),
                customer_row("C7", first_name="Zoë"),
            ),
            "products.csv": csv_text(
                PRODUCTS_HEADER, 'P1,"Mug\r\nBcc",Home,9.90', "P2,Plain mug,Home,9.90"
            ),
        },
        "customers",
        {8: "invalid_character"},  # NUL: PostgreSQL text cannot hold it
        loaded=6,
        values={
            "C1": {"first_name": "Eve Bcc: x@y.test"},
            "C2": {"first_name": "Eve X Y"},
            "C3": {"first_name": "Eve X Y Z"},
            "C4": {"first_name": "Eve X [31mY Z"},
            "C5": {"first_name": "Eve"},
            "C7": {"first_name": "Zoë"},
        },
        check=lambda conn, folder: _assert_normalised(
            conn,
            {
                (2, "first_name"): "Eve\r\nBcc: x@y.test",
                (4, "first_name"): "Eve\x0bX\x0cY",
                (5, "first_name"): "Eve\x85X\u2028Y\u2029Z",
                (6, "first_name"): "Eve\tX\x1b[31mY\x7fZ",
            },
            products={(2, "product_name"): "Mug\r\nBcc"},
        ),
    ),
    # ---------------------------------------------------------------- codes and e-mails
    Case(
        "country codes: unknown, reserved, user-assigned, lower case",
        {
            "customers.csv": csv_text(
                CUSTOMERS_HEADER,
                customer_row("C1", country="XX"),
                customer_row("C2", country="ZZ"),
                customer_row("C3", country="UK"),
                customer_row("C4", country="XK"),
                customer_row("C5", country="it"),
                customer_row("C6", country="ß"),
            )
        },
        "customers",
        {2: "invalid_country", 3: "invalid_country", 7: "invalid_country"},
        loaded=3,
        values={"C3": {"country": "GB"}, "C4": {"country": "XK"}, "C5": {"country": "IT"}},
    ),
    Case(
        "currency codes: unknown, no-currency, lower case",
        {
            "orders.csv": csv_text(
                ORDERS_HEADER,
                order_row("O1", currency="ABC"),
                order_row("O2", currency="QQQ"),
                order_row("O3", currency="XXX"),
                order_row("O4", currency="eur"),
                order_row("O5", currency="CHF"),
            )
        },
        "orders",
        {2: "invalid_currency", 3: "invalid_currency", 4: "invalid_currency"},
        loaded=2,
        values={"O4": {"currency": "EUR"}, "O5": {"currency": "CHF"}},
    ),
    Case(
        "e-mails: a KELVIN SIGN is not folded into k, ASCII is lower-cased",
        {
            "customers.csv": csv_text(
                CUSTOMERS_HEADER,
                customer_row("C1", email="MAR\u212aUS@EXAMPLE.COM"),
                customer_row("C2", email="Ada.Lovelace@Example.COM"),
                customer_row("C3", email="x" * 250 + "@example.com"),
            )
        },
        "customers",
        {2: "malformed_email", 4: "value_too_long"},
        loaded=1,
        values={"C2": {"email": "ada.lovelace@example.com"}},
    ),
    # ---------------------------------------------------------------- time
    Case(
        "time-zone offsets, naive times and impossible days",
        {
            "orders.csv": csv_text(
                ORDERS_HEADER,
                order_row("O1", ordered_at="2026-11-19T09:30:00+05:30"),
                order_row("O2", ordered_at="2026-11-19 09:30"),
                order_row("O3", ordered_at="2026-02-30T00:00:00Z"),
                order_row("O4", ordered_at="2026-11-21T09:30:00-10:00"),
                order_row("O5", ordered_at="0001-01-01T00:00:00Z"),
            )
        },
        "orders",
        {4: "unparseable_timestamp", 5: "future_timestamp"},
        loaded=3,
        values={
            "O1": {"ordered_at": "2026-11-19 04:00:00+00"},
            "O2": {"ordered_at": "2026-11-19 09:30:00+00"},
            "O5": {"ordered_at": "0001-01-01 00:00:00+00"},
        },
    ),
    # ---------------------------------------------------------------- keys as written
    Case(
        "an unknown customer keeps its row as written",
        {
            "orders.csv": csv_text(
                ORDERS_HEADER,
                order_row("O1"),
                order_row("O2", "GHOST", ordered_at="2026-10-01T12:00:00Z", currency=" eur "),
            )
        },
        "orders",
        {3: "unknown_customer"},
        loaded=1,
        check=lambda conn, folder: _assert_record(conn, 3, "ordered_at", "2026-10-01T12:00:00Z"),
    ),
    Case(
        "a duplicate id keeps its row as written",
        {
            "customers.csv": csv_text(
                CUSTOMERS_HEADER,
                customer_row("C1"),
                customer_row(
                    " C1 ",
                    email="C1@EXAMPLE.COM",
                    phone="+39 06 6988 1234",
                    created_at="2025-01-01 10:00",
                ),
            )
        },
        "customers",
        {3: "duplicate_id"},
        loaded=1,
        check=lambda conn, folder: _assert_record(conn, 3, "phone", "+39 06 6988 1234"),
    ),
    # ---------------------------------------------------------------- parquet
    Case(
        "parquet with typed columns",
        {
            "orders.parquet": parquet_bytes(
                pd.DataFrame(
                    {
                        "order_id": ["O1", "O2"],
                        "customer_id": ["C1", "C2"],
                        "ordered_at": pd.to_datetime(
                            ["2026-11-19T09:30:00Z", "2026-11-19T10:00:00Z"]
                        ),
                        "status": ["completed", "pending"],
                        "total": [49.9, 0.1 + 0.2],
                        "currency": ["EUR", "EUR"],
                    }
                )
            )
        },
        "orders",
        {2: "too_precise"},
        loaded=1,
        values={"O1": {"total": "49.90", "ordered_at": "2026-11-19 09:30:00+00"}},
    ),
    Case(
        "parquet integers stored as floats",
        {
            "loyalty_points.parquet": parquet_bytes(
                pd.DataFrame(
                    {
                        "entry_id": ["L1", "L2"],
                        "customer_id": ["C1", "C1"],
                        "occurred_at": ["2026-11-19T09:30:00Z"] * 2,
                        "entry_type": ["earned", "spent"],
                        "points": [10.0, 2.5],
                    }
                )
            )
        },
        "loyalty_points",
        {2: "not_whole_number"},
        loaded=1,
        values={"L1": {"points": 10}},
    ),
    # ---------------------------------------------------------------- refused files
    Case(
        "latin-1 text",
        {
            "customers.csv": csv_text(
                CUSTOMERS_HEADER,
                customer_row("C1"),
                customer_row("C2"),
                customer_row("C3"),
                "C4,,,José,ES,2025-01-01T10:00:00Z",
            ).replace("José".encode(), "José".encode("latin-1"))
        },
        refused="customers.csv: not UTF-8 (byte 0xe9 at line 5); export it as UTF-8",
    ),
    Case(
        "a character cut in two at the end of the file",
        {"customers.csv": BASE_CUSTOMERS + b"C3,c3@example.com,,Jos" + b"\xc3"},
        refused="customers.csv: not UTF-8 (byte 0xc3 at line 4)",
    ),
    Case(
        "UTF-16 with its byte-order mark",
        {"customers.csv": codecs.BOM_UTF16_LE + BASE_CUSTOMERS.decode().encode("utf-16-le")},
        refused="customers.csv: not UTF-8 (it starts with the UTF-16 byte-order mark ff fe)",
    ),
    Case(
        "UTF-16 without a byte-order mark",
        {"customers.csv": BASE_CUSTOMERS.decode().encode("utf-16-be")},
        refused="customers.csv: not UTF-8 (NUL bytes in the header line",
    ),
    Case(
        "UTF-32",
        {"customers.csv": BASE_CUSTOMERS.decode().encode("utf-32")},
        refused="customers.csv: not UTF-8 (it starts with the UTF-32 byte-order mark",
    ),
    Case(
        "CSV text named .parquet",
        {"orders.parquet": csv_text(ORDERS_HEADER, order_row("O1"))},
        refused="orders.parquet: not a Parquet file",
    ),
    Case(
        "a parquet file cut in half",
        {"orders.parquet": parquet_bytes(pd.DataFrame({"order_id": ["O1"] * 100}))[:300]},
        refused="orders.parquet: not a Parquet file",
    ),
    Case(
        "a parquet text column that is not UTF-8",
        {
            "orders.parquet": parquet_bytes(
                pa.table(
                    {
                        name: pa.array([b"x", b"Jos\xe9"], pa.binary())
                        for name in ORDERS_HEADER.split(",")
                    }
                )
            )
        },
        refused="orders.parquet: a Parquet column cannot be read as text",
    ),
    Case("an empty file", {"orders.csv": b""}, refused="orders.csv: refused, the file is empty"),
    Case(
        "a missing column",
        {"orders.csv": csv_text("order_id,customer_id,ordered_at,status,total", "O1,C1,x,y,1")},
        refused="orders.csv: refused, the header does not match the orders contract",
    ),
    Case(
        "a repeated column",
        {"orders.csv": csv_text(ORDERS_HEADER + ",total", order_row("O1") + ",1")},
        refused="repeated: total",
    ),
    Case(
        "an extra column",
        {"orders.csv": csv_text(ORDERS_HEADER + ",gift_wrap", order_row("O1") + ",yes")},
        refused="unexpected: gift_wrap",
    ),
    Case(
        "a ;-delimited export",
        {
            "orders.csv": csv_text(
                ORDERS_HEADER.replace(",", ";"), order_row("O1").replace(",", ";")
            )
        },
        refused="The header is one column: winback reads comma-separated files",
    ),
    Case(
        "a parquet file with a repeated column",
        {
            "orders.parquet": parquet_bytes(
                pa.Table.from_arrays(
                    [pa.array(["x"])] * 7, names=[*ORDERS_HEADER.split(","), "total"]
                )
            )
        },
        refused="repeated: total",
    ),
    Case(
        "an unknown file",
        {"returns.csv": csv_text("return_id", "R1")},
        refused="returns.csv: not a winback input file",
    ),
    Case(
        "an upper-case suffix",
        {"consents.CSV": csv_text(CONSENTS_HEADER)},
        refused="consents.CSV: not a winback input file (names are lower case: consents.csv)",
    ),
    Case(
        "two files for one table",
        {
            "orders.csv": csv_text(ORDERS_HEADER, order_row("O1")),
            "orders.parquet": parquet_bytes(pd.DataFrame({"order_id": ["O1"]})),
        },
        refused="deliver orders",
    ),
    Case(
        "a symbolic link",
        {"customers.csv": _symlink_case},
        refused="customers.csv: refused, a symbolic link",
    ),
    Case(
        "a named pipe",
        {"orders.csv": _named_pipe_case},
        refused="orders.csv: refused, not a regular file",
    ),
    Case(
        "a trailing comma in the header",
        {"orders.csv": csv_text(ORDERS_HEADER + ",", order_row("O1") + ",")},
        refused="unexpected: (empty)",
    ),
    Case(
        "a folder named like a file",
        {"customers.csv": _directory_case},
        refused="customers.csv: refused, a folder where a file was expected",
    ),
]


def _assert_record(conn, line: int, column: str, expected: str) -> None:
    record = conn.execute(
        "select raw_record from raw.quarantine where line_number = %s", (line,)
    ).fetchone()[0]
    assert record[column] == expected, record


def write_day(root: Path, case: Case) -> Path:
    folder = root / DAY.isoformat()
    folder.mkdir(parents=True)
    files = dict(case.files)
    if not any(name.startswith("customers.") for name in files):
        files["customers.csv"] = BASE_CUSTOMERS
    for name, content in files.items():
        if callable(content):
            content(folder)
        else:
            (folder / name).write_bytes(content)
    return folder


def snapshot(conn) -> dict[str, list]:
    """Every row of `raw` but its load timestamps."""
    tables = {t.name: "_loaded_at" for t in contract.TABLES}
    tables.update(
        {
            "quarantine": "quarantined_at",
            "load_batches": "loaded_at",
            "normalised_values": "normalised_at",
        }
    )
    present = {
        name
        for (name,) in conn.execute(
            "select table_name from information_schema.tables where table_schema = 'raw'"
        )
    }
    return {
        name: conn.execute(
            f"select to_jsonb(t) - %s from raw.{name} t order by to_jsonb(t) - %s::text", (ts, ts)
        ).fetchall()
        for name, ts in tables.items()
        if name in present
    }


@pytest.fixture(autouse=True)
def empty_raw_schema(conn):
    conn.execute("drop schema if exists raw cascade")
    conn.commit()


def test_the_corpus_has_forty_hostile_files():
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_hostile_file_loads_as_expected(conn, tmp_path, case: Case):
    folder = write_day(tmp_path, case)
    if case.refused:
        with pytest.raises(loader.ContractError) as refusal:
            loader.load_day(conn, tmp_path, DAY)
        message = str(refusal.value)
        assert case.refused in message
        assert "\n" not in message and len(message) < 600
        assert "SECRET" not in message
        conn.rollback()
        batches = conn.execute("select to_regclass('raw.load_batches')").fetchone()[0]
        if batches is not None:
            assert conn.execute("select count(*) from raw.load_batches").fetchone()[0] == 0
        return

    report = loader.load_day(conn, tmp_path, DAY)
    conn.commit()
    for file in report.files:
        assert file.rows_read == file.rows_loaded + file.rows_quarantined, file
    mine = {f.table: f for f in report.files}[case.table]
    assert mine.rows_loaded == case.loaded
    quarantined = dict(
        conn.execute(
            "select line_number, rule from raw.quarantine where table_name = %s", (case.table,)
        ).fetchall()
    )
    assert quarantined == case.quarantined
    assert mine.rows_quarantined == len(case.quarantined)
    raw_table = contract.table(case.table)
    key = raw_table.primary_key[0]
    loaded = conn.execute(f"select count(*) from raw.{case.table}").fetchone()[0]
    assert loaded == case.loaded
    for row_id, expected in case.values.items():
        row = conn.execute(
            f"select to_jsonb(t) from raw.{case.table} t where {key} = %s", (row_id,)
        ).fetchone()
        assert row is not None, row_id
        for column, value in expected.items():
            stored = row[0][column]
            if isinstance(value, str) and column in ("total", "ordered_at"):
                stored = conn.execute(
                    f"select {column}::text from raw.{case.table} where {key} = %s", (row_id,)
                ).fetchone()[0]
            assert stored == value, (row_id, column, stored)
    if case.check:
        case.check(conn, folder)

    before = snapshot(conn)
    loader.load_day(conn, tmp_path, DAY)
    conn.commit()
    assert snapshot(conn) == before


def test_malformed_lines_are_found_past_the_first_block(conn, tmp_path, monkeypatch):
    # Blocks of 512 bytes: ~7 rows each, so rows, broken lines, quoted line breaks and
    # blank lines fall on both sides of many block boundaries.
    monkeypatch.setattr(read, "BLOCK_BYTES", 512)
    rows, expected, line = [], {}, 2
    for n in range(1, 301):
        if n % 13 == 0:
            rows.append(f"O{n},C1")  # too few fields
            expected[line] = "malformed_line"
            line += 1
        elif n % 17 == 0:
            rows.append(order_row(f"O{n}", status='"completed\nor not"'))
            expected[line] = "unexpected_value"
            line += 2
        elif n % 19 == 0:
            rows.append(order_row(f"O{n}") + "\n")  # and a blank line after it
            line += 2
        else:
            rows.append(order_row(f"O{n}"))
            line += 1
    folder = tmp_path / DAY.isoformat()
    folder.mkdir()
    (folder / "customers.csv").write_bytes(BASE_CUSTOMERS)
    (folder / "orders.csv").write_bytes(csv_text(ORDERS_HEADER, *rows))
    report = loader.load_day(conn, tmp_path, DAY)
    orders = {f.table: f for f in report.files}["orders"]
    assert (orders.rows_read, orders.rows_quarantined) == (300, len(expected))
    found = dict(
        conn.execute(
            "select line_number, rule from raw.quarantine where table_name = 'orders'"
        ).fetchall()
    )
    assert found == expected
    # The loaded rows carry their true lines too.
    lines = dict(conn.execute("select order_id, _source_line from raw.orders").fetchall())
    assert lines["O300"] == line - 1


def test_the_cli_prints_a_refusal_as_one_line_and_fails(tmp_path):
    folder = tmp_path / DAY.isoformat()
    folder.mkdir()
    (folder / "customers.csv").write_bytes(
        BASE_CUSTOMERS + "C3,,,José,ES,2025-01-01T10:00:00Z\n".encode("latin-1")
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "winback.cli",
            "load",
            "--date",
            DAY.isoformat(),
            "--landing",
            str(tmp_path),
            "--without-manifest",  # a hand-made folder (a manifest would be checked first)
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "winback load: refused: customers.csv: not UTF-8 (byte 0xe9 at line 4); export it as UTF-8"
    ]


def test_the_airflow_task_logs_a_refusal_as_one_line_and_fails(tmp_path, caplog, monkeypatch):
    from winback import config, pipeline

    # A hand-made folder: the task's manifest check would refuse it first (one line too).
    monkeypatch.setenv(config.REQUIRE_MANIFEST_ENV, "false")

    folder = tmp_path / DAY.isoformat()
    folder.mkdir()
    (folder / "returns.csv").write_bytes(b"return_id\nR1\n")
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exit_:
        pipeline.load_raw_files(DAY.isoformat(), str(tmp_path))
    # Airflow's task runner logs a SystemExit as "Task exited" with its code, no traceback.
    assert exit_.value.code == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert errors[0].getMessage().startswith("load refused: returns.csv: not a winback input")


def test_no_log_line_holds_a_value_from_a_row(conn, tmp_path, caplog):
    secret = "ada.secret@example.com"
    folder = tmp_path / DAY.isoformat()
    folder.mkdir()
    (folder / "customers.csv").write_bytes(
        csv_text(
            CUSTOMERS_HEADER,
            customer_row("C1", email=secret),
            f"C2,{secret},broken",
            customer_row("C3", email=secret.upper() + "x@"),
            customer_row("C1", email=secret),
        )
    )
    with caplog.at_level(logging.DEBUG):
        report = loader.load_day(conn, tmp_path, DAY)
    assert report.rows_quarantined == 3
    assert caplog.records, "the loader logs its counts"
    for record in caplog.records:
        assert "secret" not in record.getMessage().lower()


def test_a_refused_day_logs_no_counts_and_leaves_nothing(conn, tmp_path, caplog):
    # orders.csv loads after customers.csv; its bad byte rolls back the whole day, and no
    # log line claims customers.csv was loaded.
    folder = tmp_path / DAY.isoformat()
    folder.mkdir()
    (folder / "customers.csv").write_bytes(BASE_CUSTOMERS)
    (folder / "orders.csv").write_bytes(csv_text(ORDERS_HEADER, order_row("O1")) + b"\xff\n")
    with caplog.at_level(logging.INFO), pytest.raises(loader.ContractError, match="line 3"):
        loader.load_day(conn, tmp_path, DAY)
    conn.rollback()
    assert not [r for r in caplog.records if "loaded" in r.getMessage()]
    table = conn.execute("select to_regclass('raw.customers')").fetchone()[0]
    assert table is None or conn.execute("select count(*) from raw.customers").fetchone()[0] == 0


def test_the_extreme_value_of_every_column_type_loads(conn, tmp_path):
    # Nothing that passes the checks may fail inside COPY or an index build.
    big = "\U0001f600"  # four bytes in UTF-8
    cid, oid, pid = big * 255, "O" + big * 254, "P" + big * 254
    email = "a" * 64 + "@" + ("b" * 60 + ".") * 3 + "c" * 6  # 254 characters
    assert len(email) == 254
    folder = tmp_path / DAY.isoformat()
    folder.mkdir()
    files = {
        "products.csv": csv_text(PRODUCTS_HEADER, f"{pid},{big * 200},{big * 200},999999999999.99"),
        "customers.csv": csv_text(
            CUSTOMERS_HEADER,
            f"{cid},{email},{'+39 06 6988 1234' + ' ' * 40},{big * 200},XK,0001-01-01T00:00:00Z",
        ),
        "orders.csv": csv_text(
            ORDERS_HEADER + ",coupon_code,discount_total",
            f"{oid},{cid},2026-11-21T13:59:59Z,pending,999999999999.99,XDR,{big * 1000},0.01",
        ),
        "order_lines.csv": csv_text(
            LINES_HEADER, f"{oid},999999999999,{pid},{big * 200},999999999999,0.00"
        ),
        "loyalty_points.csv": csv_text(
            POINTS_HEADER,
            f"{'L' + big * 254},{cid},2026-11-20T23:59:59-14:00,spent,-999999999999,9999-12-31",
        ),
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    report = loader.load_day(conn, tmp_path, DAY)
    assert report.rows_quarantined == 0, conn.execute(
        "select reason from raw.quarantine"
    ).fetchall()
    assert report.rows_loaded == 5
    total, points = conn.execute(
        "select o.total::text, p.points from raw.orders o, raw.loyalty_points p"
    ).fetchone()
    assert (total, points) == ("999999999999.99", -999999999999)


@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_rows_read_back_by_line_are_the_rows_as_read(tmp_path, monkeypatch, end):
    # Rows rejected after their COPY get their raw_record from `csv_rows_at`; it must give
    # exactly what the block reader gave, or a reload would rewrite raw.quarantine.
    monkeypatch.setattr(read, "SCAN_BYTES", 64)
    monkeypatch.setattr(read, "BLOCK_BYTES", 256)
    rows = []
    for n in range(60):
        name = ['"Ada\nLovelace"', '"say ""hi"""', " Zoë ", '"a\r\nb"', "", '"x,y"'][n % 6]
        rows.append(customer_row(f"C{n}", first_name=name))
        if n % 7 == 0:
            rows.append("")
    path = tmp_path / "customers.csv"
    path.write_bytes(codecs.BOM_UTF8 + csv_text(CUSTOMERS_HEADER, *rows, end=end))
    columns = contract.table("customers").column_names
    as_read = {}
    for block in read.read_batches(path, columns):
        for row in block.rows.to_pylist():
            line = row.pop("_source_line")
            as_read[line] = row
    assert len(as_read) == 60
    assert read.csv_rows_at(path, columns, sorted(as_read)) == as_read
