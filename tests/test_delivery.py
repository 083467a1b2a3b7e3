"""The delivery contract on a local landing folder: the manifest, its checks, `winback deliver`.

A delivery for day D is `landing/D/` with `_manifest.json` written last, naming each file
with its row count and SHA-256. The loader refuses a delivery that does not match its
manifest with one line, before anything reaches the warehouse; the wait for a delivery
(`landing.delivery_status`) calls it complete only once the marker and every file it
names are there at full size.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from datetime import date
from pathlib import Path

import pytest

from winback import cli
from winback.ingest import landing, loader, manifest
from winback.simulation import simulator

DAY = date(2026, 11, 20)


@pytest.fixture(scope="module")
def shop_frames():
    settings = simulator.SimulationConfig(customers=300, seed=7, as_of=DAY)
    return simulator.simulate_shop(settings)


@pytest.fixture
def delivery(tmp_path, shop_frames) -> Path:
    """A complete delivery for DAY under tmp_path/landing, written as a shop would."""
    root = tmp_path / "landing"
    simulator.write_landing_files(shop_frames, root / DAY.isoformat())
    return root


def nothing_loaded(conn, day: date) -> bool:
    batches = conn.execute(
        "select count(*) from raw.load_batches where load_date = %s", (day,)
    ).fetchone()[0]
    customers = conn.execute(
        "select count(*) from raw.customers where _load_date = %s", (day,)
    ).fetchone()[0]
    return batches == 0 and customers == 0


# --------------------------------------------------------------------------- the manifest


def test_the_manifest_names_every_file_with_its_rows_and_sha256(delivery, shop_frames):
    folder = delivery / DAY.isoformat()
    body = json.loads((folder / manifest.MANIFEST_NAME).read_text())
    assert body["delivery_date"] == DAY.isoformat() and body["format"] == manifest.FORMAT
    entries = {entry["name"]: entry for entry in body["files"]}
    assert set(entries) == {f"{name}.csv" for name in shop_frames}
    for name, frame in shop_frames.items():
        entry = entries[f"{name}.csv"]
        data = (folder / f"{name}.csv").read_bytes()
        assert entry["rows"] == len(frame), name
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)


@pytest.mark.parametrize("block", [1, 2, 3, 5, 64])
def test_csv_records_are_counted_as_the_reader_sees_them(tmp_path, block):
    # A quoted line break, an escaped quote, CRLF, blank lines, a line of spaces (one
    # malformed record) and no final newline: 4 data records after the header.
    text = b'id,note\r\n1,"two\nlines"\r\n\r\n\n2,plain\n   \n3,"say ""hi"""'
    counter = manifest._CsvRecordCounter()
    for start in range(0, len(text), block):
        counter.feed(text[start : start + block])
    assert counter.data_rows() == 4
    path = tmp_path / "orders.csv"
    path.write_bytes(b"order_id,customer_id\n")
    assert manifest.describe_file(path).rows == 0  # a header alone is no row


def test_a_malformed_manifest_is_refused_with_what_is_wrong(tmp_path):
    folder = tmp_path / DAY.isoformat()
    folder.mkdir()
    (folder / manifest.MANIFEST_NAME).write_text('{"files": [{"name": "orders.csv"}]}')
    with pytest.raises(manifest.DeliveryRefused, match="orders.csv.*rows"):
        manifest.read_manifest(folder)
    (folder / manifest.MANIFEST_NAME).write_text("{not json")
    with pytest.raises(manifest.DeliveryRefused, match="not JSON"):
        manifest.read_manifest(folder)


# --------------------------------------------------------------------------- loading


@pytest.mark.integration
def test_a_delivery_that_matches_its_manifest_loads(conn, delivery, shop_frames):
    report = loader.load_day(conn, delivery, DAY, require_manifest=True)
    conn.commit()
    assert {f.table: f.rows_read for f in report.files} == {
        name: len(frame) for name, frame in shop_frames.items()
    }


def _drop_a_file(folder: Path) -> None:
    (folder / "orders.csv").unlink()


def _add_a_file(folder: Path) -> None:
    shutil.copy(folder / "carts.csv", folder / "returns.csv")


def _change_a_byte(folder: Path) -> None:
    path = folder / "customers.csv"
    data = bytearray(path.read_bytes())
    data[-2] = ord("9") if data[-2] != ord("9") else ord("8")  # same size, other content
    path.write_bytes(bytes(data))


def _cut_a_file(folder: Path) -> None:
    path = folder / "order_lines.csv"
    path.write_bytes(path.read_bytes()[:1000])  # as if still being uploaded


def _miscount_rows(folder: Path) -> None:
    path = folder / manifest.MANIFEST_NAME
    body = json.loads(path.read_text())
    entry = next(e for e in body["files"] if e["name"] == "orders.csv")
    entry["rows"] += 1
    path.write_text(json.dumps(body))


def _remove_the_manifest(folder: Path) -> None:
    (folder / manifest.MANIFEST_NAME).unlink()


