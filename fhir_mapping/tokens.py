"""Numbers and entity tags as clients write them in URLs and headers: ASCII, bounded."""

from __future__ import annotations

import re

# More significant digits than any count, size or version id could have (int() refuses > 4300).
_MAX_DIGITS = 100


def ascii_int(text: str) -> int | None:
    """`text` as a number when it is ASCII digits 0-9 only, else None.

    `str.isdigit()` alone also passes '²' or '٣', which `int()` refuses (a 500) or reads as
    another digit. More than `_MAX_DIGITS` significant digits is None as well.
    """
    if not (text.isascii() and text.isdigit()):
        return None
    significant = text.lstrip("0")
    return int(significant or "0") if len(significant) <= _MAX_DIGITS else None


# An entity tag, weak or strong (RFC 9110 8.8.3); group 1 is its opaque text.
ENTITY_TAG = re.compile(r'(?:W/)?"([^"]*)"')
