"""Face records: one registered face, its feature and the photo it came from.

Record fields: ``face_id``, ``identity_id``, ``register_image_id``, ``feature`` (raw
little-endian float32 bytes, codec.feature_to_bytes), ``dim`` (number of floats) and
``created_at`` (float seconds). ``count`` is the library size that the capacity check
(GROUP_LEN_ERROR) compares with: LMDB's entry count, exact inside the same transaction.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from sophon_face.errors import GroupLenError
from sophon_face.store import codec, keys
from sophon_face.store.env import Txn

KIND = "face"


def make_record(face_id: str, identity_id: str, register_image_id: str,
                feature: np.ndarray, created_at: Optional[float] = None) -> Dict[str, Any]:
    """A face record ready for ``put`` (the feature is converted to its stored bytes)."""
    data = codec.feature_to_bytes(feature)
    return {
        "face_id": face_id,
        "identity_id": identity_id,
        "register_image_id": register_image_id,
        "feature": data,
        "dim": len(data) // codec.FEATURE_DTYPE.itemsize,
        "created_at": time.time() if created_at is None else created_at,
    }


def get(txn: Txn, face_id: str) -> Optional[Dict[str, Any]]:
    """The face record, or None (also for a string that is not a canonical UUID)."""
    key = _key_or_none(face_id)
    if key is None:
        return None
    data = txn.raw.get(key, db=txn.dbs.faces)
    return None if data is None else codec.unpack(KIND, data)


def put(txn: Txn, record: Dict[str, Any]) -> None:
    """Insert or overwrite a face record."""
    if record["dim"] * codec.FEATURE_DTYPE.itemsize != len(record["feature"]):
        raise ValueError("face record: dim does not match the feature bytes")
    txn.raw.put(keys.face_key(record["face_id"]), codec.pack(KIND, record), db=txn.dbs.faces)


def delete(txn: Txn, face_id: str) -> bool:
    """Remove a face record; False when there was none."""
    key = _key_or_none(face_id)
    return key is not None and bool(txn.raw.delete(key, db=txn.dbs.faces))


def feature(record: Dict[str, Any]) -> np.ndarray:
    """The float32 feature of a face record (read-only view)."""
    return codec.feature_from_bytes(record["feature"])


def iter_all(txn: Txn) -> Iterator[Dict[str, Any]]:
    """Every face record, in key order (random with respect to creation)."""
    cursor = txn.raw.cursor(db=txn.dbs.faces)
    for data in cursor.iternext(keys=False, values=True):
        yield codec.unpack(KIND, data)


def iter_gallery_rows(txn: Txn) -> Iterator[Tuple[bytes, str, int, bytes]]:
    """``(face key, identity_id, dim, feature bytes)`` of every face, in key order.

    What a gallery rebuild needs, each record decoded once. The face id is left as its
    16-byte key (``keys.uuid_from_key`` turns it into the id), which is also the form the
    gallery keeps, so no id string is built per face.
    """
    cursor = txn.raw.cursor(db=txn.dbs.faces)
    for key, data in cursor.iternext(keys=True, values=True):
        record = codec.unpack(KIND, data)
        yield key, record["identity_id"], record["dim"], record["feature"]


def count(txn: Txn) -> int:
    return txn.entries(txn.dbs.faces)


def check_capacity(txn: Txn, capacity: int, adding: int = 1, removing: int = 0) -> None:
    """Raise ``GroupLenError`` if the library would exceed ``capacity`` faces.

    Called inside the write transaction that adds the faces, so two concurrent requests
    cannot both pass a check made on an older count. ``removing`` counts the faces the same
    transaction deletes (force_replace, replaceface).
    """
    if count(txn) - removing + adding > capacity:
        raise GroupLenError()


def _key_or_none(face_id: str) -> Optional[bytes]:
    try:
        return keys.face_key(face_id)
    except ValueError:
        return None  # never issued by us, so it cannot exist
