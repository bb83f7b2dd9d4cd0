"""Face records and their features: one registered face, the photo it came from, its feature.

The public record (what ``make_record`` builds and ``get`` / ``iter_all`` return): ``face_id``,
``identity_id``, ``register_image_id``, ``feature`` (raw little-endian float32 bytes,
codec.feature_to_bytes), ``dim`` (number of floats) and ``created_at`` (float seconds).
``count`` is the library size that the capacity check (GROUP_LEN_ERROR) compares with: LMDB's
entry count, exact inside the same transaction.

Layout (store layout 3). A 512-d feature is 2048 bytes: inside its record it passed LMDB's
~2 KB node limit, so every face took a 4 KB overflow page of its own (2.2x the feature bytes
on disk, and a rebuild that read every one of those pages). Features now live apart, packed:

* ``features``: key (dim, block) -> ``rows_per_block(dim)`` rows of ``dim`` float32, one row
  per *slot* (slot s is row ``s % R`` of block ``s // R``), then the block's *owners*: a
  msgpack list of two lists, the face key (16 bytes) and the identity id of every row, None
  for a free row. A block is at most 128 KiB less the 16-byte header of LMDB's first
  overflow page, so it fills whole pages: 62 rows of 512-d and up to 4080 bytes of owners
  in 32 pages of 4 KiB (identity ids of up to ~45 characters fit; longer ones make the
  block take one more page). A free slot's row is zeros, so deleting a face also erases its
  feature from the live data. The owners let a cold start build the gallery from the blocks
  alone: one small msgpack list per 62 faces instead of a million face records.
* ``feature_free``: (dim, slot) of every free slot. The lowest is reused first, so blocks stay
  dense. Slots above the ``next slot`` counter (in ``meta``) were never handed out.
* ``faces``: face key -> the record without its feature but with its slot (schema 2), in
  short field names (``FACE_FIELDS``): about 65 bytes, where the field names alone took 70.

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

KIND = "face"

#: Bytes one block (rows and owners) may take: 128 KiB less the 16-byte header of LMDB's
#: first overflow page, so a block fills whole pages on 4, 16 and 64 KiB page systems alike
#: (62 rows of 512-d in 32 pages of 4 KiB, 3.1 % of them left to the owners). Part of store
#: layout 3: changing it moves every feature (a layout version bump).
FEATURE_BLOCK_BYTES = 128 * 1024 - 16
#: Bytes set aside per row for its owner when sizing a block: at 512-d this leaves 62 rows
#: and 4080 bytes for the owners, ~65 per row, of which the face key takes 18 in msgpack.
#: Part of store layout 3, like ``FEATURE_BLOCK_BYTES``.
OWNER_BYTES_PER_ROW = 48

#: Public field -> its name in the stored record (schema 2). The record is stored once per
#: face, so one-letter names save 60 bytes per face (3 % of the disk at 1M x 512).
FACE_FIELDS = {"identity_id": "i", "register_image_id": "r", "dim": "d", "slot": "s",
               "created_at": "t"}

_U64_BYTES = 8


def rows_per_block(dim: int) -> int:
    """Feature rows of dimension ``dim`` in one block (62 at 512-d, 232 at 128-d)."""
    return max(1, FEATURE_BLOCK_BYTES // (dim * FEATURE_DTYPE.itemsize + OWNER_BYTES_PER_ROW))


def block_bytes(dim: int) -> int:
    """Bytes of a block's rows (its owners follow them)."""
    return rows_per_block(dim) * dim * FEATURE_DTYPE.itemsize


class Owners(NamedTuple):
    """Who holds each row of a block: face key and identity id, None for a free row."""

    face_keys: List[Optional[bytes]]
    identity_ids: List[Optional[str]]


def _free_owners(dim: int) -> Owners:
    per_block = rows_per_block(dim)
    return Owners([None] * per_block, [None] * per_block)


def _block_value(rows: Any, owners: Owners) -> bytes:
    return bytes(rows) + codec.pack_list([owners.face_keys, owners.identity_ids])


