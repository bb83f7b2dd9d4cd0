"""The in-memory gallery: every registered face's feature in one matrix, for exact 1:N search.

Search is exact: every face in scope is scored (one matrix-vector product and an argmax),
there is no approximate index that could miss the right person. Rows are unit vectors, so a
score is the cosine similarity.

Layout:

* ``matrix``: one contiguous float32 array (capacity x D); rows ``[:n]`` are faces. A removed
  face's row is filled with the last row (O(1), the matrix stays dense). Capacity grows by
  ``GROWTH_FACTOR`` (1.25, not 2) so the resident size stays near the raw feature bytes.
* row bookkeeping: ``row_key`` (row -> face key), ``face_row`` (face key -> row) and
  ``row_ident`` (row -> identity index, an int32 array so that group scoping is vectorised).
  A face key is the 16-byte UUID (the LMDB key), not the 36-character id string.
* identities: identity id <-> a small integer index; per index (int32 arrays) the face
  count and the number of the identity's set of permission groups. The distinct sets are
  interned once (``_GroupSets``): identities share them, and no group costs nothing extra.
* groups: permission id -> number of member identities and of their faces (for
  EMPTY_GROUP_ERROR); a group's rows are found through the set numbers, vectorised.

The gallery is rebuilt from LMDB at start (``load_from_txn``) and changed only through
``apply`` with the change objects a write function returns, after its commit. One lock
guards everything: searches run in a thread pool while the writer thread applies changes,
and a search sees all of a transaction's changes or none of them.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from itertools import repeat
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from sophon_face.store import faces, identities, keys
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

#: How the gallery keys a face id (see ``_face_key``).
FaceKey = Union[bytes, str]
#: The groups of an identity without any: one shared object.
EMPTY_GROUPS: FrozenSet[str] = frozenset()


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
            return _face_key(face_id) in self._lib.face_row

    def groups_of(self, identity_id: str) -> FrozenSet[str]:
        with self._lock:
            return self._lib.groups_of(identity_id)

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
                face_ids=[_face_id(key) for key in lib.row_key],
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
        Face ids stay the 16-byte LMDB keys (the gallery's own form), and group memberships
        are loaded group by group with vectorised calls (``_Library.load_groups``).

        Run it where no write can commit between this snapshot and the swap: before writes
        start (``Store.open``) or on the writer thread (``Store.reload_gallery``).
        """
        row_bytes = self._dim * FEATURE_DTYPE.itemsize
        features = bytearray(faces.count(txn) * row_bytes)
        view = memoryview(features)
        face_keys: List[FaceKey] = []
        identity_of_face: List[str] = []
        wrong_dims: Counter[int] = Counter()
        offset = 0
        for key, identity_id, dim, feature in faces.iter_gallery_rows(txn):
            if dim != self._dim:
                wrong_dims[dim] += 1
                continue
            view[offset:offset + row_bytes] = feature
            offset += row_bytes
            face_keys.append(key)
            identity_of_face.append(identity_id)
        view.release()
        if wrong_dims:
            found = ", ".join(f"{count} of dimension {dim}"
                              for dim, count in sorted(wrong_dims.items()))
            raise FeatureDimMismatch(
                f"stored faces ({found}) do not match the active recognizer's feature "
                f"dimension {self._dim}: they were registered with another model and "
                "must be re-registered (or the matching model configured)")
        lib = _Library.from_bulk(self._dim, face_keys, identity_of_face, features)
        del identity_of_face  # the library keeps each identity id once, not once per face
        lib.load_groups(identities.iter_groups(txn))
        with self._lock:
            self._lib = lib
        log.info("gallery loaded: %d faces, %d groups", lib.n, len(lib.group_faces))

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



def _face_key(face_id: str) -> FaceKey:
    """The gallery's key of a face id: the 16 bytes of a canonical UUID (the LMDB key; 49
    bytes as an object instead of 85 for the string), or the id itself for anything else
    (tests and tools may use other strings; a str never equals a bytes key)."""
    try:
        return keys.uuid_key(face_id)
    except ValueError:
        return face_id


