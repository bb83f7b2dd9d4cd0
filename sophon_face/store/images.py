"""Registration photos: the image bytes exactly as received, keyed by register_image_id.

Stored raw rather than through the codec: the blob is self-describing (JPEG/PNG magic) and
can be several megabytes, which msgpack would only copy once more.
"""

from __future__ import annotations

from typing import Optional

from sophon_face.store import keys
from sophon_face.store.env import Txn


def get(txn: Txn, image_id: str) -> Optional[bytes]:
    """The photo, or None (no such image, or an id that was never issued)."""
    key = _key_or_none(image_id)
    return None if key is None else txn.raw.get(key, db=txn.dbs.images)


def put(txn: Txn, image_id: str, image_bytes: bytes) -> None:
    if not image_bytes:
        raise ValueError("an empty image is not stored")
    txn.raw.put(keys.image_key(image_id), image_bytes, db=txn.dbs.images)


def delete(txn: Txn, image_id: str) -> bool:
    """Remove a photo; False when there was none (R19: feature-only faces have no photo)."""
    key = _key_or_none(image_id)
    return key is not None and bool(txn.raw.delete(key, db=txn.dbs.images))


def exists(txn: Txn, image_id: str) -> bool:
    key = _key_or_none(image_id)
    if key is None:
        return False
    # A cursor positions on the key without copying a multi-megabyte value out.
    return txn.raw.cursor(db=txn.dbs.images).set_key(key)


def _key_or_none(image_id: str) -> Optional[bytes]:
    try:
        return keys.image_key(image_id)
    except ValueError:
        return None
