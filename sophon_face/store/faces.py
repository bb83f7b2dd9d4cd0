"""Face records and their features: one registered face, the photo it came from, its feature.

The public record (what ``make_record`` builds and ``get`` / ``iter_all`` return): ``face_id``,
``identity_id``, ``register_image_id``, ``feature`` (raw little-endian float32 bytes,
codec.feature_to_bytes), ``dim`` (number of floats) and ``created_at`` (float seconds).
``count`` is the library size that the capacity check (GROUP_LEN_ERROR) compares with: LMDB's
entry count, exact inside the same transaction.

Layout (store layout 3): ``faces`` maps a face key to the record without its feature but with
its slot (schema 2), in short field names (``FACE_FIELDS``): about 65 bytes, where the field
names alone took 70. The feature is a row of a packed block (feature_blocks.py, which
describes the blocks, their owners and the free slots).

A face's record, its block row and owner, the free list and the counter change in the
caller's write transaction: a face and its feature commit together or not at all. Writing one
face rewrites its block (128 KiB), so ``put_many`` groups a batch by block, and ``FaceCopier``
(the store migration) writes each block once, by appending.

Schema-1 records (layout 2 and older) carry the feature inline; they are still read, so the
migration (migrations.py) reads an old store through this module.
"""

from __future__ import annotations

import time
from array import array
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import msgpack
import numpy as np

from sophon_face.errors import GroupLenError
from sophon_face.store import codec, keys
from sophon_face.store.codec import FEATURE_DTYPE, StoreFormatError
from sophon_face.store.env import Txn
from sophon_face.store.feature_blocks import (BlockCache, BlockEdits, Owners, block_bytes,
                                              block_value, feature_row, free_owners, free_slot,
                                              rows_per_block, set_next_slot, take_slot)

KIND = "face"

#: Public field -> its name in the stored record (schema 2). The record is stored once per
#: face, so one-letter names save 60 bytes per face (3 % of the disk at 1M x 512).
FACE_FIELDS = {"identity_id": "i", "register_image_id": "r", "dim": "d", "slot": "s",
               "created_at": "t"}


def make_record(face_id: str, identity_id: str, register_image_id: str,
                feature: np.ndarray, created_at: Optional[float] = None) -> Dict[str, Any]:
    """A face record ready for ``put`` (the feature is converted to its stored bytes)."""
    data = codec.feature_to_bytes(feature)
    return {
        "face_id": face_id,
        "identity_id": identity_id,
        "register_image_id": register_image_id,
        "feature": data,
        "dim": len(data) // FEATURE_DTYPE.itemsize,
        "created_at": time.time() if created_at is None else created_at,
    }


class StoredFace(NamedTuple):
    """A decoded face record: schema 2 has a ``slot``, schema 1 its ``inline`` feature."""

    identity_id: str
    register_image_id: str
    dim: int
    created_at: float
    slot: Optional[int]
    inline: Optional[bytes]


def decode(data: bytes) -> StoredFace:
    """A stored face record of either schema."""
    record = codec.unpack(KIND, data)
    try:
        if "feature" in record:  # schema 1: everything inline, long names
            return StoredFace(record["identity_id"], record["register_image_id"],
                              int(record["dim"]), record["created_at"], None,
                              bytes(record["feature"]))
        image = record["r"]
        image_id = keys.uuid_from_key(image) if isinstance(image, bytes) else image
        return StoredFace(record["i"], image_id, int(record["d"]), record["t"],
                          int(record["s"]), None)
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreFormatError(f"face record lacks or garbles a field: {exc!r}") from exc


def _encode(record: Dict[str, Any], slot: int) -> bytes:
    image_id = record["register_image_id"]
    try:
        image: Any = keys.image_key(image_id)  # 18 bytes instead of 38
    except ValueError:
        image = image_id  # not a canonical UUID (tools and tests): kept as the string
    return codec.pack(KIND, {"i": record["identity_id"], "r": image, "d": record["dim"],
                             "s": slot, "t": record["created_at"]})


def _public(face_id: str, face: StoredFace, feature: bytes) -> Dict[str, Any]:
    return {"face_id": face_id, "identity_id": face.identity_id,
            "register_image_id": face.register_image_id, "feature": feature,
            "dim": face.dim, "created_at": face.created_at}


# ------------------------------------------------------------------ reading

