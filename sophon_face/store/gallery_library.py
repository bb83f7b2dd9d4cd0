"""The gallery's data, unlocked: rows of int8 codes, identities, groups, and the search over
them (``Gallery`` in gallery.py owns the lock and the public API; gallery_scan.py has the
maths of the compressed scan).

Per-identity data is kept in arrays indexed by a small integer (the identity index) rather
than in Python objects per identity, and per-face data in the fewest objects (a 16-byte key
and its row): a rebuild of a million faces then costs a few vectorised calls instead of a
million object creations.
"""

from __future__ import annotations

from collections import deque
from itertools import count, repeat
from typing import Callable, Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from sophon_face.store import faces, keys
from sophon_face.store.env import Txn
from sophon_face.store.gallery_groups import EMPTY_GROUPS, GroupSets, unique_rows
from sophon_face.store.gallery_scan import (Int8Scan, margin_terms, quantise_probe,
                                            quantise_rows, select_candidates)

#: Capacity growth factor: 1.25 keeps resident memory near the data (2x would allow 2x on a
#: box with a few GB of RAM); growing is a copy, amortised O(1) per face.
GROWTH_FACTOR = 1.25
MIN_CAPACITY = 1024
#: Below this fraction of all rows, a group is scanned by gathering its rows' codes; above
#: it, by scanning every row and picking the group's scores (streaming beats gathering).
GATHER_FRACTION = 0.15
#: Rows gathered per block, through one reused scratch buffer (a fresh array per search
#: costs page faults that dwarf the arithmetic).
GATHER_BLOCK_ROWS = 4096

#: How the gallery keys a face id (see ``face_key``).
FaceKey = Union[bytes, str]
#: Exact float32 rows of the given gallery rows, normalised, and which of them were found.
ExactRows = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]


class Match(NamedTuple):
    face_id: str
    identity_id: str
    score: float  # cosine similarity, in [-1, 1]


def face_key(face_id: str) -> FaceKey:
    """The gallery's key of a face id: the 16 bytes of a canonical UUID (the LMDB key; 49
    bytes as an object instead of 85 for the string), or the id itself for anything else
    (tests and tools may use other strings; a str never equals a bytes key)."""
    try:
        return keys.uuid_key(face_id)
    except ValueError:
        return face_id


def face_id_of(key: FaceKey) -> str:
    """Inverse of ``face_key``."""
    return key if isinstance(key, str) else keys.uuid_from_key(key)


