"""getidentities' name filter on packed identity records, without decoding most of them.

The filter is "the lower-cased needle is a substring of the lower-cased name". Decoding a
msgpack record costs several times more than a byte search in it, so ``NameFilter`` first
asks the record's bytes, lower-cased as ASCII, for the needle's UTF-8 and, when they hold
it, asks the name's own bytes the same (the needle may be in an id or a face id instead).

Finding the name: msgpack writes the key ``identity_name`` as the 14 bytes ``_NAME_KEY``
followed by the value's str header and its UTF-8. Every identity record has that key, so
when those 14 bytes occur exactly once in the record they are the key (a look-alike inside
another string would make a second occurrence), and the header says where the name ends.
Anything else (two occurrences, another header) is decoded and checked.

Why a miss in the name's bytes proves the name cannot match: ``str.lower`` maps each
character on its own (one exception, below). For an ASCII character that is ASCII
lower-casing, which is what ``bytes.lower`` does; a non-ASCII character with no lower case
maps to itself, and ``bytes.lower`` leaves the bytes of its UTF-8 (all >= 0x80) alone. A
name made of such characters therefore has ``name.lower()``'s UTF-8 equal to its own bytes
lower-cased, and so has any needle it matches. The other characters, non-ASCII ones whose
lower case differs ("É" -> "é", "K" (Kelvin) -> "k", "İ" -> "i̇"), can only matter when
their lower case shares a character with the needle; a name holding one of those "sources"
is decoded and checked. CPython's one context rule, a final capital sigma lower-cased to
"ς", adds "Σ" as a source of "ς".
"""

from __future__ import annotations

import functools
import sys
from typing import Dict, FrozenSet, Optional, Tuple

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
        """False only when the name of the identity record ``packed`` cannot match."""
        # The whole record first: one pass, and most records fail it. The name's bytes are
        # inside the record, so a miss there is a miss in the name.
        if not self._may_hold(packed):
            return False
        name = _name_bytes(packed)  # the needle may be in another field: ask the name alone
        return name is None or self._may_hold(name)

    def _may_hold(self, data: bytes) -> bool:
        return (self._needle_bytes in data.lower()
                or any(source in data for source in self._source_bytes))

    def matches(self, name: str) -> bool:
        return self.needle in name.lower()


#: The key ``identity_name`` as msgpack writes it (a fixstr of 13 bytes).
_NAME_KEY = b"\xad" + b"identity_name"


def _name_bytes(packed: bytes) -> Optional[bytes]:
    """The UTF-8 of the record's ``identity_name``; None when it cannot be told apart."""
    at = packed.find(_NAME_KEY)
    if at < 0 or packed.find(_NAME_KEY, at + 1) >= 0:
        return None
    start = at + len(_NAME_KEY)
    head = packed[start] if start < len(packed) else -1
    if 0xa0 <= head <= 0xbf:  # fixstr
        length, start = head & 0x1f, start + 1
    elif head in _STR_LENGTH_BYTES:  # str 8, 16, 32: a big-endian length follows
        size = _STR_LENGTH_BYTES[head]
        length = int.from_bytes(packed[start + 1:start + 1 + size], "big")
        start += 1 + size
    else:
        return None
    return packed[start:start + length] if start + length <= len(packed) else None


_STR_LENGTH_BYTES = {0xd9: 1, 0xda: 2, 0xdb: 4}


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
