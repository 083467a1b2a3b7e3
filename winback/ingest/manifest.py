"""The delivery manifest: the marker a shop writes last, naming each file it delivered.

`<landing>/<D>/_manifest.json` says the delivery for day D is complete, and what it holds:

    {
      "format": "winback-delivery/1",
      "delivery_date": "2026-11-20",
      "shop_timezone": "Europe/Berlin",
      "written_at": "2026-11-21T00:41:07Z",
      "files": [
        {"name": "customers.csv", "rows": 20000, "bytes": 2811093, "sha256": "9f2c..."},
        {"name": "orders.csv", "rows": 51211, "bytes": 4002750, "sha256": "03ab..."}
      ]
    }

`name`, `rows` and `sha256` are required for every file; `bytes` lets the wait for a
delivery tell a file still being uploaded from a finished one without reading it;
`delivery_date`, when given, must be the folder's day. `rows` counts data records: for a
CSV the records after the header, not counting empty lines (a quoted value may span
lines); for parquet the rows its footer declares.

`check_delivery` is what the loader calls before it reads anything: a delivery whose files
do not match its manifest (a named file missing, a file the manifest does not name, another
row count or SHA-256) is refused with one line, and nothing of the day is loaded.
`write_manifest` (`winback deliver`) writes the marker for a shop that exports plain files.
Both stream every file once (SHA-256 and the record count in the same pass).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np

from winback import config
from winback.ingest import landing

FORMAT = "winback-delivery/1"
MANIFEST_NAME = landing.MANIFEST_NAME
READ_BYTES = 8 << 20
_QUOTE, _NEWLINE, _RETURN = ord('"'), ord("\n"), ord("\r")


class DeliveryRefused(ValueError):
    """A day's delivery that is incomplete or does not match its manifest: nothing is loaded."""


@dataclass(frozen=True)
class ManifestFile:
    name: str
    rows: int
    sha256: str
    bytes: int | None = None


@dataclass(frozen=True)
class Manifest:
    files: tuple[ManifestFile, ...]
    delivery_date: str | None = None
    shop_timezone: str | None = None
    written_at: str | None = None

    def as_json(self) -> str:
        body = {
            "format": FORMAT,
            "delivery_date": self.delivery_date,
            "shop_timezone": self.shop_timezone,
            "written_at": self.written_at,
            "files": [asdict(f) for f in self.files],
        }
        return json.dumps(body, indent=2) + "\n"


# --------------------------------------------------------------------------- one file


class _CsvRecordCounter:
    """Counts CSV records block by block: a newline ends a record only outside quotes.

    Vectorised with numpy on the positions of newlines and quotes: the parity of the quotes
    before a newline tells whether it is inside a quoted value. A line with nothing but a
    carriage return is empty, and empty lines are no records, as the loader's reader has it.
    """

    def __init__(self) -> None:
        self.records = 0
        self.in_quotes = 0  # parity of the quotes seen so far
        self.line_has_content = False  # the line carried over from the previous block

    def feed(self, block: bytes) -> None:
        if not block:
            return
        data = np.frombuffer(block, dtype=np.uint8)
        ends = np.flatnonzero(data == _NEWLINE)
        if self.in_quotes or block.find(b'"') >= 0:
            quotes = np.flatnonzero(data == _QUOTE)
            before = np.searchsorted(quotes, ends)
            ends = ends[((before + self.in_quotes) & 1) == 0]
            self.in_quotes = (self.in_quotes + quotes.size) & 1
        if ends.size:
            lengths = np.diff(ends, prepend=-1) - 1
            empty = (lengths == 0) | ((lengths == 1) & (data[ends - 1] == _RETURN))
            if self.line_has_content:
                empty[0] = False
            self.records += int(ends.size - np.count_nonzero(empty))
            tail = block[int(ends[-1]) + 1 :]
            self.line_has_content = _has_content(tail)
        else:
            self.line_has_content = self.line_has_content or _has_content(block)

    def data_rows(self) -> int:
        records = self.records + (1 if self.line_has_content else 0)
        return max(records - 1, 0)  # the first record is the header


def _has_content(text: bytes) -> bool:
    return len(text) > 1 or (len(text) == 1 and text[0] != _RETURN)


def describe_file(path: Any) -> ManifestFile:
    """Name, data rows, size and SHA-256 of one landing file, streamed in one pass."""
    digest = hashlib.sha256()
    counter = _CsvRecordCounter() if path.suffix == ".csv" else None
    size = 0
    with landing.open_binary(path) as handle:
        while block := handle.read(READ_BYTES):
            digest.update(block)
            size += len(block)
            if counter is not None:
                counter.feed(block)
    if counter is not None:
        rows = counter.data_rows()
    elif path.suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        raise DeliveryRefused(f"{path.name}: not a winback input file (.csv or .parquet)")
    return ManifestFile(path.name, rows, digest.hexdigest(), size)


