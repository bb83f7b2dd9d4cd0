"""The in-memory gallery: every registered face in a compact form, for exact 1:N search.

Search is exact: every face in scope is scored, there is no approximate index that could miss
the right person. Rows are unit vectors, so a score is the cosine similarity. A search runs
in two steps (gallery_scan.py has the maths and the proof):

1. a compressed scan: the int8 codes of every face in scope against the int8 probe (a
   quarter of the bytes of float32, exact integer arithmetic);
2. exact re-ranking: every face whose compressed score is within the provable error margin
   of the best one is scored in float32, and the best of those is the answer: the face an
   exact float32 scan of the whole scope returns.

Where the exact float32 features are:

* loaded from the store (``load_from_txn``, the daemon): only in LMDB. The gallery holds the
  codes (a quarter of the raw feature bytes) and reads the few candidates' features in the
  search's read transaction: ``search(probe, group, txn)``.
* built by ``apply`` alone (tests, tools, benchmarks): in a float32 matrix beside the codes.

The data (gallery_library.py), per row: ``codes`` (int8, capacity x D), ``scale`` and
``resid`` (float32: the quantisation scale and the bound of its error), ``row_ident``
(identity index), ``row_key``
(the face's 16-byte UUID key); ``face_row`` maps keys to rows (built on first use: a rebuild
leaves it to the first write). A removed face's row is filled with the last row (O(1), the
arrays stay dense). Capacity grows by ``GROWTH_FACTOR``.
Identities: id <-> small integer index; per index (int32 arrays) the face count and the
number of the identity's interned set of permission groups (gallery_groups.py). Groups:
permission id -> member identities and their faces (for EMPTY_GROUP_ERROR); a group's rows
are found through the set numbers, vectorised.

The gallery is rebuilt from LMDB at start (``load_from_txn``) and changed only through
``apply`` with the change objects a write function returns, after its commit. One lock
guards everything: searches run in a thread pool while the writer thread applies changes,
and a search sees all of a transaction's changes or none of them.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, FrozenSet, Iterable, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from sophon_face.store import faces, feature_blocks, identities
from sophon_face.store.codec import StoreFormatError
from sophon_face.store.env import Txn
from sophon_face.store.gallery_groups import EMPTY_GROUPS
from sophon_face.store.gallery_library import (
    GATHER_BLOCK_ROWS, GATHER_FRACTION, GROWTH_FACTOR, MIN_CAPACITY, FaceKey, Library, Match,
    face_id_of, face_key, normalise_rows, quantise_into,
)
from sophon_face.store.gallery_scan import Int8Scan

__all__ = [
    "AddFace", "EMPTY_GROUPS", "FaceKey", "FeatureDimMismatch", "GATHER_BLOCK_ROWS",
    "GATHER_FRACTION", "GROWTH_FACTOR", "Gallery", "GalleryChange", "GallerySnapshot",
    "LOAD_CHUNK_ROWS", "MIN_CAPACITY", "Match", "RemoveFace", "RemoveGroup", "RemoveIdentity",
    "SetGroups",
]

log = logging.getLogger(__name__)

#: Rows read and quantised at a time by the rebuild: 2 MiB of float32 at 512-d, so the
#: quantisation's passes run in cache (4x faster than on 8 MiB chunks).
LOAD_CHUNK_ROWS = 1024


class GallerySnapshot(NamedTuple):
    """A consistent copy of the gallery, row by row (for tests and diagnostics)."""

    face_ids: List[str]
    identity_ids: List[str]
    matrix: np.ndarray  # (n, D) float32, unit rows (the exact features)
    codes: Optional[np.ndarray] = None  # (n, D) int8, the compressed rows


# ---------------------------------------------------------------- change objects
# What a write function returns alongside its result; applied after the commit.

@dataclass(frozen=True, eq=False)
class AddFace:
    """Add or replace a face. ``feature`` is the vector stored in the face record, so the
    row equals what a rebuild from LMDB would produce."""

    face_id: str
    identity_id: str
    feature: np.ndarray  # (D,) float32


@dataclass(frozen=True)
class RemoveFace:
    face_id: str


@dataclass(frozen=True)
class RemoveIdentity:
    """Remove the identity's faces and its group memberships."""

    identity_id: str


@dataclass(frozen=True)
class SetGroups:
    """Replace the identity's permission groups (identities without faces may have groups)."""

    identity_id: str
    permission_ids: Tuple[str, ...]


@dataclass(frozen=True)
class RemoveGroup:
    permission_id: str


