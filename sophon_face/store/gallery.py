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
* identities: identity id -> its index, face ids and permission groups.
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
from typing import (
    Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union,
)

import numpy as np

from sophon_face.store import faces, identities
from sophon_face.store.codec import FEATURE_DTYPE, StoreFormatError
from sophon_face.store.env import Txn

log = logging.getLogger(__name__)

#: Capacity growth factor: 1.25 keeps resident memory within ~1.25x of the features (2x
#: would allow 2x on a box with a few GB of RAM); growing is a copy, amortised O(1) per face.
GROWTH_FACTOR = 1.25
MIN_CAPACITY = 1024
#: A group whose members and faces together stay under this is scoped by looking its rows up
#: one by one; a bigger one by a vectorised mask over all rows (O(n), but numpy-fast).
SMALL_GROUP_ITEMS = 4096
#: Below this fraction of all rows, scoring gathers the group's rows first; above it, it is
#: cheaper to score every row and pick among the group's scores.
GATHER_FRACTION = 1 / 3


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
            ident = self._lib.idents.get(identity_id)
            return frozenset() if ident is None else ident.groups

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
        groups = {record["identity_id"]: record["permission_ids"]
                  for record in identities.iter_all(txn) if record["permission_ids"]}
        lib = _Library.from_bulk(self._dim, face_ids, identity_of_face, features, groups)
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


class _Ident:
    """What the gallery knows about one identity."""

    __slots__ = ("index", "faces", "groups")

    def __init__(self, index: int) -> None:
        self.index = index
        self.faces: List[str] = []  # few per identity: a list is smaller than a set
        self.groups: FrozenSet[str] = frozenset()


