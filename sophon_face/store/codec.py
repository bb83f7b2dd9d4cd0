"""The one codec of the store: versioned msgpack records, raw float32 features.

Every record is a msgpack map carrying its schema version under ``"v"``. A reader accepts
every version up to the one it knows and refuses newer ones with ``StoreFormatError``, so a
downgraded daemon stops with a clear message instead of misreading data written by a newer
one. No pickle: the data directory must never be able to run code.

Features are raw little-endian float32 bytes: compact, independent of the numpy version, and
readable in one ``np.frombuffer``. Since store layout 3 they live in blocks of rows beside the
face records (faces.py: a 512-d feature no longer fills a 4 KB LMDB overflow page of its own);
a schema-1 face record still carries its feature inline, and is read as such.
"""

from __future__ import annotations

import math
from typing import Any, Dict, FrozenSet, Mapping

import msgpack
import numpy as np

#: Current schema version per record kind. Bump a kind's version when its fields change
#: meaning, and teach ``unpack`` to upgrade the older form.
SCHEMA_VERSIONS: Dict[str, int] = {
    "identity": 1,
    # 2: the feature moved to a block row (field "s", the slot); short field names, as the
    # record is stored once per face (faces.py, FACE_FIELDS).
    "face": 2,
    "permission": 1,
    "device": 1,
    "event": 1,
    "setting": 1,
    "preview": 1,
    "push": 1,
    "credentials": 1,
}

#: Fields a record of a kind must carry; checked on pack so a bug cannot persist a record
#: that every later read would trip over. Kinds owned by other modules start unchecked.
REQUIRED_FIELDS: Dict[str, FrozenSet[str]] = {
    "identity": frozenset({
        "identity_id", "identity_name", "user_type", "permission_ids", "ext_user_info",
        "face_ids", "register_image_ids", "seq", "created_at",
    }),
    # The stored form of schema 2 (faces.py maps it to and from the public record).
    "face": frozenset({"i", "r", "d", "s", "t"}),
    "permission": frozenset({"permission_id", "permission_name", "description", "seq"}),
    "push": frozenset({"delivered"}),
    "event": frozenset({
        "event_id", "timestamp", "identity_id", "identity_name", "register_image_id",
        "recognize_face_image_id", "spot_image_id", "permission_id", "permission_name",
        "user_type", "score", "post_action", "frame_id", "media_device_info",
        "media_device_url", "recognize_face_attr", "feature", "ext_data", "image_bytes",
    }),
}

VERSION_FIELD = "v"

#: Features are little-endian float32 on disk whatever the host byte order.
FEATURE_DTYPE = np.dtype("<f4")


class StoreFormatError(Exception):
    """Stored data this version of sophon-face cannot read (newer schema, corrupt record)."""


def pack(kind: str, record: Mapping[str, Any]) -> bytes:
    """Serialise ``record`` of ``kind`` with the kind's current schema version."""
    version = _version_of(kind)
    missing = REQUIRED_FIELDS.get(kind, frozenset()).difference(record)
    if missing:
        raise ValueError(f"{kind} record lacks {sorted(missing)}")
    body = dict(record)
    body[VERSION_FIELD] = version
    # surrogatepass: a lone surrogate that arrived in JSON round-trips instead of failing
    # the write; unpack uses the same handler.
    return msgpack.packb(body, use_bin_type=True, unicode_errors="surrogatepass")


def unpack(kind: str, data: bytes) -> Dict[str, Any]:
    """Deserialise a record of ``kind``; the version field is removed from the result."""
    known = _version_of(kind)
    try:
        record = msgpack.unpackb(
            data, raw=False, use_list=True, unicode_errors="surrogatepass")
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise StoreFormatError(f"{kind} record is not valid msgpack: {exc}") from exc
    if not isinstance(record, dict):
        raise StoreFormatError(f"{kind} record is not a map")
    version = record.pop(VERSION_FIELD, None)
    if not isinstance(version, int) or version < 1:
        raise StoreFormatError(f"{kind} record has no valid schema version: {version!r}")
    if version > known:
        raise StoreFormatError(
            f"{kind} record has schema version {version}, newer than the {known} this "
            "sophon-face understands; the data was written by a newer release")
    return record


def pack_list(values: Any) -> bytes:
    """A plain msgpack list, without a schema version: for parts of a record whose layout
    the store layout version covers (the owners of a feature block, feature_blocks.py)."""
    return msgpack.packb(values, use_bin_type=True, unicode_errors="surrogatepass")


def unpack_list(data: bytes) -> Any:
    """Inverse of ``pack_list``; ``StoreFormatError`` for anything but a msgpack list."""
    try:
        values = msgpack.unpackb(data, raw=False, use_list=True,
                                 unicode_errors="surrogatepass")
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise StoreFormatError(f"not a valid msgpack list: {exc}") from exc
    if not isinstance(values, list):
        raise StoreFormatError("not a msgpack list")
    return values


def storable(value: Any, max_depth: int = 64, depth: int = 0) -> bool:
    """True when a free-form JSON value can be packed here and given back as valid JSON:
    integers msgpack can encode ([-2**63, 2**64)), finite floats (Python's JSON parser
    accepts NaN/Infinity), at most ``max_depth`` levels of nesting."""
    if depth > max_depth:
        return False
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, int):
        return -(2 ** 63) <= value < 2 ** 64
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(storable(item, max_depth, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(storable(item, max_depth, depth + 1) for item in value.values())
    return False


def feature_to_bytes(feature: np.ndarray) -> bytes:
    """Raw little-endian float32 bytes of a 1-D feature vector."""
    array = np.asarray(feature)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"a feature must be a non-empty 1-D vector, got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=FEATURE_DTYPE).tobytes()


def feature_from_bytes(data: bytes) -> np.ndarray:
    """The float32 vector stored in ``data`` (a read-only view, no copy)."""
    if len(data) == 0 or len(data) % FEATURE_DTYPE.itemsize:
        raise StoreFormatError(f"feature of {len(data)} bytes is not float32 data")
    return np.frombuffer(data, dtype=FEATURE_DTYPE)


def _version_of(kind: str) -> int:
    try:
        return SCHEMA_VERSIONS[kind]
    except KeyError:
        raise ValueError(f"unknown record kind {kind!r}") from None
