"""The box user's password hash (api/login.md R41), in the ``meta`` database.

``meta`` is never wiped, so the password survives ``wipedata`` of any kind. No record
means the initial password.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import msgpack

from sophon_face.store import keys
from sophon_face.store.env import Txn

_LOGIN = keys.meta_key("login")


def get(txn: Txn) -> Optional[Dict[str, Any]]:
    raw = txn.raw.get(_LOGIN, db=txn.dbs.meta)
    return None if raw is None else msgpack.unpackb(raw, raw=False)


def put(txn: Txn, record: Dict[str, Any]) -> None:
    txn.raw.put(_LOGIN, msgpack.packb(record, use_bin_type=True), db=txn.dbs.meta)