class _Library:
    """The gallery's data, unlocked; ``Gallery`` owns the lock."""

    def __init__(self, dim: int, capacity: int) -> None:
        self.dim = dim
        self.matrix = np.empty((capacity, dim), dtype=np.float32)
        self.row_ident = np.empty(capacity, dtype=np.int32)
        self.n = 0
        self.row_face: List[str] = []
        self.face_row: Dict[str, int] = {}
        self.idents: Dict[str, _Ident] = {}
        self.ident_ids: List[Optional[str]] = []  # identity index -> id (None = free)
        self.free_indices: List[int] = []
        self.group_members: Dict[str, set] = {}
        self.group_faces: Dict[str, int] = {}
        # Identity indices of a large group's members, rebuilt after membership changes.
        self.group_index_cache: Dict[str, np.ndarray] = {}

    @classmethod
    def from_bulk(cls, dim: int, face_ids: Sequence[str], identity_of_face: Sequence[str],
                  features: bytearray, groups: Dict[str, Sequence[str]]) -> _Library:
        n = len(face_ids)
        lib = cls(dim, 1)
        if n:
            # bytearray -> writable view, no copy; capacity == n, the next add grows it.
            matrix = np.frombuffer(features, dtype=FEATURE_DTYPE).reshape(n, dim)
            lib.matrix = matrix.astype(np.float32, copy=False)
            _normalise_rows(lib.matrix)
        else:
            lib.matrix = np.empty((MIN_CAPACITY, dim), dtype=np.float32)
        row_ident = np.empty(max(n, 1), dtype=np.int32)
        for row, (face_id, identity_id) in enumerate(zip(face_ids, identity_of_face)):
            ident = lib.idents.get(identity_id)
            if ident is None:
                ident = lib.new_ident(identity_id)
            ident.faces.append(face_id)
            row_ident[row] = ident.index
        lib.row_ident = row_ident if n else np.empty(MIN_CAPACITY, dtype=np.int32)
        lib.row_face = list(face_ids)
        lib.face_row = {face_id: row for row, face_id in enumerate(face_ids)}
        lib.n = n
        for identity_id, permission_ids in groups.items():
            lib.set_groups(identity_id, permission_ids)
        return lib

    # ---------------------------------------------------------------- identities

    def new_ident(self, identity_id: str) -> _Ident:
        if self.free_indices:
            index = self.free_indices.pop()
            self.ident_ids[index] = identity_id
        else:
            index = len(self.ident_ids)
            self.ident_ids.append(identity_id)
        ident = _Ident(index)
        self.idents[identity_id] = ident
        return ident

    def release_if_unused(self, identity_id: str, ident: _Ident) -> None:
        # An index is only reused once no row and no group cache can refer to it.
        if not ident.faces and not ident.groups:
            del self.idents[identity_id]
            self.ident_ids[ident.index] = None
            self.free_indices.append(ident.index)

    # ---------------------------------------------------------------- faces

    def add(self, face_id: str, identity_id: str, vector: np.ndarray) -> None:
        if face_id in self.face_row:
            self.remove_face(face_id)
        ident = self.idents.get(identity_id)
        if ident is None:
            ident = self.new_ident(identity_id)
        row = self.n
        self._reserve(row + 1)
        self.matrix[row] = vector
        self.row_ident[row] = ident.index
        self.row_face.append(face_id)
        self.face_row[face_id] = row
        self.n = row + 1
        ident.faces.append(face_id)
        for permission_id in ident.groups:
            self.group_faces[permission_id] += 1

    def remove_face(self, face_id: str) -> bool:
        row = self.face_row.pop(face_id, None)
        if row is None:
            return False
        identity_id = self.ident_ids[int(self.row_ident[row])]
        ident = self.idents[identity_id]
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
        ident.faces.remove(face_id)
        for permission_id in ident.groups:
            self.group_faces[permission_id] -= 1
        self.release_if_unused(identity_id, ident)
        self._shrink_if_sparse()
        return True

    def remove_identity(self, identity_id: str) -> int:
        ident = self.idents.get(identity_id)
        if ident is None:
            return 0
        removed = list(ident.faces)
        for face_id in removed:
            self.remove_face(face_id)
        self.set_groups(identity_id, ())
        return len(removed)

    # ---------------------------------------------------------------- groups

    def set_groups(self, identity_id: str, permission_ids: Iterable[str]) -> None:
        new = frozenset(permission_ids)
        ident = self.idents.get(identity_id)
        if ident is None:
            if not new:
                return
            ident = self.new_ident(identity_id)
        old = ident.groups
        face_count = len(ident.faces)
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
        ident.groups = new
        self.release_if_unused(identity_id, ident)

    def remove_group(self, permission_id: str) -> None:
        members = self.group_members.pop(permission_id, None)
        self.group_faces.pop(permission_id, None)
        self.group_index_cache.pop(permission_id, None)
        for identity_id in members or ():
            ident = self.idents[identity_id]
            ident.groups = ident.groups - {permission_id}
            self.release_if_unused(identity_id, ident)

    def group_rows(self, permission_id: str) -> np.ndarray:
        """Rows of the faces whose identity belongs to the group (any order)."""
        members = self.group_members.get(permission_id)
        face_count = self.group_faces.get(permission_id, 0)
        if not members or not face_count:
            return np.empty(0, dtype=np.intp)
        if len(members) + face_count <= SMALL_GROUP_ITEMS:
            return np.fromiter(
                (self.face_row[face_id]
                 for identity_id in members for face_id in self.idents[identity_id].faces),
                dtype=np.intp, count=face_count)
        indices = self.group_index_cache.get(permission_id)
        if indices is None:
            indices = np.fromiter((self.idents[identity_id].index for identity_id in members),
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
                scores = self.matrix[rows] @ probe
            else:
                scores = (self.matrix[:n] @ probe)[rows]
            best = int(np.argmax(scores))
            row = int(rows[best])
            score = scores[best]
        identity_id = self.ident_ids[int(self.row_ident[row])]
        assert identity_id is not None
        return Match(self.row_face[row], identity_id, float(score))

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