def _owners_of(data: Optional[bytes], dim: int, block: int) -> Owners:
    """The owners of a stored block (its rows are ``data[:block_bytes(dim)]``); refuses a
    missing or garbled block."""
    size = block_bytes(dim)
    if data is None or len(data) <= size:
        raise StoreFormatError(f"feature block {block} of dimension {dim} is missing or "
                               "has the wrong size")
    try:
        face_keys, identity_ids = codec.unpack_list(data[size:])
        owners = Owners(face_keys, identity_ids)
    except (TypeError, ValueError) as exc:
        raise StoreFormatError(f"feature block {block} of dimension {dim}: garbled owners "
                               f"({exc!r})") from exc
    if len(owners.face_keys) != rows_per_block(dim) or \
            len(owners.identity_ids) != rows_per_block(dim):
        raise StoreFormatError(f"feature block {block} of dimension {dim}: owners of "
                               f"{len(owners.face_keys)} rows, not {rows_per_block(dim)}")
    return owners


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
    return _public(face_id, face, _feature_bytes(txn, face, _BlockCache()))


def feature(record: Dict[str, Any]) -> np.ndarray:
    """The float32 feature of a face record (read-only view)."""
    return codec.feature_from_bytes(record["feature"])


def iter_all(txn: Txn) -> Iterator[Dict[str, Any]]:
    """Every face record with its feature, in key order (random with respect to creation).

    Each face reads its block (one block is cached): meant for checks and small tools; the
    gallery rebuild reads blocks in order instead (``gallery_index``, ``iter_feature_rows``).
    """
    cache = _BlockCache()
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
    no feature read (``iter_feature_rows`` reads those, block by block).

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


def used_slots(txn: Txn, dim: int) -> np.ndarray:
    """The slots of ``dim`` holding a face (ascending): every slot ever handed out, less the
    free ones. Known without reading a face record."""
    prefix = keys.feature_dim_prefix(dim)
    free: List[int] = []
    cursor = txn.raw.cursor(db=txn.dbs.feature_free)
    if cursor.set_range(prefix):
        for key in cursor.iternext(keys=True, values=False):
            if key[:len(prefix)] != prefix:
                break
            free.append(keys.dim_number_from_key(key)[1])
    slots = np.arange(next_slot(txn, dim), dtype=np.int64)
    return np.setdiff1d(slots, np.array(free, dtype=np.int64), assume_unique=True) if free \
        else slots


def iter_feature_rows(txn: Txn, dim: int, slots: np.ndarray,
                      chunk_rows: int = 4096) -> Iterator[np.ndarray]:
    """The float32 rows of ``slots`` (ascending) in chunks of ``chunk_rows`` (the last one
    shorter), walking the blocks of ``dim`` once, in key order."""
    per_block = rows_per_block(dim)
    size = block_bytes(dim)
    total = len(slots)
    if total == 0:
        return
    blocks = slots // per_block
    # Where each needed block's rows start and end in ``slots``.
    starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
    ends = np.r_[starts[1:], total]
    chunk = np.empty((min(chunk_rows, total), dim), dtype=np.float32)
    filled = 0
    cursor = txn.raw.cursor(db=txn.dbs.features)
    for start, end in zip(starts.tolist(), ends.tolist()):
        block = int(blocks[start])
        key = keys.feature_block_key(dim, block)
        data = cursor.value() if cursor.key() == key else (
            cursor.value() if cursor.set_key(key) else None)
        if data is None or len(data) <= size:
            raise StoreFormatError(f"feature block {block} of dimension {dim} is missing or "
                                   "has the wrong size")
        rows = np.frombuffer(data, dtype=FEATURE_DTYPE, count=per_block * dim).reshape(
            per_block, dim)
        wanted = slots[start:end] - block * per_block
        taken = 0
        while taken < len(wanted):
            k = min(len(wanted) - taken, len(chunk) - filled)
            np.take(rows, wanted[taken:taken + k], axis=0, out=chunk[filled:filled + k])
            filled += k
            taken += k
            if filled == len(chunk):
                yield chunk
                chunk = np.empty((min(chunk_rows, total), dim), dtype=np.float32)
                filled = 0
        cursor.next()
    if filled:
        yield chunk[:filled]


