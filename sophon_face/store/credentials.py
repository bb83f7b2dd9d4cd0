"""The box user's password record (api/login.md R41), in the ``meta`` database.

``meta`` is never wiped, so the password survives ``wipedata`` of any kind. No record
means the initial password. The record holds only a salted hash and its parameters
(service/login.py), never the password.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from sophon_face.store import codec, keys
from sophon_face.store.env import Txn

KIND = "credentials"
_LOGIN = keys.meta_key("login")


def get(txn: Txn) -> Optional[Dict[str, Any]]:
    raw = txn.raw.get(_LOGIN, db=txn.dbs.meta)
    return None if raw is None else codec.unpack(KIND, raw)


def put(txn: Txn, record: Dict[str, Any]) -> None:
    txn.raw.put(_LOGIN, codec.pack(KIND, record), db=txn.dbs.meta)
