"""The in-memory gallery: every registered face's feature in one matrix, for exact 1:N search.

Search is exact: every face in scope is scored (one matrix-vector product and an argmax),
there is no approximate index that could miss the right person. Rows are unit vectors, so a
score is the cosine similarity.

Layout:

* ``matrix``: one contiguous float32 array (capacity x D); rows ``[:n]`` are faces. A removed
  face's row is filled with the last row (O(1), the matrix stays dense). Capacity grows by
  ``GROWTH_FACTOR`` (1.25, not 2) so the resident size stays near the raw feature bytes.
* row bookkeeping: ``row_face`` (row -> face id), ``face_row`` (face id -> row) and
  ``row_ident`` (row -> identity index, an int32 array so that group scoping is vectorised).
* identities: identity id <-> a small integer index, face count per index, and the
  permission groups of each identity that has any.
* groups: permission id -> member identities and their face count (for group-scoped search
  and EMPTY_GROUP_ERROR).

The gallery is rebuilt from LMDB at start (``load_from_txn``) and changed only through
``apply`` with the change objects a write function returns, after its commit. One lock
guards everything: searches run in a thread pool while the writer thread applies changes,
and a search sees all of a transaction's changes or none of them.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Set, Tuple, Union

import numpy as np

from sophon_face.store import faces, identities
from sophon_face.store.codec import FEATURE_DTYPE, StoreFormatError
from sophon_face.store.env import Txn

log = logging.getLogger(__name__)

#: Capacity growth factor: 1.25 keeps resident memory within ~1.25x of the features (2x
#: would allow 2x on a box with a few GB of RAM); growing is a copy, amortised O(1) per face.
GROWTH_FACTOR = 1.25
MIN_CAPACITY = 1024
#: Below this fraction of all rows, a group is scored by gathering its rows; above it, by
#: scoring every row and picking the group's scores. Scoring all rows streams the matrix
#: (memory-bandwidth bound); a gathered row costs ~4-5x a streamed one. Measured break-even
#: on a 2-core x86 with 1M rows: ~20% at D=512, ~15% at D=128.
GATHER_FRACTION = 0.15
#: Rows gathered per block: small enough to stay in cache and to reuse one scratch buffer
#: (a fresh (k, D) array per search costs page faults that dwarf the arithmetic).
GATHER_BLOCK_ROWS = 256


class Match(NamedTuple):
    face_id: str
    identity_id: str
    score: float  # cosine similarity, in [-1, 1]


class GallerySnapshot(NamedTuple):
    """A consistent copy of the gallery, row by row (for tests and diagnostics)."""

    face_ids: List[str]
    identity_ids: List[str]
    matrix: np.ndarray  # (n, D) float32, unit rows


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
    """Thread-safe exact 1:N search over the faces of the library."""

    def __init__(self, dim: int, initial_capacity: int = MIN_CAPACITY) -> None:
        if dim < 1:
            raise ValueError("dim must be >= 1")
        self._dim = dim
        self._lock = threading.Lock()
        self._lib = _Library(dim, max(1, initial_capacity))

    @property
    def dim(self) -> int:
        return self._dim

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
            return face_id in self._lib.face_row

    def groups_of(self, identity_id: str) -> FrozenSet[str]:
        with self._lock:
            return self._lib.ident_groups.get(identity_id, frozenset())

    def search(self, probe: np.ndarray,
               permission_id: Optional[str] = None) -> Optional[Match]:
        """The best-scoring face in scope: the whole library, or the faces of one group.

        ``probe`` is a (D,) feature; it is normalised here, so the score is a cosine. None
        when the scope holds no face.
        """
        vector = _unit_vector(probe, self._dim)
        with self._lock:
            return self._lib.search(vector, permission_id)

    def snapshot(self) -> GallerySnapshot:
        with self._lock:
            lib = self._lib
            n = lib.n
            return GallerySnapshot(
                face_ids=list(lib.row_face),
                identity_ids=[lib.ident_ids[i] for i in lib.row_ident[:n].tolist()],
                matrix=lib.matrix[:n].copy(),
            )

    # ------------------------------------------------------------------ (re)build

    def load_from_txn(self, txn: Txn) -> None:
        """Replace the contents with the faces and group memberships stored in LMDB.

        Built aside and swapped in, so searches keep answering from the old contents while
        this runs. The face count is exact inside the transaction, so the features are
        copied straight into one preallocated buffer that becomes the matrix without another
        copy: peak memory stays at one matrix, and there is no numpy operation per face.

        Run it where no write can commit between this snapshot and the swap: before writes
        start (``Store.open``) or on the writer thread (``Store.reload_gallery``).
        """
        row_bytes = self._dim * FEATURE_DTYPE.itemsize
        features = bytearray(faces.count(txn) * row_bytes)
        view = memoryview(features)
        face_ids: List[str] = []
        identity_of_face: List[str] = []
        wrong_dims: Counter[int] = Counter()
        for record in faces.iter_all(txn):
            if record["dim"] != self._dim:
                wrong_dims[record["dim"]] += 1
                continue
            offset = len(face_ids) * row_bytes
            view[offset:offset + row_bytes] = record["feature"]
            face_ids.append(record["face_id"])
            identity_of_face.append(record["identity_id"])
        view.release()
        if wrong_dims:
            found = ", ".join(f"{count} of dimension {dim}"
                              for dim, count in sorted(wrong_dims.items()))
            raise FeatureDimMismatch(
                f"stored faces ({found}) do not match the active recognizer's feature "
                f"dimension {self._dim}: they were registered with another model and "
                "must be re-registered (or the matching model configured)")
        lib = _Library.from_bulk(self._dim, face_ids, identity_of_face, features,
                                 identities.iter_memberships(txn))
        with self._lock:
            self._lib = lib
        log.info("gallery loaded: %d faces, %d groups", lib.n, len(lib.group_members))

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


def _unit_vector(feature: np.ndarray, dim: int) -> np.ndarray:
    vector = np.array(feature, dtype=np.float32).reshape(1, -1)  # a copy: normalised in place
    if vector.shape != (1, dim):
        raise ValueError(f"feature has {vector.size} values, the gallery holds {dim}")
    if not np.isfinite(vector).all() or not vector.any():
        raise ValueError("feature must be finite and not all zero")
    # The same routine as the bulk load, so a rebuilt gallery equals the incremental one
    # bit for bit.
    _normalise_rows(vector)
    return vector[0]


class _Library:
    """The gallery's data, unlocked; ``Gallery`` owns the lock.

    Per-identity data is kept in arrays indexed by a small integer (the identity index)
    rather than in one Python object per identity: a rebuild of a million faces then costs
    a few vectorised calls instead of a million object creations, and ~250 bytes of
    bookkeeping per face instead of ~500.
    """

    def __init__(self, dim: int, capacity: int) -> None:
        self.dim = dim
        self.matrix = np.empty((capacity, dim), dtype=np.float32)
        self.row_ident = np.empty(capacity, dtype=np.int32)  # row -> identity index
        self.n = 0
        self.row_face: List[str] = []
        self.face_row: Dict[str, int] = {}
        self.ident_index: Dict[str, int] = {}
        self.ident_ids: List[Optional[str]] = []  # identity index -> id (None = free)
        self.ident_face_count = np.zeros(MIN_CAPACITY, dtype=np.int32)
        self.free_indices: List[int] = []
        self.ident_groups: Dict[str, FrozenSet[str]] = {}  # only identities with groups
        self.group_members: Dict[str, Set[str]] = {}
        self.group_faces: Dict[str, int] = {}
        # Identity indices of each group's members, rebuilt after membership changes.
        self.group_index_cache: Dict[str, np.ndarray] = {}
        # Scratch for gathered group scoring; safe to share because searches hold the lock.
        self.gather_buffer: Optional[np.ndarray] = None

    @classmethod
    def from_bulk(cls, dim: int, face_ids: List[str], identity_of_face: List[str],
                  features: bytearray, memberships: Iterable[Tuple[str, str]]) -> _Library:
        n = len(face_ids)
        lib = cls(dim, MIN_CAPACITY)
        if n:
            # bytearray -> writable view, no copy; capacity == n, the next add grows it.
            lib.matrix = np.frombuffer(features, dtype=FEATURE_DTYPE).reshape(n, dim).astype(
                np.float32, copy=False)
            _normalise_rows(lib.matrix)
            # setdefault numbers identities in order of first appearance.
            index_of: Dict[str, int] = {}
            lib.row_ident = np.fromiter(
                (index_of.setdefault(identity_id, len(index_of))
                 for identity_id in identity_of_face), dtype=np.int32, count=n)
            lib.ident_index = index_of
            lib.ident_ids = list(index_of)
            counts = np.bincount(lib.row_ident, minlength=len(index_of)).astype(np.int32)
            lib.ident_face_count = np.zeros(max(MIN_CAPACITY, len(counts)), dtype=np.int32)
            lib.ident_face_count[:len(counts)] = counts
            lib.row_face = face_ids
            lib.face_row = dict(zip(face_ids, range(n)))
            lib.n = n
        groups: Dict[str, List[str]] = {}
        for identity_id, permission_id in memberships:
            groups.setdefault(identity_id, []).append(permission_id)
        for identity_id, permission_ids in groups.items():
            lib.set_groups(identity_id, permission_ids)
        return lib

    # ---------------------------------------------------------------- identities

    def index_for(self, identity_id: str) -> int:
        index = self.ident_index.get(identity_id)
        if index is not None:
            return index
        if self.free_indices:
            index = self.free_indices.pop()
            self.ident_ids[index] = identity_id
        else:
            index = len(self.ident_ids)
            self.ident_ids.append(identity_id)
            if index >= len(self.ident_face_count):
                grown = np.zeros(int(len(self.ident_face_count) * GROWTH_FACTOR) + 1,
                                 dtype=np.int32)
                grown[:index] = self.ident_face_count[:index]
                self.ident_face_count = grown
        self.ident_face_count[index] = 0
        self.ident_index[identity_id] = index
        return index

    def release_if_unused(self, identity_id: str, index: int) -> None:
        # An index is only reused once no row and no group cache can refer to it.
        if self.ident_face_count[index] == 0 and identity_id not in self.ident_groups:
            del self.ident_index[identity_id]
            self.ident_ids[index] = None
            self.free_indices.append(index)

    # ---------------------------------------------------------------- faces

    def add(self, face_id: str, identity_id: str, vector: np.ndarray) -> None:
        if face_id in self.face_row:
            self.remove_face(face_id)
        index = self.index_for(identity_id)
        row = self.n
        self._reserve(row + 1)
        self.matrix[row] = vector
        self.row_ident[row] = index
        self.row_face.append(face_id)
        self.face_row[face_id] = row
        self.n = row + 1
        self.ident_face_count[index] += 1
        for permission_id in self.ident_groups.get(identity_id, ()):
            self.group_faces[permission_id] += 1

    def remove_face(self, face_id: str) -> bool:
        row = self.face_row.pop(face_id, None)
        if row is None:
            return False
        index = int(self.row_ident[row])
        identity_id = self.ident_ids[index]
        assert identity_id is not None
        last = self.n - 1
        if row != last:
            # Swap-remove: the last row fills the hole, only one face moves.
            self.matrix[row] = self.matrix[last]
            self.row_ident[row] = self.row_ident[last]
            moved = self.row_face[last]
            self.row_face[row] = moved
            self.face_row[moved] = row
        self.row_face.pop()
        self.n = last
        self.ident_face_count[index] -= 1
        for permission_id in self.ident_groups.get(identity_id, ()):
            self.group_faces[permission_id] -= 1
        self.release_if_unused(identity_id, index)
        self._shrink_if_sparse()
        return True

    def remove_identity(self, identity_id: str) -> int:
        index = self.ident_index.get(identity_id)
        if index is None:
            return 0
        # One vectorised scan finds the identity's rows; faces per identity are not kept
        # (see the class docstring), and removing an identity is rare next to searching.
        rows = np.flatnonzero(self.row_ident[:self.n] == index)
        removed = [self.row_face[row] for row in rows.tolist()]
        for face_id in removed:
            self.remove_face(face_id)
        self.set_groups(identity_id, ())
        return len(removed)

    # ---------------------------------------------------------------- groups

    def set_groups(self, identity_id: str, permission_ids: Iterable[str]) -> None:
        new = frozenset(permission_ids)
        old = self.ident_groups.get(identity_id, frozenset())
        if new == old:
            return
        index = self.index_for(identity_id)
        face_count = int(self.ident_face_count[index])
        for permission_id in old - new:
            members = self.group_members[permission_id]
            members.discard(identity_id)
            self.group_index_cache.pop(permission_id, None)
            if members:
                self.group_faces[permission_id] -= face_count
            else:
                del self.group_members[permission_id]
                del self.group_faces[permission_id]
        for permission_id in new - old:
            self.group_members.setdefault(permission_id, set()).add(identity_id)
            self.group_faces[permission_id] = self.group_faces.get(permission_id, 0) + face_count
            self.group_index_cache.pop(permission_id, None)
        if new:
            self.ident_groups[identity_id] = new
        else:
            del self.ident_groups[identity_id]
        self.release_if_unused(identity_id, index)

    def remove_group(self, permission_id: str) -> None:
        members = self.group_members.pop(permission_id, None)
        self.group_faces.pop(permission_id, None)
        self.group_index_cache.pop(permission_id, None)
        for identity_id in members or ():
            remaining = self.ident_groups[identity_id] - {permission_id}
            if remaining:
                self.ident_groups[identity_id] = remaining
            else:
                del self.ident_groups[identity_id]
                self.release_if_unused(identity_id, self.ident_index[identity_id])

    def group_rows(self, permission_id: str) -> np.ndarray:
        """Rows of the faces whose identity belongs to the group, ascending.

        A mask over the identity indices, looked up for every row: O(rows) but vectorised
        (about 2 ms for a million rows), whatever the size of the group.
        """
        members = self.group_members.get(permission_id)
        if not members or not self.group_faces.get(permission_id, 0):
            return np.empty(0, dtype=np.intp)
        indices = self.group_index_cache.get(permission_id)
        if indices is None:
            indices = np.fromiter((self.ident_index[identity_id] for identity_id in members),
                                  dtype=np.intp, count=len(members))
            self.group_index_cache[permission_id] = indices
        in_group = np.zeros(len(self.ident_ids), dtype=bool)
        in_group[indices] = True
        return np.flatnonzero(in_group[self.row_ident[:self.n]])

    # ---------------------------------------------------------------- search

    def search(self, probe: np.ndarray, permission_id: Optional[str]) -> Optional[Match]:
        n = self.n
        if n == 0:
            return None
        if permission_id is None:
            scores = self.matrix[:n] @ probe
            row = int(np.argmax(scores))
            score = scores[row]
        else:
            rows = self.group_rows(permission_id)
            if rows.size == 0:
                return None
            if rows.size < n * GATHER_FRACTION:
                scores = self._score_rows(rows, probe)
            else:
                scores = (self.matrix[:n] @ probe)[rows]
            best = int(np.argmax(scores))
            row = int(rows[best])
            score = scores[best]
        identity_id = self.ident_ids[int(self.row_ident[row])]
        assert identity_id is not None
        return Match(self.row_face[row], identity_id, float(score))

    def _score_rows(self, rows: np.ndarray, probe: np.ndarray) -> np.ndarray:
        """``matrix[rows] @ probe`` block by block through one reused scratch buffer."""
        if self.gather_buffer is None:
            self.gather_buffer = np.empty((GATHER_BLOCK_ROWS, self.dim), dtype=np.float32)
        scores = np.empty(rows.size, dtype=np.float32)
        for start in range(0, rows.size, GATHER_BLOCK_ROWS):
            part = rows[start:start + GATHER_BLOCK_ROWS]
            block = np.take(self.matrix, part, axis=0, out=self.gather_buffer[:part.size])
            scores[start:start + part.size] = block @ probe
        return scores

    # ---------------------------------------------------------------- capacity

    def _reserve(self, needed: int) -> None:
        capacity = self.matrix.shape[0]
        if needed <= capacity:
            return
        self._resize(max(needed, int(capacity * GROWTH_FACTOR) + 1, MIN_CAPACITY))

    def _shrink_if_sparse(self) -> None:
        # Hysteresis: shrink only below half full, to 1.25x the rows, so add/remove at a
        # boundary cannot make every operation copy the matrix.
        capacity = self.matrix.shape[0]
        if capacity > MIN_CAPACITY and self.n * 2 < capacity:
            self._resize(max(MIN_CAPACITY, int(self.n * GROWTH_FACTOR) + 1))

    def _resize(self, capacity: int) -> None:
        n = self.n
        matrix = np.empty((capacity, self.dim), dtype=np.float32)
        matrix[:n] = self.matrix[:n]
        row_ident = np.empty(capacity, dtype=np.int32)
        row_ident[:n] = self.row_ident[:n]
        self.matrix, self.row_ident = matrix, row_ident


def _normalise_rows(matrix: np.ndarray) -> None:
    """Scale every row to unit length in place (no (n, D) temporary)."""
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    norms[norms == 0] = 1.0
    matrix /= norms[:, None]
