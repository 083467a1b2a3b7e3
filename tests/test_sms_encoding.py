"""SMS length: GSM-7 and UCS-2, the extension table, exact part boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from winback.campaigns.sms_encoding import (
    GSM7,
    GSM7_BASIC,
    GSM7_EXTENSION,
    UCS2,
    SmsLength,
    check_sms,
    max_units,
    sms_length,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", SmsLength(GSM7, 0, 0)),
        ("Hello", SmsLength(GSM7, 5, 1)),
        ("Café crème à 5 €", SmsLength(GSM7, 17, 1)),  # é, è, à are GSM-7; € counts 2
        ("Olá", SmsLength(UCS2, 3, 1)),  # á is not GSM-7
        ("ça va", SmsLength(UCS2, 5, 1)),  # only the capital Ç is in the alphabet
        ("Ça va", SmsLength(GSM7, 5, 1)),
        ("Hi 😀", SmsLength(UCS2, 5, 1)),  # the emoji is a surrogate pair: 2 units
        ("Hi ☺", SmsLength(UCS2, 4, 1)),  # inside the BMP: 1 unit
        ("[x]", SmsLength(GSM7, 5, 1)),
        ("^{}\\[~]|€", SmsLength(GSM7, 18, 1)),
        ("a\fb", SmsLength(GSM7, 4, 1)),  # form feed is in the extension table too
        ("line\r\nnext", SmsLength(GSM7, 10, 1)),
        ("ΔΦΓΛΩΠΨΣΘΞ", SmsLength(GSM7, 10, 1)),  # Greek capitals of the GSM alphabet
        ("αβ", SmsLength(UCS2, 2, 1)),
        ("€ and á", SmsLength(UCS2, 7, 1)),  # in UCS-2, € is one unit like any other
        ("e\u0301", SmsLength(UCS2, 2, 1)),  # a decomposed é is not the GSM-7 é
    ],
)
def test_encoding_and_units(text, expected):
    assert sms_length(text) == expected


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("a" * 459, 3),
        ("a" * 460, 4),
        ("€" * 80, 1),  # 160 septets
        ("€" * 80 + "a", 2),
        ("á" * 70, 1),
        ("á" * 71, 2),
        ("á" * 134, 2),
        ("á" * 135, 3),
        ("á" * 201, 3),
        ("á" * 202, 4),
        ("😀" * 35, 1),  # 70 code units
        ("😀" * 35 + "a", 2),
    ],
)
def test_exact_part_boundaries(text, parts):
    assert sms_length(text).parts == parts


def test_an_extension_character_is_never_split_across_parts():
    # 152 + 2 + 152 = 306 septets would be 2 parts of 153, but the € cannot straddle the
    # first boundary: part 1 holds 152, part 2 holds the € and 151, part 3 the last one.
    text = "a" * 152 + "€" + "a" * 152
    assert sms_length(text) == SmsLength(GSM7, 306, 3)
    # one septet less and it fits in two: 152 | € + 151
    assert sms_length("a" * 152 + "€" + "a" * 151) == SmsLength(GSM7, 305, 2)
    # an escape pair exactly filling part 1 is fine: 151 + 2 | 153
    assert sms_length("a" * 151 + "€" + "a" * 153) == SmsLength(GSM7, 306, 2)


def test_an_emoji_is_never_split_across_parts():
    text = "á" * 66 + "😀" + "á" * 66  # 134 code units
    assert sms_length(text) == SmsLength(UCS2, 134, 3)
    assert sms_length("á" * 65 + "😀" + "á" * 67) == SmsLength(UCS2, 134, 2)


def test_one_character_switches_the_whole_message_to_ucs2():
    gsm = "a" * 100
    assert sms_length(gsm).parts == 1
    assert sms_length(gsm + "á") == SmsLength(UCS2, 101, 2)


def test_check_sms_accepts_up_to_max_parts():
    assert check_sms("a" * 459) == SmsLength(GSM7, 459, 3)
    assert check_sms("a" * 160, max_parts=1).parts == 1
    assert check_sms("á" * 201).parts == 3


def test_check_sms_refuses_too_many_parts_with_a_clear_message():
    with pytest.raises(ValueError) as raised:
        check_sms("a" * 460)
    assert str(raised.value) == (
        "the SMS needs 4 parts (460 GSM-7 septets); at most 3 allowed (459 GSM-7 units)"
    )
    with pytest.raises(ValueError) as raised:
        check_sms("Bonjour " + "a" * 200 + " Olá", max_parts=2)
    assert str(raised.value) == (
        "the SMS needs 4 parts (212 UCS-2 code units); at most 2 allowed (134 UCS-2 units); "
        "it is UCS-2 because of 'á' (U+00E1) at position 212: without it GSM-7 allows 306"
    )
    with pytest.raises(ValueError, match="at most 1 allowed"):
        check_sms("a" * 161, max_parts=1)


def test_check_sms_refuses_empty_messages_and_bad_limits():
    with pytest.raises(ValueError, match="the SMS is empty"):
        check_sms("  \n")
    with pytest.raises(ValueError, match="max_parts must be at least 1"):
        check_sms("hi", max_parts=0)


def test_max_units():
    assert [max_units(GSM7, n) for n in (1, 2, 3)] == [160, 306, 459]
    assert [max_units(UCS2, n) for n in (1, 2, 3)] == [70, 134, 201]


def test_alphabet_sizes():
    # 128 positions in the basic table minus the escape; 10 extension characters
    assert len(GSM7_BASIC) == 127
    assert len(GSM7_EXTENSION) == 10


@given(st.text(max_size=600))
def test_parts_are_consistent_with_units(text):
    length = sms_length(text)
    if length.units == 0:
        assert length.parts == 0
        return
    if length.units <= max_units(length.encoding, 1):
        assert length.parts == 1
    else:
        # never fewer parts than a perfect packing; a part left one unit short by a
        # character that may not be split still holds at least per_part - 1
        per_part = max_units(length.encoding, 2) // 2
        assert -(-length.units // per_part) <= length.parts <= -(-length.units // (per_part - 1))
    if length.encoding == GSM7:
        assert length.units == len(text) + sum(c in GSM7_EXTENSION for c in text)
    else:
        assert length.units == len(text.encode("utf-16-le")) // 2