class Block(NamedTuple):
    """A feature block as the gallery rebuild reads it."""

    number: int
    rows: np.ndarray  # (rows_per_block(dim), dim) float32, a read-only view of the value
    owners: Owners


def iter_blocks(txn: Txn, dim: int) -> Iterator[Block]:
    """Every block of ``dim`` with its owners, in key order: the cold start's one pass over
    the features, which needs no face record (the owners say which face each row is)."""
    prefix = keys.feature_dim_prefix(dim)
    per_block = rows_per_block(dim)
    count = per_block * dim
    cursor = txn.raw.cursor(db=txn.dbs.features)
    if not cursor.set_range(prefix):
        return
    for key, data in cursor.iternext(keys=True, values=True):
        if key[:len(prefix)] != prefix:
            break
        block = keys.dim_number_from_key(key)[1]
        owners = _owners_of(data, dim, block)
        rows = np.frombuffer(data, dtype=FEATURE_DTYPE, count=count).reshape(per_block, dim)
        yield Block(block, rows, owners)


def feature_dims(txn: Txn) -> List[int]:
    """The dimensions that have feature blocks (one cursor jump each, no block read)."""
    dims: List[int] = []
    cursor = txn.raw.cursor(db=txn.dbs.features)
    found = cursor.first()
    while found:
        dim = keys.dim_number_from_key(cursor.key())[0]
        dims.append(dim)
        found = dim < 0xFFFF and cursor.set_range(keys.feature_dim_prefix(dim + 1))
    return dims


def count_owned(txn: Txn, dim: int) -> int:
    """Faces of dimension ``dim``, counted from the blocks' owners."""
    return sum(len(block.owners.identity_ids) - block.owners.identity_ids.count(None)
               for block in iter_blocks(txn, dim))


def free_slot_count(txn: Txn, dim: int) -> int:
    """Entries of ``feature_free`` for ``dim``."""
    prefix = keys.feature_dim_prefix(dim)
    cursor = txn.raw.cursor(db=txn.dbs.feature_free)
    found = 0
    if cursor.set_range(prefix):
        for key in cursor.iternext(keys=True, values=False):
            if key[:len(prefix)] != prefix:
                break
            found += 1
    return found


