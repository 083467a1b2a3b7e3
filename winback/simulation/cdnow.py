"""The real CDNOW transaction log (shipped inside lifetimes) as winback input files.

`CDNOW_master.txt` holds 69,659 transactions of 23,570 customers who made their first
purchase in the first quarter of 1997, followed until the end of June 1998;
`CDNOW_sample.txt` is the 2,357-customer sample Fader, Hardie & Lee (2005) fit the BG/NBD
model on. CDNOW published no contact data, so emails, phones and consents are derived
deterministically from the customer id: the same import always gives the same files.
"""

from __future__ import annotations

import hashlib
from datetime import date
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from winback.ingest.contract import TABLES

CDNOW_CALIBRATION_START = date(1997, 1, 1)
CDNOW_CALIBRATION_END = date(1997, 9, 30)
CDNOW_END = date(1998, 6, 30)
PRODUCT_ID = "CD"


def _dataset(name: str) -> Path:
    return Path(str(resources.files("lifetimes") / "datasets" / name))


def read_cdnow_transactions(path: Path | None = None) -> pd.DataFrame:
    """customer_id, date, cds, amount of the master log."""
    frame = pd.read_csv(
        path or _dataset("CDNOW_master.txt"),
        sep=r"\s+",
        skiprows=1,
        names=["customer_id", "date", "cds", "amount"],
        dtype={"customer_id": str, "date": str},
    )
    frame["date"] = pd.to_datetime(frame["date"], format="%Y%m%d").dt.date
    return frame


def read_cdnow_sample(path: Path | None = None) -> pd.DataFrame:
    """The 2,357-customer sample: customer_id (master id), date, cds, amount."""
    frame = pd.read_csv(
        path or _dataset("CDNOW_sample.txt"),
        sep=r"\s+",
        names=["customer_id", "sample_id", "date", "cds", "amount"],
        dtype={"customer_id": str, "sample_id": str, "date": str},
    )
    frame["date"] = pd.to_datetime(frame["date"], format="%Y%m%d").dt.date
    return frame.drop(columns=["sample_id"])


def _unit(customer_ids: pd.Series, salt: str) -> np.ndarray:
    return np.array(
        [
            int(hashlib.sha256(f"{salt}:{c}".encode()).hexdigest()[:8], 16) / 2**32
            for c in customer_ids
        ]
    )


def cdnow_frames(sample: bool = False, path: Path | None = None) -> dict[str, pd.DataFrame]:
    """The CDNOW log in the input contract's shape (all values as text)."""
    transactions = read_cdnow_sample(path) if sample else read_cdnow_transactions(path)
    transactions = transactions.sort_values(["customer_id", "date"], kind="stable")
    transactions["n"] = transactions.groupby("customer_id").cumcount() + 1
    order_ids = "cdnow-" + transactions["customer_id"] + "-" + transactions["n"].astype(str)
    ordered_at = pd.to_datetime(transactions["date"]).dt.strftime("%Y-%m-%dT12:00:00Z")

    first = transactions.groupby("customer_id", sort=True)["date"].min()
    ids = pd.Series(first.index)
    has_email = _unit(ids, "email") < 0.9
    has_phone = _unit(ids, "phone") < 0.5
    digits = (_unit(ids, "number") * 10_000).astype(int)
    customers = pd.DataFrame(
        {
            "customer_id": ids,
            "email": np.where(has_email, "cdnow." + ids + "@example.com", ""),
            "phone": np.where(has_phone, [f"+1201555{d:04d}" for d in digits], ""),
            "first_name": "",
            "country": "US",
            "created_at": pd.to_datetime(first.to_numpy()).strftime("%Y-%m-%dT00:00:00Z"),
        }
    )
    granted = has_email & (_unit(ids, "consent") < 0.7)
    withdrawn = granted & (_unit(ids, "withdraw") < 0.15)
    consent_rows = []
    for index in np.flatnonzero(granted):
        customer = ids.iloc[index]
        created = customers["created_at"].iloc[index]
        consent_rows.append((f"cdnow-k-{customer}-1", customer, "granted", created, "checkout"))
        if withdrawn[index]:
            consent_rows.append(
                (
                    f"cdnow-k-{customer}-2",
                    customer,
                    "withdrawn",
                    "1997-12-31T00:00:00Z",
                    "unsubscribe_link",
                )
            )
    consents = pd.DataFrame(
        consent_rows, columns=["consent_id", "customer_id", "status", "recorded_at", "source"]
    )
    consents.insert(2, "channel", "email_newsletter")

    amounts = transactions["amount"].clip(lower=0).map("{:.2f}".format)
    orders = pd.DataFrame(
        {
            "order_id": order_ids,
            "customer_id": transactions["customer_id"],
            "ordered_at": ordered_at,
            "status": "completed",
            "total": amounts,
            "currency": "USD",
            "coupon_code": "",
            "discount_total": "",
        }
    )
    cds = transactions["cds"].clip(lower=1)
    order_lines = pd.DataFrame(
        {
            "order_id": order_ids,
            "line_number": "1",
            "product_id": PRODUCT_ID,
            "category": "music",
            "quantity": cds.astype(str),
            "unit_price": (transactions["amount"].clip(lower=0) / cds).map("{:.2f}".format),
        }
    )
    products = pd.DataFrame(
        {
            "product_id": [PRODUCT_ID],
            "product_name": ["CD"],
            "category": ["music"],
            "list_price": ["0.00"],
            "product_type": ["merchandise"],
        }
    )
    frames = {
        "products": products,
        "customers": customers,
        "orders": orders,
        "order_lines": order_lines,
        "consents": consents,
    }
    for raw_table in TABLES:  # the other tables: present, with their headers, and empty
        frames.setdefault(raw_table.name, pd.DataFrame(columns=raw_table.column_names))
    return {name: frame.reset_index(drop=True) for name, frame in frames.items()}