def _another_days_manifest(folder: Path) -> None:
    path = folder / manifest.MANIFEST_NAME
    body = json.loads(path.read_text())
    body["delivery_date"] = "2026-11-19"
    path.write_text(json.dumps(body))


@pytest.mark.integration
@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_drop_a_file, "orders.csv: named in the manifest, missing"),
        (_add_a_file, "returns.csv: not named in the manifest"),
        (_change_a_byte, "customers.csv: SHA-256 differs from the manifest's"),
        (_cut_a_file, r"order_lines.csv: 1,000 bytes, the manifest says .* \(still being"),
        (_miscount_rows, r"orders.csv: (\d|,)+ rows, the manifest says (\d|,)+"),
        (_remove_the_manifest, "no .*_manifest.json: the delivery is not marked complete"),
        (_another_days_manifest, "the manifest is for 2026-11-19"),
    ],
)
def test_a_delivery_that_does_not_match_its_manifest_is_refused_and_nothing_loads(
    conn, delivery, spoil, message
):
    day = date(2026, 11, 21)  # a day of its own in the session's warehouse
    (delivery / DAY.isoformat()).rename(delivery / day.isoformat())
    folder = delivery / day.isoformat()
    manifest_path = folder / manifest.MANIFEST_NAME
    if manifest_path.exists():
        body = json.loads(manifest_path.read_text())
        body["delivery_date"] = day.isoformat()
        manifest_path.write_text(json.dumps(body))
    spoil(folder)
    with pytest.raises(manifest.DeliveryRefused) as refusal:
        loader.load_day(conn, delivery, day, require_manifest=True)
    text = str(refusal.value)
    assert "\n" not in text, "one line"
    assert text.startswith(f"delivery {day} ({folder}) refused, nothing loaded: ")
    assert re.search(message, text), text
    conn.rollback()
    assert nothing_loaded(conn, day)


@pytest.mark.integration
def test_a_hand_made_folder_without_a_manifest_loads_only_when_allowed(conn, tmp_path):
    day = date(2026, 11, 22)
    folder = tmp_path / day.isoformat()
    simulator.write_landing_files(
        simulator.simulate_shop(simulator.SimulationConfig(customers=50, seed=3, as_of=day)),
        folder,
        manifest=False,
    )
    with pytest.raises(manifest.DeliveryRefused, match="not marked complete"):
        loader.load_day(conn, tmp_path, day, require_manifest=True)
    conn.rollback()
    assert nothing_loaded(conn, day)
    report = loader.load_day(conn, tmp_path, day)  # `winback load --without-manifest`
    conn.commit()
    assert report.rows_read > 0


# --------------------------------------------------------------------------- the wait


def test_a_delivery_is_complete_only_once_marked_with_every_named_file(tmp_path, shop_frames):
    folder = tmp_path / DAY.isoformat()
    status = landing.delivery_status(tmp_path, DAY)
    assert not status.folder_exists and not status.complete
    assert status.found() == f"no folder {folder}"

    simulator.write_landing_files(shop_frames, folder, manifest=False)
    status = landing.delivery_status(tmp_path, DAY)
    assert status.folder_exists and not status.has_manifest and not status.complete
    assert "customers.csv" in status.found() and "no _manifest.json" in status.found()

    manifest.write_manifest(folder, DAY)
    assert landing.delivery_status(tmp_path, DAY).complete

    # A manifest that names a file still being uploaded: not complete yet.
    data = (folder / "orders.csv").read_bytes()
    (folder / "orders.csv").write_bytes(data[: len(data) // 2])
    status = landing.delivery_status(tmp_path, DAY)
    assert status.incomplete == ["orders.csv"] and not status.complete
    (folder / "orders.csv").unlink()
    status = landing.delivery_status(tmp_path, DAY)
    assert status.missing == ["orders.csv"] and "not there (yet)" in status.found()
    (folder / "orders.csv").write_bytes(data)
    assert landing.delivery_status(tmp_path, DAY).complete


# --------------------------------------------------------------------------- winback deliver


def test_winback_deliver_writes_the_marker_for_plain_exports(tmp_path, shop_frames, capsys):
    folder = tmp_path / DAY.isoformat()
    simulator.write_landing_files(shop_frames, folder, manifest=False)
    assert cli.main(["deliver", "--date", DAY.isoformat(), "--landing", str(tmp_path)]) == 0
    assert "complete" in capsys.readouterr().out
    written = manifest.read_manifest(folder)
    assert {f.name for f in written.files} == {f"{n}.csv" for n in shop_frames}
    assert manifest.check_delivery(tmp_path, DAY) == folder
    assert not list(folder.glob(".*")), "no temporary file left behind"

    (folder / "returns.csv").write_text("return_id\nr1\n")
    assert cli.main(["deliver", "--date", DAY.isoformat(), "--landing", str(tmp_path)]) == 1
    assert "returns.csv: not a winback input file" in capsys.readouterr().err
    missing_day = "2026-11-23"
    assert cli.main(["deliver", "--date", missing_day, "--landing", str(tmp_path)]) == 1
    assert "nothing to mark" in capsys.readouterr().err
