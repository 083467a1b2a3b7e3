"""Where the shop's deliveries land: a local folder or an object store, read as streams.

The landing location (`WINBACK_LANDING_DIR`) is a local folder (the embedded default,
`.winback/landing`) or a URL: `s3://bucket/prefix`, `gs://bucket/prefix`,
`abfs://container@account.dfs.core.windows.net/prefix`. A URL is read through Airflow's
`ObjectStoragePath` with the Airflow connection `WINBACK_LANDING_CONN_ID` (an `aws`,
`google_cloud_platform` or `wasb` connection; the provider of the scheme must be installed:
s3 is in the lock, the others are the `gcs` and `azure` extras). Both kinds of location
answer to the same path API (`/`, `name`, `suffix`, `stem`, `iterdir`, `open`), so the
loader does not care which it reads.

Files are streamed: a local file is handed to pyarrow by name; an object is opened as a
seekable remote file that fetches blocks with ranged GETs, never copied whole to disk.

A delivery for day D is the folder `<location>/<D>/`; it is complete once its marker
`_manifest.json` exists and every file the manifest names is there at the size it states
(`delivery_status`). Whether the files really match the manifest is checked when they are
loaded (`winback.ingest.manifest`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any

from winback import config

MANIFEST_NAME = "_manifest.json"
# Blocks fetched per ranged GET from an object store: big enough to keep requests few,
# small enough that a file is never held whole in memory.
REMOTE_BLOCK_BYTES = 8 << 20


def is_remote(location: Any) -> bool:
    """True for an object-store location (a URL or an ObjectStoragePath), False for a folder."""
    if isinstance(location, Path):
        return False
    text = str(location)
    return "://" in text and not text.startswith("file://")


def landing_root(location: Any = None, conn_id: str | None = None):
    """The landing location as a path object: `pathlib.Path` or `ObjectStoragePath`.

    `location` defaults to `WINBACK_LANDING_DIR`, `conn_id` to `WINBACK_LANDING_CONN_ID`.
    """
    location = config.LANDING_LOCATION if location is None else location
    if not is_remote(location):
        text = str(location)
        return Path(text.removeprefix("file://"))
    if not isinstance(location, str):
        return location  # already an ObjectStoragePath
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(location, conn_id=conn_id or config.landing_conn_id())


def delivery_folder(root: Any, day: date):
    """`<root>/<YYYY-MM-DD>`: the folder that holds the shop's day `day`."""
    root = landing_root(root) if isinstance(root, str) else root
    return root / day.isoformat()


def display(path: Any) -> str:
    """A path or URL fit for a message: never a credential (connections hold those)."""
    return str(path)


def list_files(folder: Any) -> list[Any] | None:
    """The files directly in `folder`, sorted by name; None when the folder does not exist.

    Hidden files (`.name`, e.g. an upload tool's temporary files) are not part of a delivery.
    """
    if is_remote(folder):
        # fsspec caches listings per filesystem: a wait that polls must see new objects.
        folder.fs.invalidate_cache(folder.path)
    try:
        if not folder.is_dir():
            return None
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return None
    files = [p for p in entries if not p.name.startswith(".") and p.is_file()]
    return sorted(files, key=lambda p: p.name)


def file_size(path: Any) -> int:
    return int(path.stat().st_size)


@contextlib.contextmanager
def open_binary(path: Any) -> Iterator[IO[bytes]]:
    """A binary stream of the file; an object is read block by block with ranged GETs."""
    if is_remote(path):
        handle = path.open("rb", block_size=REMOTE_BLOCK_BYTES)
    else:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    try:
        yield handle
    finally:
        handle.close()


@contextlib.contextmanager
def arrow_input(path: Any) -> Iterator[Any]:
    """What pyarrow's readers take: a local file's name (read natively), or a remote stream."""
    if not is_remote(path):
        yield str(path)
        return
    with open_binary(path) as handle:
        yield handle


# --------------------------------------------------------------------------- status


@dataclass
class DeliveryStatus:
    """What is in a day's landing folder right now, as the wait for a delivery sees it."""

    day: str
    folder: str
    folder_exists: bool
    files: list[str] = field(default_factory=list)
    has_manifest: bool = False
    missing: list[str] = field(default_factory=list)  # named by the manifest, not (yet) there
    incomplete: list[str] = field(default_factory=list)  # there, smaller than the manifest says
    problem: str = ""  # a manifest that cannot be read

    @property
    def complete(self) -> bool:
        """The marker is written and every file it names is there at its full size."""
        return self.has_manifest and not (self.missing or self.incomplete or self.problem)

    def found(self) -> str:
        """What was found, in a few words: for the alert when the delivery is late."""
        if not self.folder_exists:
            return f"no folder {self.folder}"
        names = ", ".join(self.files) if self.files else "no files"
        parts = [f"{self.folder} holds {names}"]
        if not self.has_manifest:
            parts.append(f"no {MANIFEST_NAME} (the delivery is not marked complete)")
        if self.problem:
            parts.append(self.problem)
        if self.missing:
            parts.append(f"the manifest names {', '.join(self.missing)}, not there (yet)")
        if self.incomplete:
            parts.append(f"{', '.join(self.incomplete)} smaller than the manifest says")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {**asdict(self), "complete": self.complete}


def delivery_status(root: Any, day: date) -> DeliveryStatus:
    """Look at `<root>/<day>/` once: which files, is the marker there, is each named file?"""
    folder = delivery_folder(root, day)
    files = list_files(folder)
    status = DeliveryStatus(day.isoformat(), display(folder), files is not None)
    if files is None:
        return status
    by_name = {p.name: p for p in files}
    status.files = [name for name in by_name if name != MANIFEST_NAME]
    if MANIFEST_NAME not in by_name:
        return status
    status.has_manifest = True
    try:
        named = json.loads(by_name[MANIFEST_NAME].read_text())["files"]
        entries = {str(entry["name"]): entry.get("bytes") for entry in named}
    except (ValueError, KeyError, TypeError) as error:
        status.problem = f"{MANIFEST_NAME} unreadable ({type(error).__name__})"
        return status
    for name, size in entries.items():
        if name not in by_name:
            status.missing.append(name)
        elif isinstance(size, int) and file_size(by_name[name]) < size:
            status.incomplete.append(name)
    return status
