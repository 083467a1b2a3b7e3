"""Deliveries landing in object storage: a real S3 API (moto's server) on 127.0.0.1.

The landing location is `s3://<bucket>/landing`, read through Airflow's ObjectStoragePath
and an `aws` connection (from an AIRFLOW_CONN_ variable, as in a deployment). The loader
streams each object with ranged GETs and never spools it to disk; a manifest written
while a file it names is still being uploaded (a multipart upload not yet completed) is
neither complete for the wait nor loadable, until the upload completes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from winback.ingest import landing, loader, manifest
from winback.local.ports import free_port
from winback.simulation import simulator

moto_server = pytest.importorskip("moto.server", reason="moto is a dev dependency")
boto3 = pytest.importorskip("boto3")

DAY = date(2026, 11, 20)
BUCKET = "shop-exports"
CONN_ID = "winback_landing_test"


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on a free local port, a bucket, and the Airflow connection to it."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = os.environ.get(f"AIRFLOW_CONN_{CONN_ID.upper()}")
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(
        {
            "conn_type": "aws",
            "login": "moto-access-key",
            "password": "moto-secret-key",
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
    )
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="moto-access-key",
        aws_secret_access_key="moto-secret-key",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        if saved is None:
            os.environ.pop(f"AIRFLOW_CONN_{CONN_ID.upper()}", None)
        else:
            os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = saved
        server.stop()


@pytest.fixture(scope="module")
def local_delivery(tmp_path_factory) -> Path:
    """A complete delivery written locally, to be uploaded the way a shop would."""
    folder = tmp_path_factory.mktemp("export") / DAY.isoformat()
    frames = simulator.simulate_shop(simulator.SimulationConfig(customers=400, seed=11, as_of=DAY))
    simulator.write_landing_files(frames, folder)
    return folder


def upload(client, folder: Path, prefix: str, *, marker: bool = True) -> None:
    """Every file first, then (if asked) the manifest: the contract's order."""
    for path in sorted(folder.iterdir()):
        if path.name != manifest.MANIFEST_NAME:
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")
    if marker:
        client.upload_file(
            str(folder / manifest.MANIFEST_NAME), BUCKET, f"{prefix}/{manifest.MANIFEST_NAME}"
        )


def root_for(prefix: str):
    return landing.landing_root(f"s3://{BUCKET}/{prefix}", CONN_ID)


@pytest.mark.integration
def test_a_delivery_in_s3_is_streamed_into_the_warehouse(conn, s3, local_delivery, tmp_path):
    # The session's other tests load simulated shops with the same customer ids (and
    # newer days, which a load never overwrites): this one counts its own rows.
    conn.execute("drop schema if exists raw cascade")
    conn.commit()
    upload(s3, local_delivery, f"streamed/{DAY}")
    root = root_for("streamed")
    assert landing.is_remote(root) and landing.delivery_status(root, DAY).complete

    spool = tmp_path / "tmp"
    spool.mkdir()
    saved_tempdir = tempfile.tempdir
    tempfile.tempdir = str(spool)  # anything copied to disk would land here
    try:
        report = loader.load_day(conn, root, DAY, require_manifest=True)
        conn.commit()
    finally:
        tempfile.tempdir = saved_tempdir
    assert list(spool.iterdir()) == [], "the loader spooled an object to disk"

    expected = {f.name: f.rows for f in manifest.read_manifest(local_delivery).files}
    assert {Path(f.source_file).name: f.rows_read for f in report.files} == expected
    loaded = conn.execute(
        "select count(*) from raw.customers where _load_date = %s", (DAY,)
    ).fetchone()[0]
    assert loaded == next(f.rows_loaded for f in report.files if f.table == "customers")

    # A remote file is read through a seekable stream of ranged GETs, not a local copy.
    with landing.arrow_input(root / DAY.isoformat() / "orders.csv") as source:
        assert not isinstance(source, str | os.PathLike)
        source.seek(10)
        assert len(source.read(5)) == 5


