"""getidentities' name filter on packed identity records, without decoding most of them.

The filter is "the lower-cased needle is a substring of the lower-cased name". Decoding a
msgpack record costs several times more than a byte search in it, so ``NameFilter``
first asks the record's bytes, lower-cased as ASCII, for the needle's UTF-8.

Why a miss there proves the name cannot match: ``str.lower`` maps each character on its
own (one exception, below). For an ASCII character that is ASCII lower-casing, which is
what ``bytes.lower`` does; a non-ASCII character with no lower case maps to itself, and
``bytes.lower`` leaves the bytes of its UTF-8 (all >= 0x80) alone. A name made of such
characters therefore has ``name.lower()``'s UTF-8 inside the record's lower-cased bytes,
and so has any needle it matches. The other characters, non-ASCII ones whose lower case
differs ("É" -> "é", "K" (Kelvin) -> "k", "İ" -> "i̇"), can only matter when their lower
case shares a character with the needle; when a record holds one of those "sources" the
record is decoded and checked. CPython's one context rule, a final capital sigma
lower-cased to "ς", adds "Σ" as a source of "ς".
"""

from __future__ import annotations

import functools
import sys
from typing import Dict, FrozenSet, Tuple

_ENCODING = ("utf-8", "surrogatepass")  # as codec.py packs strings


class NameFilter:
    """``needle`` is already lower-cased."""

    def __init__(self, needle: str) -> None:
        self.needle = needle
        self._needle_bytes = needle.encode(*_ENCODING)
        sources = _lowercase_sources()
        self._source_bytes: Tuple[bytes, ...] = tuple(sorted(
            {char.encode(*_ENCODING) for part in set(needle) for char in sources.get(part, ())}))

    def may_match(self, packed: bytes) -> bool:
        """False only when no name inside ``packed`` (a record's bytes) can match."""
        return (self._needle_bytes in packed.lower()
                or any(source in packed for source in self._source_bytes))

    def matches(self, name: str) -> bool:
        return self.needle in name.lower()


@functools.lru_cache(maxsize=1)
def _lowercase_sources() -> Dict[str, FrozenSet[str]]:
    """Character -> the non-ASCII characters whose lower case differs from themselves and
    contains it. Built once (about 0.2 s here), on the first name filter."""
    sources: Dict[str, set] = {}
    for code in range(0x80, sys.maxunicode + 1):
        char = chr(code)
        lowered = char.lower()
        if lowered != char:
            for part in lowered:
                sources.setdefault(part, set()).add(char)
    # Final sigma: "ΟΔΟΣ".lower() ends in "ς", which "Σ".lower() alone never gives.
    sources.setdefault("\u03c2", set()).add("\u03a3")
    return {part: frozenset(chars) for part, chars in sources.items()}
