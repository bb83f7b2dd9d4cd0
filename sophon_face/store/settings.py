"""Runtime settings (api/config.md): the values set through ``setconfigs``, by key name.

Only keys that were set are stored; every other key has its default (service/settings.py).
``clear`` is the factory reset of ``wipedata`` with ``all``.
"""

from __future__ import annotations

from typing import Any, Dict

from sophon_face.store import codec, keys
from sophon_face.store.env import Txn

KIND = "setting"


def get_all(txn: Txn) -> Dict[str, Any]:
    cursor = txn.raw.cursor(db=txn.dbs.settings)
    return {bytes(key).decode("utf-8"): codec.unpack(KIND, value)["value"]
            for key, value in cursor.iternext(keys=True, values=True)}


def put(txn: Txn, name: str, value: Any) -> None:
    txn.raw.put(keys.setting_key(name), codec.pack(KIND, {"value": value}), db=txn.dbs.settings)


def clear(txn: Txn) -> None:
    txn.raw.drop(txn.dbs.settings, delete=False)