def _face_id(key: FaceKey) -> str:
    """Inverse of ``_face_key``."""
    return key if isinstance(key, str) else keys.uuid_from_key(key)


class _GroupSets:
    """The distinct sets of permission groups held by identities, interned and numbered.

    Most identities share a handful of group combinations, so an identity keeps only the
    number of its set (one int32, see ``_Library.ident_set``) instead of a frozenset of its
    own (~300 bytes). Set 0 is the empty set: an identity without groups costs nothing
    extra. A set is dropped, and its number reused, once no identity holds it.
    """

    def __init__(self) -> None:
        self.sets: List[Optional[FrozenSet[str]]] = [EMPTY_GROUPS]  # number -> set (None = free)
        self.users: List[int] = [0]  # identities holding each set (not counted for set 0)
        self.number_of: Dict[FrozenSet[str], int] = {EMPTY_GROUPS: 0}
        self.free: List[int] = []

    def acquire(self, groups: FrozenSet[str], identities: int = 1) -> int:
        """The number of ``groups``, now held by ``identities`` more identities."""
        if not groups:
            return 0
        number = self.number_of.get(groups)
        if number is None:
            number = self.free.pop() if self.free else len(self.sets)
            if number == len(self.sets):
                self.sets.append(groups)
                self.users.append(0)
            else:
                self.sets[number] = groups
            self.number_of[groups] = number
        self.users[number] += identities
        return number

    def release(self, number: int, identities: int = 1) -> None:
        if number == 0:
            return
        self.users[number] -= identities
        if self.users[number] == 0:
            groups = self.sets[number]
            assert groups is not None
            del self.number_of[groups]
            self.sets[number] = None
            self.free.append(number)

    def numbers_containing(self, permission_id: str) -> List[int]:
        return [number for number, groups in enumerate(self.sets)
                if groups is not None and permission_id in groups]

    def mask_containing(self, permission_id: str) -> np.ndarray:
        """Boolean array: set number -> whether the set holds ``permission_id``."""
        mask = np.zeros(len(self.sets), dtype=bool)
        mask[self.numbers_containing(permission_id)] = True
        return mask