@pytest.mark.integration
def test_a_manifest_whose_file_is_still_uploading_waits_and_is_refused(conn, s3, local_delivery):
    day = date(2026, 11, 24)  # its own day in the session's warehouse
    prefix = f"uploading/{day}"
    body = json.loads((local_delivery / manifest.MANIFEST_NAME).read_text())
    body["delivery_date"] = day.isoformat()
    for path in sorted(local_delivery.iterdir()):
        if path.name not in (manifest.MANIFEST_NAME, "orders.csv"):
            s3.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")
    # orders.csv: a multipart upload under way (its one part sent, not completed) while the
    # shop's exporter has already written the manifest.
    orders = (local_delivery / "orders.csv").read_bytes()
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=f"{prefix}/orders.csv")["UploadId"]
    part = s3.upload_part(
        Bucket=BUCKET, Key=f"{prefix}/orders.csv", UploadId=upload_id, PartNumber=1, Body=orders
    )
    s3.put_object(
        Bucket=BUCKET, Key=f"{prefix}/{manifest.MANIFEST_NAME}", Body=json.dumps(body).encode()
    )
    root = root_for("uploading")

    status = landing.delivery_status(root, day)
    assert status.has_manifest and status.missing == ["orders.csv"] and not status.complete
    with pytest.raises(
        manifest.DeliveryRefused, match="orders.csv: named in the manifest, missing"
    ):
        loader.load_day(conn, root, day, require_manifest=True)
    conn.rollback()
    assert (
        conn.execute(
            "select count(*) from raw.load_batches where load_date = %s", (day,)
        ).fetchone()[0]
        == 0
    )

    s3.complete_multipart_upload(
        Bucket=BUCKET,
        Key=f"{prefix}/orders.csv",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    assert landing.delivery_status(root, day).complete
    report = loader.load_day(conn, root, day, require_manifest=True)
    conn.commit()
    orders_expected = next(
        f.rows for f in manifest.read_manifest(local_delivery).files if f.name == "orders.csv"
    )
    assert next(f.rows_read for f in report.files if f.table == "orders") == orders_expected


def _run_trigger(trigger) -> dict:
    async def first_event():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(first_event())


def test_the_trigger_waits_in_s3_until_the_marker_lands(s3, local_delivery):
    from winback.orchestration.delivery_sensor import (
        DeliveryTrigger,
        describe_wait,
        missing_message,
    )

    prefix = "waiting"
    upload(s3, local_delivery, f"{prefix}/{DAY}", marker=False)
    started = datetime.now(UTC)
    trigger = DeliveryTrigger(
        day=DAY.isoformat(),
        deadline=(started + timedelta(seconds=60)).isoformat(),
        started_at=started.isoformat(),
        poke_seconds=0.25,
        landing=f"s3://{BUCKET}/{prefix}",
        conn_id=CONN_ID,
    )
    marker = threading.Timer(
        1.0,
        lambda: s3.upload_file(
            str(local_delivery / manifest.MANIFEST_NAME),
            BUCKET,
            f"{prefix}/{DAY}/{manifest.MANIFEST_NAME}",
        ),
    )
    marker.start()
    event = _run_trigger(trigger)
    marker.join()
    assert event["status"] == "complete"
    assert 0.75 <= event["waited_seconds"] < 30
    # Round-trips through the triggerer's serialisation.
    path, kwargs = trigger.serialize()
    assert path == "winback.orchestration.delivery_sensor.DeliveryTrigger"
    assert DeliveryTrigger(**kwargs).serialize() == (path, kwargs)

    # No marker: the deadline ends the wait, and the alert says what was there.
    late = date(2026, 11, 25)
    s3.upload_file(str(local_delivery / "orders.csv"), BUCKET, f"{prefix}/{late}/orders.csv")
    started = datetime.now(UTC)
    event = _run_trigger(
        DeliveryTrigger(
            day=late.isoformat(),
            deadline=(started + timedelta(seconds=1)).isoformat(),
            started_at=started.isoformat(),
            poke_seconds=0.25,
            landing=f"s3://{BUCKET}/{prefix}",
            conn_id=CONN_ID,
        )
    )
    assert event["status"] == "deadline" and event["waited_seconds"] >= 1
    message = missing_message(event)
    waited = describe_wait(event["waited_seconds"])  # "1 s", or more on a busy machine
    assert message.startswith(f"delivery {late} not complete at its deadline: waited {waited}")
    assert "orders.csv" in message and "no _manifest.json" in message and "\n" not in message