def get(txn: Txn, face_id: str) -> Optional[Dict[str, Any]]:
    """The face record with its feature, or None (also for a string that is not a canonical
    UUID)."""
    key = _key_or_none(face_id)
    if key is None:
        return None
    data = txn.raw.get(key, db=txn.dbs.faces)
    if data is None:
        return None
    face = decode(data)
    return _public(face_id, face, _feature_bytes(txn, face, BlockCache()))


def feature(record: Dict[str, Any]) -> np.ndarray:
    """The float32 feature of a face record (read-only view)."""
    return codec.feature_from_bytes(record["feature"])


def iter_all(txn: Txn) -> Iterator[Dict[str, Any]]:
    """Every face record with its feature, in key order (random with respect to creation).

    Each face reads its block (one block is cached): meant for checks and small tools; the
    gallery rebuild reads blocks in order instead (``gallery_index``,
    ``feature_blocks.iter_feature_rows``).
    """
    cache = BlockCache()
    cursor = txn.raw.cursor(db=txn.dbs.faces)
    for key, data in cursor.iternext(keys=True, values=True):
        face = decode(data)
        yield _public(keys.uuid_from_key(key), face, _feature_bytes(txn, face, cache))


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


class GalleryIndex(NamedTuple):
    """What a gallery rebuild needs of every face, in face-key order."""

    keys: List[bytes]  # 16-byte face keys (the gallery's own form of a face id)
    identities: np.ndarray  # int32 per face: its identity's number in ``identity_ids``
    identity_ids: List[str]  # each identity once, numbered in order of first appearance
    identity_numbers: Dict[str, int]  # identity id -> its number
    dims: np.ndarray  # int32
    slots: np.ndarray  # int64


def gallery_index(txn: Txn) -> GalleryIndex:
    """Face key, identity, dimension and slot of every face: one pass over the small records,
    no feature read (``feature_blocks.iter_feature_rows`` reads those, block by block).

    The hot loop of a cold start (a million records): plain msgpack, appends to C arrays (no
    int object per face outlives the walk), and the identities numbered on the way (one dict
    operation on a string still in cache, where a second pass would pay a cache miss per
    face). A record not of the current schema goes through ``decode``, which refuses what a
    rebuild cannot use.
    """
    face_keys: List[bytes] = []
    numbers = array("i")
    number_of: Dict[str, int] = {}
    dims = array("i")
    slots = array("q")
    add_key, add_number, add_dim, add_slot = (face_keys.append, numbers.append, dims.append,
                                              slots.append)
    number = number_of.setdefault
    unpack = msgpack.unpackb
    version = codec.SCHEMA_VERSIONS[KIND]
    for key, data in txn.raw.cursor(db=txn.dbs.faces).iternext(keys=True, values=True):
        try:
            record = unpack(data, raw=False, unicode_errors="surrogatepass")
            current = record.get("v") == version
        except Exception:  # msgpack raises several unrelated types for bad input
            current = False
        if not current:
            face = decode(data)
            if face.slot is None:
                raise StoreFormatError("a face record still holds its feature inline: the "
                                       "store was not migrated to layout 3")
            record = {"i": face.identity_id, "d": face.dim, "s": face.slot}
        add_key(key)
        add_number(number(record["i"], len(number_of)))
        add_dim(record["d"])
        add_slot(record["s"])
    return GalleryIndex(face_keys, np.frombuffer(numbers, dtype=np.intc), list(number_of),
                        number_of, np.frombuffer(dims, dtype=np.intc),
                        np.frombuffer(slots, dtype=np.longlong))


