"""Phone numbers to E.164, with phonenumbers' own verdict, for the loader.

phonenumbers is exact but slow (~60 us a number, all Python), and no shortcut is provably
equivalent to it: the national-prefix stripping and validity patterns differ per country.
So a big file's numbers are split between this process and one helper process
(`python -m winback.ingest.phones`, which imports nothing else and never re-runs the caller's
main module, unlike multiprocessing's spawn and forkserver).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading

import phonenumbers

PARALLEL_FROM = 20_000  # below this, starting a helper costs more than it saves


@functools.lru_cache(maxsize=1 << 18)
def to_e164(value: str, country: str) -> str | None:
    """E.164 for a number valid in `country` (or carrying its own +code), else None."""
    try:
        number = phonenumbers.parse(value, country or None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _to_e164_block(pairs: list[tuple[str, str]]) -> list[str | None]:
    return [to_e164(value, country) for value, country in pairs]


def to_e164_many(pairs: list[tuple[str, str]]) -> list[str | None]:
    """`to_e164` for each (number, country), in order; half in a helper when there are many."""
    if len(pairs) < PARALLEL_FROM or (os.cpu_count() or 1) < 2:
        return _to_e164_block(pairs)
    half = len(pairs) // 2
    helper = subprocess.Popen(
        [sys.executable, "-m", "winback.ingest.phones"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    answer: list[bytes] = []
    # The helper's pipes are served from a thread while this process does its half.
    talk = threading.Thread(
        target=lambda: answer.append(helper.communicate(json.dumps(pairs[half:]).encode())[0])
    )
    talk.start()
    first = _to_e164_block(pairs[:half])
    talk.join()
    if helper.returncode != 0 or not answer:
        raise RuntimeError(f"the phone-number helper failed (exit {helper.returncode})")
    return first + json.loads(answer[0])


def main() -> None:
    """Read [[number, country], ...] on stdin, write the E.164 list on stdout."""
    pairs = json.load(sys.stdin)
    json.dump(_to_e164_block([(value, country) for value, country in pairs]), sys.stdout)


if __name__ == "__main__":
    main()
