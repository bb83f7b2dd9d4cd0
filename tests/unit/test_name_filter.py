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


def packed_identity(name: str, identity_id: str = "", extra: object = None) -> bytes:
    return codec.pack("identity", {
        "identity_id": identity_id or "id-" + name[:3], "identity_name": name,
        "user_type": "employee", "permission_ids": [],
        "ext_user_info": {"note": "ABC"} if extra is None else extra,
        "face_ids": ["1e644cc0-1631-4248-b518-c8701d3c7a91"], "register_image_ids": [],
        "seq": 1, "created_at": 0.0})


def test_a_skipped_record_never_matches_over_random_tricky_names():
    rng = random.Random(11)
    checked = skipped = 0
    for _ in range(4000):
        # 1 to 40 repeats: names of every msgpack str header (fixstr, str 8, str 16).
        name = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 8)))
        name *= rng.choice([1, 1, 1, 5, 40])
        lowered = name.lower()
        if lowered and rng.random() < 0.7:  # a piece of the name: mostly a real match
            start = rng.randrange(len(lowered))
            needle = lowered[start:start + rng.randint(1, 4)]
        else:
            needle = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 3))).lower()
        name_filter = NameFilter(needle)
        matches = name_filter.matches(name)
        assert matches == (needle in lowered)
        # Other fields hold look-alikes: the needle, the name's key, the key's bytes inside
        # a string (after a soft hyphen, whose UTF-8 ends in the key's first byte).
        extra = rng.choice([None, {"note": needle}, {"identity_name": name + "x"},
                            {"k": "\u00adidentity_name" + needle}])
        packed = packed_identity(name, identity_id=needle or "x", extra=extra)
        if not name_filter.may_match(packed):
            skipped += 1
            assert not matches, (name, needle, extra)
        checked += matches
    assert checked > 1000 and skipped > 500  # both sides of the test were exercised


def test_only_the_name_is_searched():
    packed = packed_identity("Zhang Wei", identity_id="emp-0123", extra={"note": "0123 wang"})
    assert not NameFilter("0123").may_match(packed)  # in the id and in ext_user_info only
    assert not NameFilter("wang").may_match(packed)
    assert not NameFilter("1e644").may_match(packed)  # in a face id
    assert NameFilter("ei").may_match(packed)
    for long_name in ("x" * 40 + "Needle", "y" * 300 + "Needle"):  # str 8, str 16
        assert NameFilter("needle").may_match(packed_identity(long_name))
        assert not NameFilter("other").may_match(packed_identity(long_name))
    # The key's bytes twice (here in ext_user_info): the record is decoded instead.
    look_alike = codec.pack("identity", {  # the look-alike before the real key
        "ext_user_info": {"identity_name": "Bob"}, "identity_id": "a", "identity_name": "Alice",
        "user_type": "employee", "permission_ids": [], "face_ids": [], "register_image_ids": [],
        "seq": 1, "created_at": 0.0})
    assert NameFilter("alice").may_match(look_alike)


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