def features_of(txn: Txn, face_keys: Sequence[bytes], dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(rows, found)``: the (k, dim) float32 features of the faces and which exist with
    that dimension (rows of the others are zeros). For re-ranking search candidates."""
    rows = np.zeros((len(face_keys), dim), dtype=np.float32)
    found = np.zeros(len(face_keys), dtype=bool)
    cache = BlockCache()
    for i, key in enumerate(face_keys):
        data = txn.raw.get(key, db=txn.dbs.faces)
        if data is None:
            continue
        face = decode(data)
        if face.dim != dim:
            continue
        rows[i] = np.frombuffer(_feature_bytes(txn, face, cache), dtype=FEATURE_DTYPE)
        found[i] = True
    return rows, found


def _feature_bytes(txn: Txn, face: StoredFace, cache: BlockCache) -> bytes:
    if face.inline is not None:
        return face.inline
    assert face.slot is not None
    return feature_row(txn, face.dim, face.slot, cache)


# ------------------------------------------------------------------ writing

def put(txn: Txn, record: Dict[str, Any]) -> None:
    """Insert or overwrite a face record and its feature."""
    put_many(txn, [record])


def put_many(txn: Txn, records: Iterable[Dict[str, Any]]) -> None:
    """Insert or overwrite face records; each block touched is rewritten once.

    An overwritten face keeps its slot (a new dimension moves it to a slot of that one).
    """
    edits = BlockEdits()
    for record in records:
        if record["dim"] * FEATURE_DTYPE.itemsize != len(record["feature"]) or record["dim"] < 1:
            raise ValueError("face record: dim does not match the feature bytes")
        key = keys.face_key(record["face_id"])
        dim = int(record["dim"])
        slot = None
        old = txn.raw.get(key, db=txn.dbs.faces)
        if old is not None:
            face = decode(old)
            if face.slot is not None and face.dim == dim:
                slot = face.slot
            elif face.slot is not None:
                free_slot(txn, edits, face.dim, face.slot)
        if slot is None:
            slot = take_slot(txn, dim)
        edits.set_row(dim, slot, bytes(record["feature"]), (key, record["identity_id"]))
        txn.raw.put(key, _encode(record, slot), db=txn.dbs.faces)
    edits.write(txn)


def delete(txn: Txn, face_id: str) -> bool:
    """Remove a face record and zero its feature; False when there was none."""
    key = _key_or_none(face_id)
    if key is None:
        return False
    data = txn.raw.get(key, db=txn.dbs.faces)
    if data is None:
        return False
    face = decode(data)
    if face.slot is not None:
        edits = BlockEdits()
        free_slot(txn, edits, face.dim, face.slot)
        edits.write(txn)
    return bool(txn.raw.delete(key, db=txn.dbs.faces))


class FaceCopier:
    """Writes faces into the EMPTY face databases of a new store in ascending face-key order
    (the store migration): slots are numbered in that order, each block is written whole and
    once, and records and blocks are appended, which leaves LMDB's pages full (a put in the
    middle splits a page in half). Call ``add`` for every face, across as many write
    transactions as wanted, then ``finish`` in the last one."""

    def __init__(self) -> None:
        self._next: Dict[int, int] = {}
        # dim -> (block, its rows, its owners)
        self._pending: Dict[int, Tuple[int, bytearray, Owners]] = {}

    def add(self, txn: Txn, face_key: bytes, record: Dict[str, Any]) -> None:
        dim = int(record["dim"])
        row_bytes = dim * FEATURE_DTYPE.itemsize
        if len(record["feature"]) != row_bytes:
            raise StoreFormatError(f"face {keys.uuid_from_key(face_key)}: dim {dim} does not "
                                   f"match its {len(record['feature'])} feature bytes")
        slot = self._next.get(dim, 0)
        self._next[dim] = slot + 1
        block, row = divmod(slot, rows_per_block(dim))
        pending = self._pending.get(dim)
        if pending is None or pending[0] != block:
            if pending is not None:
                self._flush(txn, dim)
            pending = (block, bytearray(block_bytes(dim)), free_owners(dim))
            self._pending[dim] = pending
        pending[1][row * row_bytes:(row + 1) * row_bytes] = record["feature"]
        pending[2].face_keys[row] = bytes(face_key)
        pending[2].identity_ids[row] = record["identity_id"]
        _append(txn, txn.dbs.faces, face_key, _encode(record, slot))
        if row == rows_per_block(dim) - 1:
            self._flush(txn, dim)

    def finish(self, txn: Txn) -> None:
        for dim in list(self._pending):
            self._flush(txn, dim)
        for dim, value in self._next.items():
            set_next_slot(txn, dim, value)

    def _flush(self, txn: Txn, dim: int) -> None:
        block, data, owners = self._pending.pop(dim)
        _append(txn, txn.dbs.features, keys.feature_block_key(dim, block),
                block_value(data, owners))


def _append(txn: Txn, db: Any, key: bytes, value: Any) -> None:
    if not txn.raw.put(key, value, append=True, db=db):
        txn.raw.put(key, value, db=db)  # not after the last key (several dimensions)


def _key_or_none(face_id: str) -> Optional[bytes]:
    try:
        return keys.face_key(face_id)
    except ValueError:
        return None  # never issued by us, so it cannot exist
