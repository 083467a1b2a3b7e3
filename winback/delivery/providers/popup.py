"""The on-site popup audience: a webhook to the shop's site, or a CSV file it reads.

With connection `winback_popup` (http: host, password = bearer token), each entry is
POSTed as JSON to `{base_url}/popup/entries` with an `Idempotency-Key` header, and an
unclear POST is settled with `GET /popup/entries/{key}`. Without it, entries are appended
to `<export dir>/popup_<campaign>.csv` (customer id, campaign, key, message), flushed to
disk before the row counts as acknowledged; the file itself is the lookup. Popups go to
visitors already on the site, so the export holds no email or phone (campaign validation
refuses them in popup templates). A cell that a spreadsheet would read as a formula (it
starts with =, +, -, @, a tab or a carriage return) is written with a leading `'`, as
OWASP's CSV-injection guidance advises, so a first name like `=HYPERLINK(...)` stays text.
"""

from __future__ import annotations

import asyncio
import csv
import os
from datetime import datetime
from pathlib import Path

import httpx

from winback import config
from winback.delivery.providers import (
    Connection,
    MessageProvider,
    Outcome,
    OutgoingMessage,
    SendResult,
    connection,
    is_configured,
)
from winback.delivery.providers.http import classify_response, http_client, transport_error_result
from winback.delivery.providers.ratelimit import RateLimits

CONN_ID = "winback_popup"
DEFAULT_LIMITS = RateLimits(requests_per_second=50.0, max_concurrency=4, timeout_seconds=10.0)
CSV_COLUMNS = ("customer_id", "campaign_id", "idempotency_key", "message")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: str | None) -> str:
    """`value` as a spreadsheet shows it: text, never a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


class PopupWebhook(MessageProvider):
    name = "popup_webhook"
    can_lookup = True
    # The entry is stored under its Idempotency-Key before the webhook answers, and read
    # back by that key: a lookup that does not find it is final at once.
    negative_lookup_trusted_after = 0.0

    def __init__(self, base_url: str, token: str | None, limits: RateLimits = DEFAULT_LIMITS):
        self.limits = limits
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = http_client(base_url, limits, headers=headers)

    async def send(self, message: OutgoingMessage) -> SendResult:
        entry = {
            "customer_id": message.customer_id,
            "campaign_id": message.campaign_id,
            "message": message.body,
        }
        try:
            response = await self._client.post(
                "/popup/entries",
                json=entry,
                headers={"Idempotency-Key": message.idempotency_key},
            )
        except httpx.TransportError as error:
            return transport_error_result(error)
        return classify_response(response, id_field="id")

    async def lookup(self, message: OutgoingMessage, since: datetime) -> SendResult | None:
        response = await self._client.get(f"/popup/entries/{message.idempotency_key}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return SendResult(Outcome.ACCEPTED, provider_message_id=str(response.json()["id"]))

    async def aclose(self) -> None:
        await self._client.aclose()


class PopupCsvExport(MessageProvider):
    name = "popup_csv"
    can_lookup = True
    negative_lookup_trusted_after = 0.0  # the file is flushed before a row is acknowledged
    limits = RateLimits(requests_per_second=10_000.0, max_concurrency=1)

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._lock = asyncio.Lock()

    def path_for(self, campaign_id: str) -> Path:
        return self.folder / f"popup_{campaign_id}.csv"

    def _append(self, message: OutgoingMessage) -> None:
        path = self.path_for(message.campaign_id)
        config.private_folder(path.parent)
        is_new = not path.exists()
        with config.open_private(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if is_new:
                writer.writerow(CSV_COLUMNS)
            writer.writerow(
                tuple(
                    csv_cell(value)
                    for value in (
                        message.customer_id,
                        message.campaign_id,
                        message.idempotency_key,
                        message.body,
                    )
                )
            )
            handle.flush()
            os.fsync(handle.fileno())

    async def send(self, message: OutgoingMessage) -> SendResult:
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, message)
            except OSError as error:
                return SendResult(Outcome.UNCLEAR, reason=f"write failed: {error.strerror}")
        return SendResult(Outcome.ACCEPTED, provider_message_id=message.idempotency_key)

    async def lookup(self, message: OutgoingMessage, since: datetime) -> SendResult | None:
        path = self.path_for(message.campaign_id)
        if not path.exists():
            return None
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("idempotency_key") == message.idempotency_key:
                    return SendResult(Outcome.ACCEPTED, provider_message_id=message.idempotency_key)
        return None

    async def aclose(self) -> None:
        return None


def from_connection(conn: Connection | None = None) -> MessageProvider:
    """The webhook when `winback_popup` is configured, else the CSV export."""
    if conn is None and not is_configured(CONN_ID):
        return PopupCsvExport(config.STATE_DIR / "exports")
    conn = conn or connection(CONN_ID)
    if conn.extra.get("folder"):
        return PopupCsvExport(Path(conn.extra["folder"]))
    return PopupWebhook(conn.base_url, conn.password, conn.limits(DEFAULT_LIMITS))
