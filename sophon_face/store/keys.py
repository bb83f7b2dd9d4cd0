"""Every LMDB key the store writes is built here, and only here.

Three key shapes exist:

* **Client strings** (identity ids, permission ids and names, device ids): 1..128 characters
  chosen by the client. In UTF-8 such a string may take up to 512 bytes, more than LMDB's
  default 511-byte key limit, so a string whose UTF-8 form is longer than
  ``MAX_INLINE_ID_BYTES`` is keyed by its SHA-256 digest instead. A tag byte in front tells
  the two forms apart, so an inline key can never equal a digest key. The full string is
  always kept inside the record, and the repositories compare it on read: a (practically
  impossible) digest collision then reads as "not found" instead of returning someone else.
* **Server UUIDs** (face ids, register image ids): the 16 bytes of the UUID. Only the
  canonical lower-case 36-character form is accepted, because ids are case-sensitive
  strings on the wire (api/README.md section 7) and ``uuid.UUID`` would otherwise also
  accept ``"{...}"``, upper case or hex without dashes as the same key.
* **Sequence numbers** (creation order) and event ids: 8-byte big-endian unsigned integers,
  so that LMDB's bytewise key order is numeric order.
* **Feature blocks and slots** (feature_blocks.py): the feature dimension (2 bytes) then the
  block or slot number (4 bytes), big-endian, so one dimension's blocks are contiguous and in
  order.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from typing import Iterable, List, Optional, Tuple

#: Longest UTF-8 client string stored inline (tag byte + string). 254 keeps one key at
#: 255 bytes, so two client keys can later be joined into one composite key (e.g. a
#: group-membership index) and still fit LMDB's 511-byte default key limit. Every ASCII id
#: of the allowed 128 characters is inline; only long non-ASCII ids are digested.
MAX_INLINE_ID_BYTES = 254

_INLINE_TAG = b"\x00"
_DIGEST_TAG = b"\x01"
_U64 = struct.Struct(">Q")
_DIM_NUMBER = struct.Struct(">HI")


def client_string_key(value: str) -> bytes:
    """The key of a client-chosen string (identity id, permission id or name, device id).

    Lone surrogates (which JSON can carry) are encoded with ``surrogatepass`` so that every
    string the API can deliver has a key instead of raising deep inside a write.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"a client id must be a non-empty string, got {value!r}")
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_INLINE_ID_BYTES:
        return _INLINE_TAG + raw
    return _DIGEST_TAG + hashlib.sha256(raw).digest()


def client_string_from_key(key: bytes) -> Optional[str]:
    """The string of an inline client key; None for a digest key (read the record then)."""
    key = bytes(key)
    if key[:1] == _INLINE_TAG:
        return key[1:].decode("utf-8", "surrogatepass")
    return None


def client_strings_from_keys(keys: Iterable[bytes]) -> List[Optional[str]]:
    """``client_string_from_key`` of many keys at once, in one comprehension (a cold start
    decodes a million group members; three calls per key cost 0.5 s)."""
    return [key[1:].decode("utf-8", "surrogatepass") if key[:1] == _INLINE_TAG else None
            for key in keys]


# The kinds share one function on purpose (one rule for client strings); the names say
# which database the key belongs to at the call site.
identity_key = client_string_key
permission_key = client_string_key
permission_name_key = client_string_key
device_key = client_string_key


def uuid_key(value: str) -> bytes:
    """The 16-byte key of a server-generated UUID string (face id, register image id).

    Raises ``ValueError`` for anything that is not a canonical lower-case UUID string; the
    repositories turn that into "not found", since such an id can never have been issued.
    """
    if not isinstance(value, str) or len(value) != 36:
        raise ValueError(f"not a canonical UUID: {value!r}")
    parsed = uuid.UUID(value)
    if str(parsed) != value:
        raise ValueError(f"not a canonical UUID: {value!r}")
    return parsed.bytes


def uuid_from_key(key: bytes) -> str:
    """The canonical UUID string of a 16-byte key (inverse of ``uuid_key``)."""
    return str(uuid.UUID(bytes=bytes(key)))


face_key = uuid_key
image_key = uuid_key


def seq_key(seq: int) -> bytes:
    """Key of a creation sequence number in an ordering index (8 bytes, big-endian)."""
    return _U64.pack(seq)


def seq_from_key(key: bytes) -> int:
    return _U64.unpack(bytes(key))[0]


def event_key(event_id: int) -> bytes:
    """Key of an event: its integer id (microseconds since the epoch, README section 7), so
    a cursor walks events oldest to newest and ``iterprev`` gives newest first."""
    return _U64.pack(event_id)


def event_id_from_key(key: bytes) -> int:
    return _U64.unpack(bytes(key))[0]


def setting_key(name: str) -> bytes:
    """Key of a runtime setting: the setting's name (a code constant, always short ASCII)."""
    return name.encode("utf-8")


def meta_key(name: str) -> bytes:
    """Key of a store-internal value in the ``meta`` database (counters, layout version)."""
    return name.encode("ascii")


def feature_block_key(dim: int, block: int) -> bytes:
    """Key of a block of feature rows of dimension ``dim`` (feature_blocks.py)."""
    return _DIM_NUMBER.pack(dim, block)


def feature_slot_key(dim: int, slot: int) -> bytes:
    """Key of a free feature slot of dimension ``dim`` (feature_blocks.py)."""
    return _DIM_NUMBER.pack(dim, slot)


def feature_dim_prefix(dim: int) -> bytes:
    """The leading bytes shared by every block and slot key of ``dim``."""
    return _DIM_NUMBER.pack(dim, 0)[:2]


def dim_number_from_key(key: bytes) -> Tuple[int, int]:
    """``(dim, number)`` of a feature block or slot key."""
    dim, number = _DIM_NUMBER.unpack(bytes(key))
    return dim, number
