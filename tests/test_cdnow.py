"""The CDNOW importer: the real log, whole, in the contract's shape."""

from __future__ import annotations

from winback.ingest import contract
from winback.simulation import cdnow


def test_the_master_log_is_complete():
    transactions = cdnow.read_cdnow_transactions()
    assert len(transactions) == 69_659
    assert transactions["customer_id"].nunique() == 23_570
    assert transactions["date"].min().isoformat() == "1997-01-01"
    assert transactions["date"].max().isoformat() == "1998-06-30"


def test_the_sample_has_its_2357_customers():
    assert cdnow.read_cdnow_sample()["customer_id"].nunique() == 2_357


def test_frames_follow_the_contract_and_are_deterministic():
    frames = cdnow.cdnow_frames(sample=True)
    for raw_table in contract.TABLES:
        assert list(frames[raw_table.name].columns) == raw_table.column_names
    assert len(frames["orders"]) == len(cdnow.read_cdnow_sample())
    assert frames["orders"]["order_id"].is_unique
    assert (frames["orders"]["total"].astype(float) >= 0).all()
    again = cdnow.cdnow_frames(sample=True)
    assert frames["customers"].equals(again["customers"])
    assert frames["consents"].equals(again["consents"])
