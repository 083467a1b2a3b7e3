"""How long an SMS really is: GSM-7 septets or UCS-2 code units, and how many parts.

A text made only of the GSM 03.38 alphabet travels as GSM-7: 160 septets in one part,
153 per part once it needs more (the rest of each part carries the concatenation header).
The characters of the extension table (^ { } \\ [ ~ ] | € and form feed) are sent as an
escape plus a septet, so they count 2 and are never split across two parts.
A single character outside the alphabet switches the whole message to UCS-2: 70 UTF-16
code units in one part, 67 per part beyond; characters outside the Basic Multilingual
Plane (most emoji) are two code units and are not split either.

Campaign validation calls `check_sms` on each SMS step, so a message that would cost more
parts than the campaign allows is refused before anything is sent.
"""

from __future__ import annotations

from typing import NamedTuple

GSM7 = "GSM-7"
UCS2 = "UCS-2"
DEFAULT_MAX_PARTS = 3

# GSM 03.38 basic character set (the escape 0x1B itself is not a character one can send).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

SINGLE_PART_UNITS = {GSM7: 160, UCS2: 70}
MULTI_PART_UNITS = {GSM7: 153, UCS2: 67}


class SmsLength(NamedTuple):
    encoding: str  # GSM-7 or UCS-2
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2
    parts: int  # 0 for an empty text


def is_gsm7(char: str) -> bool:
    return char in GSM7_BASIC or char in GSM7_EXTENSION


def _unit_count(char: str, encoding: str) -> int:
    if encoding == GSM7:
        return 2 if char in GSM7_EXTENSION else 1
    return 2 if ord(char) > 0xFFFF else 1  # a surrogate pair in UTF-16


def sms_length(text: str) -> SmsLength:
    """The encoding, length in units and number of parts `text` is sent as."""
    encoding = GSM7 if all(is_gsm7(char) for char in text) else UCS2
    weights = [_unit_count(char, encoding) for char in text]
    units = sum(weights)
    if units == 0:
        return SmsLength(encoding, 0, 0)
    if units <= SINGLE_PART_UNITS[encoding]:
        return SmsLength(encoding, units, 1)
    # Fill parts one character at a time: an escaped character or a surrogate pair that
    # does not fit in what is left of a part starts the next one.
    capacity = MULTI_PART_UNITS[encoding]
    parts, used = 1, 0
    for weight in weights:
        if used + weight > capacity:
            parts += 1
            used = 0
        used += weight
    return SmsLength(encoding, units, parts)


def max_units(encoding: str, max_parts: int) -> int:
    """The longest message of `encoding` that fits in `max_parts` parts (without splits)."""
    if max_parts == 1:
        return SINGLE_PART_UNITS[encoding]
    return MULTI_PART_UNITS[encoding] * max_parts


def check_sms(text: str, max_parts: int = DEFAULT_MAX_PARTS) -> SmsLength:
    """`sms_length(text)`, or ValueError when it is empty or needs more than `max_parts`.

    The message names the encoding, the first character that forced UCS-2 (and where),
    and the limit, never the text itself (a rendered SMS can hold personal data).
    """
    if max_parts < 1:
        raise ValueError(f"max_parts must be at least 1, not {max_parts}")
    length = sms_length(text)
    if not text.strip():
        raise ValueError("the SMS is empty")
    if length.parts <= max_parts:
        return length
    problem = (
        f"the SMS needs {length.parts} parts ({length.units} {length.encoding} "
        f"{'septets' if length.encoding == GSM7 else 'code units'}); at most {max_parts} "
        f"allowed ({max_units(length.encoding, max_parts)} {length.encoding} units)"
    )
    if length.encoding == UCS2:
        position, char = next((i, c) for i, c in enumerate(text) if not is_gsm7(c))
        problem += (
            f"; it is UCS-2 because of {char!r} (U+{ord(char):04X}) at position "
            f"{position + 1}: without it GSM-7 allows {max_units(GSM7, max_parts)}"
        )
    raise ValueError(problem)