def _parquet_rows(path: Any) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with landing.arrow_input(path) as source:
            return int(pq.ParquetFile(source).metadata.num_rows)
    except (pa.ArrowInvalid, OSError) as error:
        raise DeliveryRefused(f"{path.name}: not a readable parquet file ({error})") from error


# --------------------------------------------------------------------------- reading


def read_manifest(folder: Any) -> Manifest:
    """Parse `<folder>/_manifest.json`; a malformed one is refused with what is wrong."""
    path = folder / MANIFEST_NAME
    where = f"{landing.display(path)}"
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise DeliveryRefused(f"no {where}: the delivery is not marked complete") from None
    except ValueError as error:
        raise DeliveryRefused(f"{where}: not JSON ({error})") from None
    if not isinstance(body, dict) or not isinstance(body.get("files"), list):
        raise DeliveryRefused(f"{where}: expected an object with a list 'files'")
    files = []
    for position, entry in enumerate(body["files"], start=1):
        problem = _entry_problem(entry)
        if problem:
            raise DeliveryRefused(f"{where}: file {position} {problem}")
        files.append(
            ManifestFile(entry["name"], entry["rows"], entry["sha256"].lower(), entry.get("bytes"))
        )
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise DeliveryRefused(f"{where}: names a file twice")
    return Manifest(
        tuple(files), body.get("delivery_date"), body.get("shop_timezone"), body.get("written_at")
    )


def _entry_problem(entry: Any) -> str:
    if not isinstance(entry, dict):
        return "is not an object"
    name, rows, sha = entry.get("name"), entry.get("rows"), entry.get("sha256")
    if not isinstance(name, str) or not name or "/" in name:
        return "has no plain file 'name'"
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        return f"({name}) has no whole 'rows' count"
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        return f"({name}) has no 64-hex-digit 'sha256'"
    size = entry.get("bytes")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        return f"({name}) has a 'bytes' that is not a whole number"
    return ""


# --------------------------------------------------------------------------- checking


def check_delivery(root: Any, day: date, require_manifest: bool = True) -> Any:
    """The day's folder, once its files match its manifest; else `DeliveryRefused`, one line.

    Without a manifest the folder is returned unchecked only when `require_manifest` is
    False (loading a hand-made folder); a folder that does not exist is left to the loader.
    """
    folder = landing.delivery_folder(root, day)
    files = landing.list_files(folder)
    if files is None:
        return folder
    by_name = {p.name: p for p in files if p.name != MANIFEST_NAME}
    if len(by_name) == len(files) and not require_manifest:
        return folder
    label = f"delivery {day.isoformat()} ({landing.display(folder)}) refused, nothing loaded"
    try:
        manifest = read_manifest(folder)
    except DeliveryRefused as error:
        raise DeliveryRefused(f"{label}: {error}") from None
    problems = []
    if manifest.delivery_date not in (None, day.isoformat()):
        problems.append(f"the manifest is for {manifest.delivery_date}")
    named = {f.name: f for f in manifest.files}
    problems += [f"{n}: named in the manifest, missing" for n in named if n not in by_name]
    problems += [f"{n}: not named in the manifest" for n in by_name if n not in named]
    for name, expected in named.items():
        if name not in by_name:
            continue
        path = by_name[name]
        if expected.bytes is not None and landing.file_size(path) != expected.bytes:
            problems.append(
                f"{name}: {landing.file_size(path):,} bytes, the manifest says "
                f"{expected.bytes:,} (still being written?)"
            )
            continue
        actual = describe_file(path)
        if actual.sha256 != expected.sha256:
            problems.append(f"{name}: SHA-256 differs from the manifest's")
        if actual.rows != expected.rows:
            problems.append(f"{name}: {actual.rows:,} rows, the manifest says {expected.rows:,}")
    if problems:
        raise DeliveryRefused(f"{label}: " + "; ".join(problems))
    return folder


# --------------------------------------------------------------------------- writing


def build_manifest(folder: Any, day: date | None = None) -> Manifest:
    """The manifest of every file now in `folder` (the marker itself excepted)."""
    files = landing.list_files(folder)
    if files is None:
        raise DeliveryRefused(f"no folder {landing.display(folder)}: nothing to deliver")
    described = tuple(describe_file(p) for p in files if p.name != MANIFEST_NAME)
    return Manifest(
        files=described,
        delivery_date=day.isoformat() if day else None,
        shop_timezone=config.shop_timezone(),
        written_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def write_manifest(folder: Any, day: date | None = None) -> Manifest:
    """Describe every file in `folder` and write `_manifest.json` last, in one write.

    Locally the marker is written to a hidden temporary file and renamed, so a reader never
    sees half a manifest; an object store's PUT is atomic already.
    """
    manifest = build_manifest(folder, day)
    text = manifest.as_json()
    target = folder / MANIFEST_NAME
    if landing.is_remote(folder):
        target.write_text(text)
    else:
        partial = folder / f".{MANIFEST_NAME}.partial"
        partial.write_text(text)
        partial.replace(target)
    return manifest
