"""Persistence: LMDB behind one writer thread, and the in-memory gallery for 1:N search.

``Store`` (env.py) is the only async code here; the repositories (identities, faces, images,
permissions, meta) are plain functions over a ``Txn``; keys.py builds every key and codec.py
is the one serialisation. Nothing here knows HTTP or models.
"""

from __future__ import annotations

from sophon_face.store.env import Store, StoreClosed, Txn
from sophon_face.store.gallery import (
    AddFace, Gallery, GalleryChange, Match, RemoveFace, RemoveGroup, RemoveIdentity, SetGroups,
)

__all__ = [
    "AddFace", "Gallery", "GalleryChange", "Match", "RemoveFace", "RemoveGroup",
    "RemoveIdentity", "SetGroups", "Store", "StoreClosed", "Txn",
]
