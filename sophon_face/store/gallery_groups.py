"""Permission groups of the gallery's identities: interned sets of groups, numbered."""

from __future__ import annotations

from typing import Dict, FrozenSet, List, Optional, Tuple

import numpy as np

#: The groups of an identity without any: one shared object.
EMPTY_GROUPS: FrozenSet[str] = frozenset()


class GroupSets:
    """The distinct sets of permission groups held by identities, interned and numbered.

    Most identities share a handful of group combinations, so an identity keeps only the
    number of its set (one int32, see ``gallery_library.Library.ident_set``) instead of a
    frozenset of its own (~300 bytes). Set 0 is the empty set: an identity without groups
    costs nothing extra. A set is dropped, and its number reused, once no identity holds it.
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


def unique_rows(rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``np.unique(rows, axis=0, return_inverse=True)``, with a 1-D inverse.

    One column (up to 64 groups, the usual case) takes the plain 1-D sort, several times
    faster than the row-wise one.
    """
    if rows.shape[1] == 1:
        distinct, inverse = np.unique(rows[:, 0], return_inverse=True)
        return distinct[:, None], inverse.reshape(-1)
    distinct, inverse = np.unique(rows, axis=0, return_inverse=True)
    return distinct, inverse.reshape(-1)  # its shape differs between numpy versions