GalleryChange = Union[AddFace, RemoveFace, RemoveIdentity, SetGroups, RemoveGroup]


class FeatureDimMismatch(StoreFormatError):
    """Stored faces were extracted by a recognizer with another feature dimension."""


class Gallery:
    """Thread-safe exact 1:N search over the faces of the library.

    ``scan_kernel``: "simsimd" or "numpy" (default: simsimd when installed; both give the
    same answers, see gallery_scan.py).
    """

    def __init__(self, dim: int, initial_capacity: int = MIN_CAPACITY,
                 scan_kernel: Optional[str] = None) -> None:
        if dim < 1:
            raise ValueError("dim must be >= 1")
        self._dim = dim
        self._lock = threading.Lock()
        self._scan = Int8Scan(dim, scan_kernel)
        self._lib = Library(dim, max(1, initial_capacity), self._scan.dtype, keep_exact=True)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def scan_kernel(self) -> str:
        return self._scan.kernel

    @property
    def features_in_store(self) -> bool:
        """True once loaded from LMDB: exact features are read from the store per search."""
        return self._lib.exact is None

    # ------------------------------------------------------------------ changes

    def apply(self, changes: Iterable[GalleryChange]) -> None:
        """Apply one transaction's changes atomically with respect to searches.

        Everything is validated before anything changes, so a bad change object leaves the
        gallery as it was.
        """
        prepared = [self._prepare(change) for change in changes]
        with self._lock:
            lib = self._lib
            for change in prepared:
                if isinstance(change, AddFace):
                    lib.add(change.face_id, change.identity_id, change.feature)
                elif isinstance(change, RemoveFace):
                    lib.remove_face(change.face_id)
                elif isinstance(change, RemoveIdentity):
                    lib.remove_identity(change.identity_id)
                elif isinstance(change, SetGroups):
                    lib.set_groups(change.identity_id, change.permission_ids)
                else:
                    lib.remove_group(change.permission_id)

    def add(self, face_id: str, identity_id: str, feature: np.ndarray) -> None:
        """Add (or replace) a face."""
        self.apply([AddFace(face_id, identity_id, feature)])

    def remove_face(self, face_id: str) -> bool:
        """Remove a face; False when it was not in the gallery."""
        with self._lock:
            return self._lib.remove_face(face_id)

    def remove_identity(self, identity_id: str) -> int:
        """Remove an identity's faces and group memberships; returns the faces removed."""
        with self._lock:
            return self._lib.remove_identity(identity_id)

    def set_identity_groups(self, identity_id: str, permission_ids: Iterable[str]) -> None:
        self.apply([SetGroups(identity_id, tuple(permission_ids))])

    def remove_group(self, permission_id: str) -> None:
        self.apply([RemoveGroup(permission_id)])

    # ------------------------------------------------------------------ queries

    def count(self) -> int:
        """Number of faces in the gallery."""
        with self._lock:
            return self._lib.n

    def count_in_group(self, permission_id: str) -> int:
        """Number of faces whose identity belongs to the group."""
        with self._lock:
            return self._lib.group_faces.get(permission_id, 0)

    def has_face(self, face_id: str) -> bool:
        with self._lock:
            return face_key(face_id) in self._lib.face_row

    def groups_of(self, identity_id: str) -> FrozenSet[str]:
        with self._lock:
            return self._lib.groups_of(identity_id)

    def search(self, probe: np.ndarray, permission_id: Optional[str] = None,
               txn: Optional[Txn] = None) -> Optional[Match]:
        """The best-scoring face in scope: the whole library, or the faces of one group.

        ``probe`` is a (D,) feature; it is normalised here, so the score is a cosine. None
        when the scope holds no face. ``txn``: a read transaction of the store the gallery
        was loaded from (required then: the candidates' exact features are read in it).
        A face the transaction does not see (written or deleted by a commit whose gallery
        change is not applied yet, or the other way round) is left out.
        """
        vector = _unit_vector(probe, self._dim)
        with self._lock:
            lib = self._lib
            if lib.exact is not None:
                return lib.search(vector, permission_id, self._scan, lib.exact_rows)
            if txn is None:
                raise TypeError("the exact features of a gallery loaded from the store are "
                                "read from it: search inside a read transaction "
                                "(search(probe, permission_id, txn))")
            return lib.search(vector, permission_id, self._scan,
                              lambda rows: lib.store_rows(txn, rows))

    def search_in(self, txn: Txn, probe: np.ndarray,
                  permission_id: Optional[str] = None) -> Optional[Match]:
        """``search`` with the transaction first, for ``Store.read(gallery.search_in, ...)``."""
        return self.search(probe, permission_id, txn)

    def snapshot(self, txn: Optional[Txn] = None) -> GallerySnapshot:
        """Rows, identities, exact features and codes; ``txn`` as for ``search``."""
        with self._lock:
            lib = self._lib
            n = lib.n
            rows = np.arange(n)
            if lib.exact is not None:
                matrix = lib.exact[:n].copy()
            elif txn is None:
                raise TypeError("snapshot of a gallery loaded from the store needs a read "
                                "transaction")
            else:
                matrix, found = lib.store_rows(txn, rows)
                if not found.all():
                    raise StoreFormatError(f"{int((~found).sum())} gallery faces are not in "
                                           "the store")
            return GallerySnapshot(
                face_ids=[face_id_of(key) for key in lib.row_key],
                identity_ids=[lib.ident_ids[i] for i in lib.row_ident[:n].tolist()],
                matrix=matrix, codes=lib.codes[:n].copy())

    # ------------------------------------------------------------------ (re)build

    def load_from_txn(self, txn: Txn) -> None:
        """Replace the contents with the faces and group memberships stored in LMDB.

        Built aside and swapped in, so searches keep answering from the old contents while
        this runs. One pass over the feature blocks in key order: each block's owners say
        which face and identity each row is (no face record is read), and the rows are
        normalised and quantised chunk by chunk (2 MiB, in cache) straight into the codes,
        so the float32 features are never all in memory. Rows are in slot order. The exact
        features stay in LMDB, so from now on ``search`` needs a read transaction.

        The owners are written in the transactions that write the face records, so they
        agree; what the pass can check cheaply (faces counted by the owners against LMDB's
        count of face records and against the slots handed out less the free ones) sends
        a store that disagrees to ``_load_from_records``, the slower path that matches the
        records, the free list and the blocks face by face.

        Run it where no write can commit between this snapshot and the swap: before writes
        start (``Store.open``) or on the writer thread (``Store.reload_gallery``).
        """
        dim = self._dim
        other_dims = [d for d in feature_blocks.feature_dims(txn) if d != dim]
        if other_dims:
            self._refuse_other_dims(txn, other_dims)
        slots = feature_blocks.next_slot(txn, dim)
        codes = np.empty((slots, dim), dtype=np.int8)
        scale = np.empty(slots, dtype=np.float32)
        resid = np.empty(slots, dtype=np.float32)
        # Face key and identity id per row (never None once the checks below pass).
        row_keys: List[Any] = []
        row_identities: List[Any] = []
        per_block = feature_blocks.rows_per_block(dim)
        chunk = np.empty((max(1, LOAD_CHUNK_ROWS // per_block) * per_block, dim),
                         dtype=np.float32)
        filled = done = 0
        for block in feature_blocks.iter_blocks(txn, dim):
            owners = block.owners
            if None in owners.identity_ids:  # free rows: only after deletions
                used = [row for row, identity in enumerate(owners.identity_ids)
                        if identity is not None]
                if not used:
                    continue
                np.take(block.rows, used, axis=0, out=chunk[filled:filled + len(used)])
                row_keys.extend(owners.face_keys[row] for row in used)
                row_identities.extend(owners.identity_ids[row] for row in used)
                filled += len(used)
            else:
                chunk[filled:filled + per_block] = block.rows
                row_keys.extend(owners.face_keys)
                row_identities.extend(owners.identity_ids)
                filled += per_block
            if filled > len(chunk) - per_block:
                done = _quantise_chunk(chunk[:filled], codes, scale, resid, done)
                filled = 0
        done = _quantise_chunk(chunk[:filled], codes, scale, resid, done)
        if done != faces.count(txn) or done != slots - feature_blocks.free_slot_count(txn, dim) \
                or done != len(row_keys) or None in row_keys:
            log.warning("feature blocks and face records disagree (%d faces in the blocks, "
                        "%d records); matching them face by face", done, faces.count(txn))
            lib = self._load_from_records(txn)
        else:
            lib = Library.from_bulk(dim, row_keys, row_identities, codes, scale, resid,
                                    self._scan.dtype)
        lib.load_groups(identities.iter_groups(txn))
        with self._lock:
            self._lib = lib
        log.info("gallery loaded: %d faces, %d groups (%s scan)", lib.n, len(lib.group_faces),
                 self._scan.kernel)

    def _refuse_other_dims(self, txn: Txn, other_dims: List[int]) -> None:
        found = {d: feature_blocks.count_owned(txn, d) for d in other_dims}
        found = {d: count for d, count in found.items() if count}
        if found:
            listed = ", ".join(f"{count} of dimension {d}" for d, count in sorted(found.items()))
            raise FeatureDimMismatch(
                f"stored faces ({listed}) do not match the active recognizer's feature "
                f"dimension {self._dim}: they were registered with another model and "
                "must be re-registered (or the matching model configured)")

    def _load_from_records(self, txn: Txn) -> Library:
        """The rebuild from the face records, the free list and the blocks' rows: for a
        store whose blocks' owners disagree with the records (never written by this code).
        A slot handed out but neither used nor freed is left out; a face whose slot is free
        or shared with another face is refused."""
        index = faces.gallery_index(txn)
        slots = feature_blocks.used_slots(txn, self._dim)
        rank = _slot_ranks(slots, index.slots)  # face -> its row
        codes = np.empty((len(slots), self._dim), dtype=np.int8)
        scale = np.empty(len(slots), dtype=np.float32)
        resid = np.empty(len(slots), dtype=np.float32)
        start = 0
        for chunk in feature_blocks.iter_feature_rows(txn, self._dim, slots, LOAD_CHUNK_ROWS):
            start = _quantise_chunk(chunk, codes, scale, resid, start)
        if len(rank) != len(slots):
            log.warning("%d feature slots hold no face; left out of the gallery",
                        len(slots) - len(rank))
            keep = np.zeros(len(slots), dtype=bool)
            keep[rank] = True
            codes, scale, resid = codes[keep], scale[keep], resid[keep]
            rank = np.cumsum(keep)[rank] - 1
        order = np.argsort(rank)
        row_keys: List[FaceKey] = [index.keys[i] for i in order.tolist()]
        row_identities = [index.identity_ids[i] for i in index.identities[order].tolist()]
        return Library.from_bulk(self._dim, row_keys, row_identities, codes, scale, resid,
                                 self._scan.dtype)

    # ------------------------------------------------------------------ helpers

    def _prepare(self, change: GalleryChange) -> GalleryChange:
        if isinstance(change, AddFace):
            return AddFace(change.face_id, change.identity_id,
                           _unit_vector(change.feature, self._dim))
        if isinstance(change, SetGroups):
            return SetGroups(change.identity_id, tuple(change.permission_ids))
        if isinstance(change, (RemoveFace, RemoveIdentity, RemoveGroup)):
            return change
        raise TypeError(f"not a gallery change: {change!r}")


def _quantise_chunk(chunk: np.ndarray, codes: np.ndarray, scale: np.ndarray,
                    resid: np.ndarray, start: int) -> int:
    """Quantise ``chunk`` into rows ``start:`` of the arrays; returns the next row."""
    end = start + len(chunk)
    if end > len(codes):
        raise StoreFormatError("feature blocks hold more faces than slots were handed out")
    if len(chunk):
        quantise_into(chunk, codes[start:end], scale[start:end], resid[start:end])
    return end


def _slot_ranks(slots: np.ndarray, face_slots: np.ndarray) -> np.ndarray:
    """Where each face's slot is in ``slots`` (the used slots, ascending); refuses a face
    whose slot is free or shared with another face."""
    if len(slots) and int(slots[-1]) == len(slots) - 1:
        rank = face_slots  # no free slot: every slot is its own rank
        misplaced = len(rank) and (int(rank.min()) < 0 or int(rank.max()) >= len(slots))
    else:
        rank = np.searchsorted(slots, face_slots)
        misplaced = len(rank) and (int(rank.max(initial=0)) >= len(slots) or not
                                   np.array_equal(slots[rank], face_slots))
    if misplaced or (len(rank) and int(np.bincount(rank, minlength=len(slots)).max()) > 1):
        raise StoreFormatError("face records and free feature slots disagree (a face's slot "
                               "is free, or two faces share one)")
    return rank


def _unit_vector(feature: np.ndarray, dim: int) -> np.ndarray:
    vector = np.array(feature, dtype=np.float32).reshape(1, -1)  # a copy: normalised in place
    if vector.shape != (1, dim):
        raise ValueError(f"feature has {vector.size} values, the gallery holds {dim}")
    if not np.isfinite(vector).all() or not vector.any():
        raise ValueError("feature must be finite and not all zero")
    # The same routine as the bulk load, so a rebuilt gallery equals the incremental one
    # bit for bit.
    normalise_rows(vector)
    return vector[0]