def features_of(txn: Txn, face_keys: Sequence[bytes], dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(rows, found)``: the (k, dim) float32 features of the faces and which exist with
    that dimension (rows of the others are zeros). For re-ranking search candidates."""
    rows = np.zeros((len(face_keys), dim), dtype=np.float32)
    found = np.zeros(len(face_keys), dtype=bool)
    cache = _BlockCache()
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


class _BlockCache:
    """The last block read: consecutive faces often share one."""

    __slots__ = ("key", "data")

    def __init__(self) -> None:
        self.key: Optional[bytes] = None
        self.data: Optional[bytes] = None


def _feature_bytes(txn: Txn, face: StoredFace, cache: _BlockCache) -> bytes:
    if face.inline is not None:
        return face.inline
    assert face.slot is not None
    block, row = divmod(face.slot, rows_per_block(face.dim))
    key = keys.feature_block_key(face.dim, block)
    if cache.key != key:
        cache.data = txn.raw.get(key, db=txn.dbs.features)
        cache.key = key
    data = cache.data
    row_bytes = face.dim * FEATURE_DTYPE.itemsize
    if data is None or len(data) <= block_bytes(face.dim):
        raise StoreFormatError(f"feature block {block} of dimension {face.dim} is missing or "
                               "has the wrong size")
    return data[row * row_bytes:(row + 1) * row_bytes]


# ------------------------------------------------------------------ writing

def put(txn: Txn, record: Dict[str, Any]) -> None:
    """Insert or overwrite a face record and its feature."""
    put_many(txn, [record])


def put_many(txn: Txn, records: Iterable[Dict[str, Any]]) -> None:
    """Insert or overwrite face records; each block touched is rewritten once.

    An overwritten face keeps its slot (a new dimension moves it to a slot of that one).
    """
    edits = _BlockEdits()
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
                _free_slot(txn, edits, face.dim, face.slot)
        if slot is None:
            slot = _take_slot(txn, dim)
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
        edits = _BlockEdits()
        _free_slot(txn, edits, face.dim, face.slot)
        edits.write(txn)
    return bool(txn.raw.delete(key, db=txn.dbs.faces))


#: A row's new owner: (face key, identity id), or None for a freed row.
_Owner = Optional[Tuple[bytes, str]]


class _BlockEdits:
    """Row changes grouped by block: each block is read and written once."""

    def __init__(self) -> None:
        self._rows: Dict[Tuple[int, int], Dict[int, Tuple[Optional[bytes], _Owner]]] = {}

    def set_row(self, dim: int, slot: int, data: Optional[bytes], owner: _Owner) -> None:
        """Row ``slot`` holds ``data`` for ``owner`` from now on (None, None: freed)."""
        block, row = divmod(slot, rows_per_block(dim))
        self._rows.setdefault((dim, block), {})[row] = (data, owner)

    def write(self, txn: Txn) -> None:
        for (dim, block), rows in self._rows.items():
            key = keys.feature_block_key(dim, block)
            old = txn.raw.get(key, db=txn.dbs.features)
            if old is None:
                buffer, owners = bytearray(block_bytes(dim)), _free_owners(dim)
            else:
                owners = _owners_of(old, dim, block)
                buffer = bytearray(old[:block_bytes(dim)])
            row_bytes = dim * FEATURE_DTYPE.itemsize
            for row, (data, owner) in rows.items():
                buffer[row * row_bytes:(row + 1) * row_bytes] = (
                    bytes(row_bytes) if data is None else data)
                owners.face_keys[row], owners.identity_ids[row] = (
                    (None, None) if owner is None else owner)
            txn.raw.put(key, _block_value(buffer, owners), db=txn.dbs.features)
        self._rows.clear()


def _take_slot(txn: Txn, dim: int) -> int:
    """The lowest free slot of ``dim``, else the next never used one."""
    prefix = keys.feature_dim_prefix(dim)
    cursor = txn.raw.cursor(db=txn.dbs.feature_free)
    if cursor.set_range(prefix) and cursor.key()[:len(prefix)] == prefix:
        slot = keys.dim_number_from_key(cursor.key())[1]
        cursor.delete()
        return slot
    slot = next_slot(txn, dim)
    _set_next_slot(txn, dim, slot + 1)
    return slot


def _free_slot(txn: Txn, edits: _BlockEdits, dim: int, slot: int) -> None:
    edits.set_row(dim, slot, None, None)
    txn.raw.put(keys.feature_slot_key(dim, slot), b"", db=txn.dbs.feature_free)


def _next_slot_key(dim: int) -> bytes:
    return keys.meta_key(f"feature_next_slot_{dim}")


def next_slot(txn: Txn, dim: int) -> int:
    """The first slot of ``dim`` never handed out."""
    raw = txn.raw.get(_next_slot_key(dim), db=txn.dbs.meta)
    return 0 if raw is None else int.from_bytes(raw, "big")


def _set_next_slot(txn: Txn, dim: int, value: int) -> None:
    txn.raw.put(_next_slot_key(dim), value.to_bytes(_U64_BYTES, "big"), db=txn.dbs.meta)


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
            pending = (block, bytearray(block_bytes(dim)), _free_owners(dim))
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
            _set_next_slot(txn, dim, value)

    def _flush(self, txn: Txn, dim: int) -> None:
        block, data, owners = self._pending.pop(dim)
        _append(txn, txn.dbs.features, keys.feature_block_key(dim, block),
                _block_value(data, owners))


def _append(txn: Txn, db: Any, key: bytes, value: Any) -> None:
    if not txn.raw.put(key, value, append=True, db=db):
        txn.raw.put(key, value, db=db)  # not after the last key (several dimensions)


def _key_or_none(face_id: str) -> Optional[bytes]:
    try:
        return keys.face_key(face_id)
    except ValueError:
        return None  # never issued by us, so it cannot exist