class _Library:
    """The gallery's data, unlocked; ``Gallery`` owns the lock.

    Per-identity data is kept in arrays indexed by a small integer (the identity index)
    rather than in Python objects per identity, and per-face data in the fewest objects
    (a 16-byte key and its row): a rebuild of a million faces then costs a few vectorised
    calls instead of a million object creations.
    """

    def __init__(self, dim: int, capacity: int) -> None:
        self.dim = dim
        self.matrix = np.empty((capacity, dim), dtype=np.float32)
        self.row_ident = np.empty(capacity, dtype=np.int32)  # row -> identity index
        self.n = 0
        self.row_key: List[FaceKey] = []  # row -> face key (``_face_key``)
        self.face_row: Dict[FaceKey, int] = {}
        self.ident_index: Dict[str, int] = {}
        self.ident_ids: List[Optional[str]] = []  # identity index -> id (None = free)
        # Identity index -> its face count, and the number of its group set (_GroupSets).
        self.ident_face_count = np.zeros(MIN_CAPACITY, dtype=np.int32)
        self.ident_set = np.zeros(MIN_CAPACITY, dtype=np.int32)
        self.free_indices: List[int] = []
        self.group_sets = _GroupSets()
        # Per group with at least one member: member identities and their faces.
        self.group_size: Dict[str, int] = {}
        self.group_faces: Dict[str, int] = {}
        # Scratch for gathered group scoring; safe to share because searches hold the lock.
        self.gather_buffer: Optional[np.ndarray] = None

    @classmethod
    def from_bulk(cls, dim: int, face_keys: List[FaceKey], identity_of_face: List[str],
                  features: bytearray) -> _Library:
        n = len(face_keys)
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
            lib._grow_identities(len(counts))
            lib.ident_face_count[:len(counts)] = counts
            lib.row_key = face_keys
            lib.face_row = dict(zip(face_keys, range(n)))
            lib.n = n
        return lib

    def load_groups(self, groups: Iterable[Tuple[str, List[str]]]) -> None:
        """Set every identity's groups from ``(permission_id, member ids)`` pairs at once.

        For a fresh library (``from_bulk``). Instead of one ``set_groups`` per identity,
        each identity gets a bitmask of its groups, and ``np.unique`` over the masks finds
        the distinct sets: Python work per group and per distinct set, not per identity.
        """
        permission_ids: List[str] = []
        members: List[np.ndarray] = []
        for permission_id, identity_ids in groups:
            permission_ids.append(permission_id)
            members.append(self._indices_for(identity_ids))
        if not permission_ids:
            return
        identities = len(self.ident_ids)
        masks = np.zeros((identities, (len(permission_ids) + 63) // 64), dtype=np.uint64)
        for bit, indices in enumerate(members):
            masks[indices, bit // 64] |= np.uint64(1) << np.uint64(bit % 64)
        distinct, inverse = _unique_rows(masks)
        holders = np.bincount(inverse, minlength=len(distinct))
        numbers = np.empty(len(distinct), dtype=np.int32)
        for row, mask in enumerate(distinct):
            bits = np.flatnonzero(np.unpackbits(mask.astype("<u8").view(np.uint8),
                                                bitorder="little"))
            numbers[row] = self.group_sets.acquire(
                frozenset(permission_ids[bit] for bit in bits.tolist()), int(holders[row]))
        self.ident_set[:identities] = numbers[inverse]
        for permission_id, indices in zip(permission_ids, members):
            self.group_size[permission_id] = self.group_size.get(permission_id, 0) + len(indices)
            self.group_faces[permission_id] = (self.group_faces.get(permission_id, 0)
                                               + int(self.ident_face_count[indices].sum()))

    def _indices_for(self, identity_ids: List[str]) -> np.ndarray:
        """Identity indices of ``identity_ids``, numbering the ones not seen yet."""
        indices = np.fromiter(map(self.ident_index.get, identity_ids, repeat(-1)),
                              dtype=np.int32, count=len(identity_ids))
        for position in np.flatnonzero(indices < 0).tolist():  # identities without faces
            indices[position] = self.index_for(identity_ids[position])
        return indices

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
            self._grow_identities(index + 1)
        self.ident_face_count[index] = 0
        self.ident_set[index] = 0
        self.ident_index[identity_id] = index
        return index

    def _grow_identities(self, needed: int) -> None:
        capacity = len(self.ident_face_count)
        if needed <= capacity:
            return
        capacity = max(needed, int(capacity * GROWTH_FACTOR) + 1)
        for name in ("ident_face_count", "ident_set"):
            old = getattr(self, name)
            grown = np.zeros(capacity, dtype=np.int32)
            grown[:len(old)] = old
            setattr(self, name, grown)

    def release_if_unused(self, identity_id: str, index: int) -> None:
        # An index is only reused once no row and no group refers to it.
        if self.ident_face_count[index] == 0 and self.ident_set[index] == 0:
            del self.ident_index[identity_id]
            self.ident_ids[index] = None
            self.free_indices.append(index)

    def groups_of(self, identity_id: str) -> FrozenSet[str]:
        index = self.ident_index.get(identity_id)
        if index is None:
            return EMPTY_GROUPS
        groups = self.group_sets.sets[int(self.ident_set[index])]
        assert groups is not None
        return groups

    # ---------------------------------------------------------------- faces

    def add(self, face_id: str, identity_id: str, vector: np.ndarray) -> None:
        key = _face_key(face_id)
        if key in self.face_row:
            self.remove_key(key)
        index = self.index_for(identity_id)
        row = self.n
        self._reserve(row + 1)
        self.matrix[row] = vector
        self.row_ident[row] = index
        self.row_key.append(key)
        self.face_row[key] = row
        self.n = row + 1
        self.ident_face_count[index] += 1
        for permission_id in self.groups_of(identity_id):
            self.group_faces[permission_id] += 1

    def remove_face(self, face_id: str) -> bool:
        return self.remove_key(_face_key(face_id))

    def remove_key(self, key: FaceKey) -> bool:
        row = self.face_row.pop(key, None)
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
            moved = self.row_key[last]
            self.row_key[row] = moved
            self.face_row[moved] = row
        self.row_key.pop()
        self.n = last
        self.ident_face_count[index] -= 1
        for permission_id in self.groups_of(identity_id):
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
        removed = [self.row_key[row] for row in rows.tolist()]
        for key in removed:
            self.remove_key(key)
        self.set_groups(identity_id, ())
        return len(removed)

    # ---------------------------------------------------------------- groups

    def set_groups(self, identity_id: str, permission_ids: Iterable[str]) -> None:
        new = frozenset(permission_ids)
        old = self.groups_of(identity_id)
        if new == old:
            return
        index = self.index_for(identity_id)
        face_count = int(self.ident_face_count[index])
        for permission_id in old - new:
            self._leave(permission_id, face_count)
        for permission_id in new - old:
            self._join(permission_id, face_count)
        self.group_sets.release(int(self.ident_set[index]))
        self.ident_set[index] = self.group_sets.acquire(new)
        self.release_if_unused(identity_id, index)

    def _join(self, permission_id: str, face_count: int) -> None:
        self.group_size[permission_id] = self.group_size.get(permission_id, 0) + 1
        self.group_faces[permission_id] = self.group_faces.get(permission_id, 0) + face_count

    def _leave(self, permission_id: str, face_count: int) -> None:
        self.group_size[permission_id] -= 1
        if self.group_size[permission_id]:
            self.group_faces[permission_id] -= face_count
        else:
            del self.group_size[permission_id]
            del self.group_faces[permission_id]

    def remove_group(self, permission_id: str) -> None:
        if self.group_size.pop(permission_id, None) is None:
            return
        del self.group_faces[permission_id]
        held = self.ident_set[:len(self.ident_ids)]
        for number in self.group_sets.numbers_containing(permission_id):
            # Every holder of this set moves to the set without the group, in one step.
            groups = self.group_sets.sets[number]
            assert groups is not None
            indices = np.flatnonzero(held == number)
            remaining = self.group_sets.acquire(groups - {permission_id}, len(indices))
            held[indices] = remaining
            self.group_sets.release(number, len(indices))
            if remaining == 0:
                for index in indices[self.ident_face_count[indices] == 0].tolist():
                    identity_id = self.ident_ids[index]
                    assert identity_id is not None
                    self.release_if_unused(identity_id, index)

    def group_rows(self, permission_id: str) -> np.ndarray:
        """Rows of the faces whose identity belongs to the group, ascending.

        Two vectorised lookups, set number -> in group -> identity -> row: O(rows), about
        2 ms for a million rows, whatever the size of the group.
        """
        if not self.group_faces.get(permission_id, 0):
            return np.empty(0, dtype=np.intp)
        in_group = self.group_sets.mask_containing(permission_id)[
            self.ident_set[:len(self.ident_ids)]]
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
        return Match(_face_id(self.row_key[row]), identity_id, float(score))

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


def _unique_rows(rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``np.unique(rows, axis=0, return_inverse=True)``, with a 1-D inverse.

    One column (up to 64 groups, the usual case) takes the plain 1-D sort, several times
    faster than the row-wise one.
    """
    if rows.shape[1] == 1:
        distinct, inverse = np.unique(rows[:, 0], return_inverse=True)
        return distinct[:, None], inverse.reshape(-1)
    distinct, inverse = np.unique(rows, axis=0, return_inverse=True)
    return distinct, inverse.reshape(-1)  # its shape differs between numpy versions


def _normalise_rows(matrix: np.ndarray) -> None:
    """Scale every row to unit length in place (no (n, D) temporary)."""
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    norms[norms == 0] = 1.0
    matrix /= norms[:, None]
