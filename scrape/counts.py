"""Counts (followers, likes, reblogs) as the catalog can hold them: whole numbers 0 <= n < 2**63.

A server or a CSV may send anything where a count belongs: 1e300, 10**30, 2**63, "²" (which
``str.isdigit`` accepts and ``int`` refuses), "٣" (an Arabic-Indic three), True. ``parse_count``
takes ints, integral floats and strings of ASCII digits only, and says None to everything else.
"""
from __future__ import annotations

import re

MAX_COUNT = 2 ** 63            # SQLite stores INTEGER as a signed 64-bit number
_ASCII_DIGITS = re.compile(r"[0-9]{1,19}")   # 19 digits reach past 2**63; more never fit


def parse_count(value) -> int | None:
    """A count 0 <= n < 2**63 from an int, an integral float or ASCII digits; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not _ASCII_DIGITS.fullmatch(text):
            return None
        value = int(text)
    elif isinstance(value, float):
        if not (value.is_integer() and 0 <= value < MAX_COUNT):   # nan, inf, 1.5e300, 2.5
            return None
        value = int(value)
    if isinstance(value, int) and 0 <= value < MAX_COUNT:
        return value
    return None
