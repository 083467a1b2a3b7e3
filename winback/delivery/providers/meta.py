"""A Meta (Facebook) Custom Audience customer-list file.

Meta matches customer lists on SHA-256 hashes of normalized identifiers and asks that
plaintext never be uploaded. Normalization as Meta documents it for the Marketing API
(`EMAIL`, `PHONE` keys of a customer list):

* email: trim leading and trailing whitespace, lower-case;
* phone: digits only, with the country code, no leading `+` or zeros (E.164 without the
  `+`): `+1 (650) 555-1234` becomes `16505551234`.

A run writes, per audience, one file of members to add and one of members to remove
(`<audience>_add_<stamp>.csv`, `<audience>_remove_<stamp>.csv`, columns `email,phone`
holding hashes), for upload to `POST`/`DELETE /{audience-id}/users`. A row is
acknowledged once its file is complete on disk.

Connection `winback_meta` (fs or generic): extra `folder` (default `.winback/exports/meta`).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import phonenumbers

from winback import config
from winback.delivery.providers import (
    AudienceProvider,
    AudienceResult,
    Connection,
    MemberChange,
    connection,
    is_configured,
)
from winback.delivery.providers.ratelimit import RateLimits

CONN_ID = "winback_meta"


def normalize_email(email: str) -> str:
    return email.strip().lower()


def normalize_phone(phone: str) -> str:
    """E.164 digits without the '+'; raises ValueError for a number that is not one."""
    text = phone.strip()
    if not text.startswith("+"):
        text = "+" + re.sub(r"\D", "", text).lstrip("0")
    parsed = phonenumbers.parse(text, None)
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("not a valid international phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)[1:]


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def hashed_identifiers(email: str | None, phone: str | None) -> tuple[str, str]:
    """(email hash, phone hash); an empty string for a missing or invalid identifier."""
    email_hash = sha256_hex(normalize_email(email)) if email and email.strip() else ""
    phone_hash = ""
    if phone:
        try:
            phone_hash = sha256_hex(normalize_phone(phone))
        except (ValueError, phonenumbers.NumberParseException):
            phone_hash = ""
    return email_hash, phone_hash


class MetaCustomAudienceFile(AudienceProvider):
    name = "meta"
    limits = RateLimits(requests_per_second=10_000.0, max_concurrency=1)

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @classmethod
    def from_connection(cls, conn: Connection | None = None) -> MetaCustomAudienceFile:
        if conn is None and not is_configured(CONN_ID):
            return cls(config.STATE_DIR / "exports" / "meta")
        conn = conn or connection(CONN_ID)
        return cls(Path(conn.extra.get("folder", config.STATE_DIR / "exports" / "meta")))

    def _write(self, changes: list[MemberChange]) -> AudienceResult:
        result = AudienceResult()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        groups: dict[tuple[str, str], list[tuple[MemberChange, tuple[str, str]]]] = {}
        for change in changes:
            hashes = hashed_identifiers(change.member.email, change.member.phone)
            if not any(hashes):
                result.rejected.append((change, "no valid email or phone to match on"))
                continue
            groups.setdefault((change.audience, change.action), []).append((change, hashes))
        config.private_folder(self.folder)
        for (audience, action), rows in groups.items():
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", audience)
            final = self.folder / f"{safe}_{action}_{stamp}.csv"
            partial = final.with_suffix(".csv.partial")
            with config.open_private(partial, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(("email", "phone"))
                writer.writerows(hashes for _, hashes in rows)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, final)  # complete or absent, never half a file
            result.accepted.extend(change for change, _ in rows)
        return result

    async def apply(self, changes: list[MemberChange], on_submitted=None) -> AudienceResult:
        return await asyncio.to_thread(self._write, changes)

    async def reconcile(self, changes: list[MemberChange]) -> set[MemberChange]:
        # A file is written whole or not at all (rename), so an interrupted write left
        # nothing: nothing is already applied and writing again is safe.
        return set()

    async def aclose(self) -> None:
        return None
