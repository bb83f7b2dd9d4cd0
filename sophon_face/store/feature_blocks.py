"""Packed feature blocks: where the features of the face records (faces.py) live, by slot.

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

A face record (faces.py) holds its slot. The rows, owners, free list and counter change in
the caller's write transaction, with the face record: ``BlockEdits`` groups row changes so
that each block touched (128 KiB) is read and written once.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

from sophon_face.store import codec, keys
from sophon_face.store.codec import FEATURE_DTYPE, StoreFormatError
from sophon_face.store.env import Txn

#: Bytes one block (rows and owners) may take: 128 KiB less the 16-byte header of LMDB's
#: first overflow page, so a block fills whole pages on 4, 16 and 64 KiB page systems alike
#: (62 rows of 512-d in 32 pages of 4 KiB, 3.1 % of them left to the owners). Part of store
#: layout 3: changing it moves every feature (a layout version bump).
FEATURE_BLOCK_BYTES = 128 * 1024 - 16
#: Bytes set aside per row for its owner when sizing a block: at 512-d this leaves 62 rows
#: and 4080 bytes for the owners, ~65 per row, of which the face key takes 18 in msgpack.
#: Part of store layout 3, like ``FEATURE_BLOCK_BYTES``.
OWNER_BYTES_PER_ROW = 48

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


def free_owners(dim: int) -> Owners:
    """The owners of a block of ``dim`` whose rows are all free."""
    per_block = rows_per_block(dim)
    return Owners([None] * per_block, [None] * per_block)


def block_value(rows: Any, owners: Owners) -> bytes:
    """A block as stored: its rows, then its owners."""
    return bytes(rows) + codec.pack_list([owners.face_keys, owners.identity_ids])


def _require_block(data: Optional[bytes], dim: int, block: int) -> None:
    """Refuses a block that is missing or too short to hold its rows and owners."""
    if data is None or len(data) <= block_bytes(dim):
        raise StoreFormatError(f"feature block {block} of dimension {dim} is missing or "
                               "has the wrong size")


def _owners_of(data: Optional[bytes], dim: int, block: int) -> Owners:
    """The owners of a stored block (its rows are ``data[:block_bytes(dim)]``); refuses a
    missing or garbled block."""
    size = block_bytes(dim)
    _require_block(data, dim, block)
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


# ------------------------------------------------------------------ reading

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
        _require_block(data, dim, block)
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


class BlockCache:
    """The last block read: consecutive faces often share one."""

    __slots__ = ("key", "data")

    def __init__(self) -> None:
        self.key: Optional[bytes] = None
        self.data: Optional[bytes] = None


def feature_row(txn: Txn, dim: int, slot: int, cache: BlockCache) -> bytes:
    """The stored bytes of row ``slot`` of ``dim``, its block read through ``cache``; refuses
    a missing or garbled block."""
    block, row = divmod(slot, rows_per_block(dim))
    key = keys.feature_block_key(dim, block)
    if cache.key != key:
        cache.data = txn.raw.get(key, db=txn.dbs.features)
        cache.key = key
    data = cache.data
    row_bytes = dim * FEATURE_DTYPE.itemsize
    _require_block(data, dim, block)
    return data[row * row_bytes:(row + 1) * row_bytes]


# ------------------------------------------------------------------ writing

#: A row's new owner: (face key, identity id), or None for a freed row.
_Owner = Optional[Tuple[bytes, str]]


class BlockEdits:
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
                buffer, owners = bytearray(block_bytes(dim)), free_owners(dim)
            else:
                owners = _owners_of(old, dim, block)
                buffer = bytearray(old[:block_bytes(dim)])
            row_bytes = dim * FEATURE_DTYPE.itemsize
            for row, (data, owner) in rows.items():
                buffer[row * row_bytes:(row + 1) * row_bytes] = (
                    bytes(row_bytes) if data is None else data)
                owners.face_keys[row], owners.identity_ids[row] = (
                    (None, None) if owner is None else owner)
            txn.raw.put(key, block_value(buffer, owners), db=txn.dbs.features)
        self._rows.clear()


def take_slot(txn: Txn, dim: int) -> int:
    """The lowest free slot of ``dim``, else the next never used one."""
    prefix = keys.feature_dim_prefix(dim)
    cursor = txn.raw.cursor(db=txn.dbs.feature_free)
    if cursor.set_range(prefix) and cursor.key()[:len(prefix)] == prefix:
        slot = keys.dim_number_from_key(cursor.key())[1]
        cursor.delete()
        return slot
    slot = next_slot(txn, dim)
    set_next_slot(txn, dim, slot + 1)
    return slot


def free_slot(txn: Txn, edits: BlockEdits, dim: int, slot: int) -> None:
    """Zero row ``slot`` of ``dim`` (through ``edits``) and list the slot as free."""
    edits.set_row(dim, slot, None, None)
    txn.raw.put(keys.feature_slot_key(dim, slot), b"", db=txn.dbs.feature_free)


def _next_slot_key(dim: int) -> bytes:
    return keys.meta_key(f"feature_next_slot_{dim}")


def next_slot(txn: Txn, dim: int) -> int:
    """The first slot of ``dim`` never handed out."""
    raw = txn.raw.get(_next_slot_key(dim), db=txn.dbs.meta)
    return 0 if raw is None else int.from_bytes(raw, "big")


def set_next_slot(txn: Txn, dim: int, value: int) -> None:
    """Set the first slot of ``dim`` never handed out."""
    txn.raw.put(_next_slot_key(dim), value.to_bytes(_U64_BYTES, "big"), db=txn.dbs.meta)
