"""name_filter.NameFilter: a record its byte test skips never has a matching name."""

from __future__ import annotations

import random

from sophon_face.store import codec
from sophon_face.store.name_filter import NameFilter

# Letters whose lower case is ASCII lower-casing, caseless ones, and every kind of
# exception: accented capitals, the Kelvin sign, dotted capital I (lower case of two
# characters), capital sigma (final sigma in context), sharp s, a lone surrogate.
ALPHABET = list("abcxyzABCXYZ 0129-_") + ["É", "é", "\u212a", "k", "K", "İ", "i", "\u0307",
                                           "Σ", "σ", "ς", "ẞ", "ß", "王", "小", "Я", "я",
                                           "\udc80", "ﬁ"]


def packed_identity(name: str) -> bytes:
    return codec.pack("identity", {
        "identity_id": "id-" + name[:3], "identity_name": name, "user_type": "employee",
        "permission_ids": [], "ext_user_info": {"note": "ABC"}, "face_ids": [],
        "register_image_ids": [], "seq": 1, "created_at": 0.0})


def test_a_skipped_record_never_matches_over_random_tricky_names():
    rng = random.Random(11)
    checked = skipped = 0
    for _ in range(4000):
        name = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 8)))
        lowered = name.lower()
        if lowered and rng.random() < 0.7:  # a piece of the name: mostly a real match
            start = rng.randrange(len(lowered))
            needle = lowered[start:start + rng.randint(1, 4)]
        else:
            needle = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 3))).lower()
        name_filter = NameFilter(needle)
        matches = name_filter.matches(name)
        assert matches == (needle in lowered)
        if not name_filter.may_match(packed_identity(name)):
            skipped += 1
            assert not matches, (name, needle)
        checked += matches
    assert checked > 1000 and skipped > 500  # both sides of the test were exercised


def test_the_exceptions_that_a_plain_byte_search_would_miss():
    for name, needle in [("\u212aelvin", "kel"), ("XİX", "xi"), ("İstanbul", "\u0307s"),
                         ("ΟΔΟΣ", "ς"), ("ÉCOLE", "éc"), ("STRASSE ẞ", "ß")]:
        assert needle in name.lower()
        assert needle.encode() not in packed_identity(name).lower()  # the byte test alone
        assert NameFilter(needle).may_match(packed_identity(name)), (name, needle)


def test_ascii_and_caseless_needles_skip_records_without_them():
    assert not NameFilter("wang").may_match(packed_identity("Zhang San"))
    assert NameFilter("wang").may_match(packed_identity("WANG Wei"))
    assert not NameFilter("王").may_match(packed_identity("小张"))
    assert NameFilter("王").may_match(packed_identity("小王"))
