"""Store-internal values in the ``meta`` database: the creation sequence and the layout.

Counts (faces, identities, groups) are deliberately *not* kept here: LMDB's per-database
entry count (``txn.stat(db)["entries"]``) is exact in every transaction by construction,
so there is no second counter that could drift from the data.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Optional

from sophon_face.store import keys
from sophon_face.store.codec import StoreFormatError

if TYPE_CHECKING:
    from sophon_face.store.env import Txn

#: Version of the key layout and database set (keys.py, env.DB_NAMES). Bump it when keys
#: change shape; an older daemon then refuses the directory instead of misreading it.
#: 1: first layout. 2: adds the ``group_members`` index (built from the identities).
#: 3: features packed in blocks, each with its rows' owners, beside schema-2 face records
#: (faces.py); a store holding schema-1 faces is rebuilt in the new layout before it opens
#: (migrations.py).
LAYOUT_VERSION = 3

log = logging.getLogger(__name__)

_NEXT_SEQ = keys.meta_key("next_seq")
_LAYOUT = keys.meta_key("layout_version")
_U64 = struct.Struct(">Q")


def next_seq(txn: Txn) -> int:
    """Take the next creation sequence number (1, 2, ...). Shared by all record kinds: one
    counter is enough to order each kind by creation, and it never goes backwards."""
    raw = txn.raw.get(_NEXT_SEQ, db=txn.dbs.meta)
    seq = 1 if raw is None else _U64.unpack(raw)[0]
    txn.raw.put(_NEXT_SEQ, _U64.pack(seq + 1), db=txn.dbs.meta)
    return seq


def touch(txn: Txn) -> None:
    """Rewrite the layout stamp unchanged: a commit that changes nothing (store/env.py,
    leaving the map's removal reserve)."""
    raw = txn.raw.get(_LAYOUT, db=txn.dbs.meta)
    if raw is not None:
        txn.raw.put(_LAYOUT, raw, db=txn.dbs.meta)


def layout_version(txn: Txn) -> Optional[int]:
    """The layout version the store is stamped with; None for a store never opened."""
    raw = txn.raw.get(_LAYOUT, db=txn.dbs.meta)
    return None if raw is None else _U64.unpack(raw)[0]


def check_layout(txn: Txn) -> None:
    """Stamp a new store with ``LAYOUT_VERSION``, upgrade an older one in the same
    transaction, refuse one written by a newer layout."""
    raw = txn.raw.get(_LAYOUT, db=txn.dbs.meta)
    found = LAYOUT_VERSION if raw is None else _U64.unpack(raw)[0]
    if found > LAYOUT_VERSION:
        raise StoreFormatError(
            f"store layout version {found} is newer than the {LAYOUT_VERSION} this "
            "sophon-face understands; the data was written by a newer release")
    if found < 2:
        # Imported here: identities imports this module for the sequence counter.
        from sophon_face.store import identities
        log.info("upgrading store layout %d -> 2: building the group membership index", found)
        identities.rebuild_group_index(txn)
    if found != LAYOUT_VERSION or raw is None:
        txn.raw.put(_LAYOUT, _U64.pack(LAYOUT_VERSION), db=txn.dbs.meta)