class Library:
    """The gallery's data, unlocked; ``Gallery`` owns the lock (see the module docstring)."""

    def __init__(self, dim: int, capacity: int, score_dtype: np.dtype,
                 keep_exact: bool) -> None:
        self.dim = dim
        self.score_dtype = score_dtype
        self.codes = np.empty((capacity, dim), dtype=np.int8)
        self.scale = np.empty(capacity, dtype=np.float32)
        self.resid = np.empty(capacity, dtype=np.float32)
        #: An upper bound of ``resid`` over all rows (not lowered by removals: still a bound).
        self.resid_max = 0.0
        #: The float32 unit rows, when not read from the store (see the module docstring).
        self.exact: Optional[np.ndarray] = (
            np.empty((capacity, dim), dtype=np.float32) if keep_exact else None)
        self.row_ident = np.empty(capacity, dtype=np.int32)  # row -> identity index
        self.n = 0
        self.row_key: List[FaceKey] = []  # row -> face key (``face_key``)
        #: Face key -> row: built on first use (``face_row``), which searches never make.
        self._face_row: Optional[Dict[FaceKey, int]] = {}
        self.ident_index: Dict[str, int] = {}
        self.ident_ids: List[Optional[str]] = []  # identity index -> id (None = free)
        # Identity index -> its face count, and the number of its group set (GroupSets).
        self.ident_face_count = np.zeros(MIN_CAPACITY, dtype=np.int32)
        self.ident_set = np.zeros(MIN_CAPACITY, dtype=np.int32)
        self.free_indices: List[int] = []
        self.group_sets = GroupSets()
        # Per group with at least one member: member identities and their faces.
        self.group_size: Dict[str, int] = {}
        self.group_faces: Dict[str, int] = {}
        # Scratch, safe to share because searches hold the lock: compressed scores of all
        # rows, and gathered codes of a group.
        self.score_buffer: Optional[np.ndarray] = None
        self.gather_buffer: Optional[np.ndarray] = None

    @property
    def face_row(self) -> Dict[FaceKey, int]:
        """Face key -> row. A rebuild leaves it to the first call (a write, ``has_face``):
        a million entries cost 0.3 s that a restart would spend for no search."""
        if self._face_row is None:
            self._face_row = dict(zip(self.row_key, range(self.n)))
        return self._face_row

    @classmethod
    def from_bulk(cls, dim: int, row_keys: List[FaceKey], row_identities: List[str],
                  codes: np.ndarray, scale: np.ndarray, resid: np.ndarray,
                  score_dtype: np.dtype) -> Library:
        """The library of a rebuild: row ``i`` of the filled ``codes``, ``scale`` and
        ``resid`` is face ``row_keys[i]`` of identity ``row_identities[i]`` (the arrays may
        hold more rows: spare capacity)."""
        n = len(row_keys)
        lib = cls(dim, 1, score_dtype, keep_exact=False)
        if n:
            lib.codes, lib.scale, lib.resid = codes, scale, resid
            lib.resid_max = float(resid[:n].max())
            # An identity's index is the row it first appears in: ``first`` maps each
            # identity to it in one C loop and is the id -> index map (a million-entry dict
            # costs 0.3 s to build, so there is no second, dense one). Indices where no
            # identity starts are free (None), to be reused like any freed one.
            first: Dict[str, int] = {}
            lib.row_ident = np.empty(codes.shape[0], dtype=np.int32)
            lib.row_ident[:n] = np.fromiter(map(first.setdefault, row_identities, count()),
                                            dtype=np.int32, count=n)
            lib.ident_index = first
            if len(first) == n:  # one face per identity: index i is row i's identity
                lib.ident_ids = list(row_identities)
            else:
                lib.ident_ids = [None] * n
                deque(map(lib.ident_ids.__setitem__, first.values(), first.keys()), maxlen=0)
                free = np.ones(n, dtype=bool)
                free[lib.row_ident[:n]] = False
                lib.free_indices = np.flatnonzero(free).tolist()
            counts = np.bincount(lib.row_ident[:n], minlength=len(lib.ident_ids)).astype(np.int32)
            lib._grow_identities(len(counts))
            lib.ident_face_count[:len(counts)] = counts
            lib.row_key = row_keys
            lib._face_row = None
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
        identities_count = len(self.ident_ids)
        masks = np.zeros((identities_count, (len(permission_ids) + 63) // 64), dtype=np.uint64)
        for bit, indices in enumerate(members):
            masks[indices, bit // 64] |= np.uint64(1) << np.uint64(bit % 64)
        distinct, inverse = unique_rows(masks)
        holders = np.bincount(inverse, minlength=len(distinct))
        numbers = np.empty(len(distinct), dtype=np.int32)
        for row, mask in enumerate(distinct):
            bits = np.flatnonzero(np.unpackbits(mask.astype("<u8").view(np.uint8),
                                                bitorder="little"))
            numbers[row] = self.group_sets.acquire(
                frozenset(permission_ids[bit] for bit in bits.tolist()), int(holders[row]))
        self.ident_set[:identities_count] = numbers[inverse]
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
        key = face_key(face_id)
        if key in self.face_row:
            self.remove_key(key)
        index = self.index_for(identity_id)
        row = self.n
        self._reserve(row + 1)
        rows = vector.reshape(1, -1)
        quantise_rows(rows, self.codes[row:row + 1], self.scale[row:row + 1],
                      self.resid[row:row + 1])
        self.resid_max = max(self.resid_max, float(self.resid[row]))
        if self.exact is not None:
            self.exact[row] = vector
        self.row_ident[row] = index
        self.row_key.append(key)
        self.face_row[key] = row
        self.n = row + 1
        self.ident_face_count[index] += 1
        for permission_id in self.groups_of(identity_id):
            self.group_faces[permission_id] += 1

    def remove_face(self, face_id: str) -> bool:
        return self.remove_key(face_key(face_id))

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
            for array in self._row_arrays():
                array[row] = array[last]
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

    def search(self, vector: np.ndarray, permission_id: Optional[str], scan: Int8Scan,
               exact_rows: ExactRows) -> Optional[Match]:
        n = self.n
        if n == 0:
            return None
        scope: Optional[np.ndarray] = None
        if permission_id is not None:
            scope = self.group_rows(permission_id)
            if scope.size == 0:
                return None
        probe_codes, probe_scale, sigma = quantise_probe(vector)
        compressed = self._compressed_scores(scope, probe_codes, probe_scale, scan)
        rho = self.resid[:n] if scope is None else self.resid[scope]
        a, b = margin_terms(sigma, self.dim)
        while True:
            positions = select_candidates(compressed, rho, a, b, self.resid_max)
            if positions.size == 0:
                return None  # every face in scope is missing from the store's snapshot
            rows = positions if scope is None else scope[positions]
            exact, found = exact_rows(rows)
            if found.all():
                break
            compressed[positions[~found]] = -np.inf  # left out (see Gallery.search)
        scores = exact @ vector
        best = int(np.argmax(scores))
        row = int(rows[best])
        identity_id = self.ident_ids[int(self.row_ident[row])]
        assert identity_id is not None
        return Match(face_id_of(self.row_key[row]), identity_id, float(scores[best]))

    def _compressed_scores(self, scope: Optional[np.ndarray], probe_codes: np.ndarray,
                           probe_scale: float, scan: Int8Scan) -> np.ndarray:
        """``c_i`` of every row in scope (a private array: the caller may change it)."""
        n = self.n
        if scope is not None and scope.size < n * GATHER_FRACTION:
            out = np.empty(scope.size, dtype=self.score_dtype)
            if self.gather_buffer is None:
                self.gather_buffer = np.empty((GATHER_BLOCK_ROWS, self.dim), dtype=np.int8)
            for start in range(0, scope.size, GATHER_BLOCK_ROWS):
                part = scope[start:start + GATHER_BLOCK_ROWS]
                block = np.take(self.codes, part, axis=0, out=self.gather_buffer[:part.size])
                scan.scores(block, probe_codes, out[start:start + part.size])
            out *= self.scale[scope]
        else:
            buffer = self.score_buffer
            if buffer is None or buffer.size < n:
                buffer = self.score_buffer = np.empty(self.codes.shape[0],
                                                      dtype=self.score_dtype)
            out = buffer[:n]
            scan.scores(self.codes[:n], probe_codes, out)
            out *= self.scale[:n]
            if scope is not None:
                out = out[scope]
        out *= probe_scale
        return out

    def exact_rows(self, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        assert self.exact is not None
        return self.exact[rows], np.ones(rows.size, dtype=bool)

    def store_rows(self, txn: Txn, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The rows' features read in ``txn``, normalised as ``add`` and the load do."""
        face_keys = [self.row_key[row] for row in rows.tolist()]
        matrix, found = faces.features_of(txn, face_keys, self.dim)  # type: ignore[arg-type]
        normalise_rows(matrix)
        return matrix, found

    # ---------------------------------------------------------------- capacity

    def _row_arrays(self) -> List[np.ndarray]:
        arrays = [self.codes, self.scale, self.resid, self.row_ident]
        if self.exact is not None:
            arrays.append(self.exact)
        return arrays

    def _reserve(self, needed: int) -> None:
        capacity = self.codes.shape[0]
        if needed <= capacity:
            return
        self._resize(max(needed, int(capacity * GROWTH_FACTOR) + 1, MIN_CAPACITY))

    def _shrink_if_sparse(self) -> None:
        # Hysteresis: shrink only below half full, to 1.25x the rows, so add/remove at a
        # boundary cannot make every operation copy the arrays.
        capacity = self.codes.shape[0]
        if capacity > MIN_CAPACITY and self.n * 2 < capacity:
            self._resize(max(MIN_CAPACITY, int(self.n * GROWTH_FACTOR) + 1))

    def _resize(self, capacity: int) -> None:
        n = self.n
        for name in ("codes", "scale", "resid", "row_ident", "exact"):
            old = getattr(self, name)
            if old is None:
                continue
            grown = np.empty((capacity,) + old.shape[1:], dtype=old.dtype)
            grown[:n] = old[:n]
            setattr(self, name, grown)
        self.score_buffer = None


def quantise_into(rows: np.ndarray, codes: np.ndarray, scale: np.ndarray,
                  resid: np.ndarray) -> None:
    """Normalise float32 ``rows`` in place and quantise them into the given arrays: the
    same steps as ``Library.add`` (a rebuilt gallery holds the same codes, bit for bit)."""
    normalise_rows(rows)
    quantise_rows(rows, codes, scale, resid)


def normalise_rows(matrix: np.ndarray) -> None:
    """Scale every row to unit length in place (no (n, D) temporary)."""
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    norms[norms == 0] = 1.0
    matrix /= norms[:, None]
