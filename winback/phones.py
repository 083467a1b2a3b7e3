"""Phone numbers to E.164, with phonenumbers' own verdict, for the loader.

phonenumbers is exact but slow (~60 us a number, all Python), and no shortcut is provably
equivalent to it: the national-prefix stripping and validity patterns differ per country.
So a big file's numbers are split between this process and one worker process; this
module imports nothing else, so the worker starts quickly.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import phonenumbers

PARALLEL_FROM = 20_000  # below this, starting a worker costs more than it saves


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
    """`to_e164` for each (number, country), in order; half in a worker when there are many."""
    can_fork = not multiprocessing.current_process().daemon and (os.cpu_count() or 1) > 1
    if len(pairs) < PARALLEL_FROM or not can_fork:
        return _to_e164_block(pairs)
    # forkserver, not fork: this process runs Arrow and psycopg threads.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["winback.phones"])
    half = len(pairs) // 2
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        second = pool.submit(_to_e164_block, pairs[half:])
        first = _to_e164_block(pairs[:half])
        return first + second.result()
