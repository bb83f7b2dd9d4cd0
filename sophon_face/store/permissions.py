"""Permission groups (api/permission.md section 0) with their name index and creation order.

Record fields: ``permission_id``, ``permission_name`` (unique, case-sensitive),
``description``, ``seq`` (creation order) and ``created_at``. The name index
(``permission_names``: name -> permission key) is changed in the same transaction as the
record, so a name can never point at a missing group or at two groups.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator, Mapping, Optional

from sophon_face.errors import IdNotFound, NameRepeatError
from sophon_face.store import codec, keys, meta
from sophon_face.store.env import Txn

KIND = "permission"


def get_by_id(txn: Txn, permission_id: str) -> Optional[Dict[str, Any]]:
    if not isinstance(permission_id, str) or not permission_id:
        return None
    return _get_by_key(txn, keys.permission_key(permission_id), permission_id)


def get_by_name(txn: Txn, permission_name: str) -> Optional[Dict[str, Any]]:
    if not isinstance(permission_name, str) or not permission_name:
        return None
    key = txn.raw.get(keys.permission_name_key(permission_name), db=txn.dbs.permission_names)
    if key is None:
        return None
    data = txn.raw.get(key, db=txn.dbs.permissions)
    if data is None:
        raise codec.StoreFormatError(
            f"permission name {permission_name!r} points at a missing group")
    record = codec.unpack(KIND, data)
    # Long names are keyed by a digest (keys.py); the stored name is the truth.
    return record if record["permission_name"] == permission_name else None


def require_by_id(txn: Txn, permission_id: str) -> Dict[str, Any]:
    """The group; ``IdNotFound(permission_id)`` when there is none (R49: message = value)."""
    record = get_by_id(txn, permission_id)
    if record is None:
        raise IdNotFound(permission_id)
    return record


def require_by_name(txn: Txn, permission_name: str) -> Dict[str, Any]:
    record = get_by_name(txn, permission_name)
    if record is None:
        raise IdNotFound(permission_name)
    return record


def exists(txn: Txn, permission_id: str) -> bool:
    return get_by_id(txn, permission_id) is not None


def put(txn: Txn, record: Mapping[str, Any]) -> Dict[str, Any]:
    """Insert or update a group; returns the record as stored.

    A rename moves the name index entry. A name held by another group raises
    ``NameRepeatError(name)``: the service checks first to keep the API's error order, this
    is the guarantee that the index stays one-to-one whatever the caller does.
    """
    permission_id = record["permission_id"]
    name = record["permission_name"]
    if not isinstance(name, str) or not name:
        raise ValueError("permission_name must be a non-empty string")
    key = keys.permission_key(permission_id)
    name_key = keys.permission_name_key(name)
    owner = txn.raw.get(name_key, db=txn.dbs.permission_names)
    if owner is not None and owner != key:
        raise NameRepeatError(name)
    stored = dict(record)
    old = _get_by_key(txn, key, permission_id)
    if old is not None:
        stored["seq"] = old["seq"]
        stored["created_at"] = old.get("created_at")
        if old["permission_name"] != name:
            txn.raw.delete(keys.permission_name_key(old["permission_name"]),
                           db=txn.dbs.permission_names)
    else:
        if txn.raw.get(key, db=txn.dbs.permissions) is not None:
            raise RuntimeError(f"permission key collision for {permission_id!r}")
        stored["seq"] = meta.next_seq(txn)
        if stored.get("created_at") is None:
            stored["created_at"] = time.time()
        txn.raw.put(keys.seq_key(stored["seq"]), key, db=txn.dbs.permission_order)
    txn.raw.put(name_key, key, db=txn.dbs.permission_names)
    txn.raw.put(key, codec.pack(KIND, stored), db=txn.dbs.permissions)
    return stored


def delete(txn: Txn, permission_id: str) -> Optional[Dict[str, Any]]:
    """Remove the group, its name and order entries; returns the removed record or None.

    Identities and devices that reference the group are the caller's to update in the same
    transaction (api/permission.md, deletepermission).
    """
    record = get_by_id(txn, permission_id)
    if record is None:
        return None
    txn.raw.delete(keys.permission_key(permission_id), db=txn.dbs.permissions)
    txn.raw.delete(keys.permission_name_key(record["permission_name"]),
                   db=txn.dbs.permission_names)
    txn.raw.delete(keys.seq_key(record["seq"]), db=txn.dbs.permission_order)
    return record


def iter_in_order(txn: Txn) -> Iterator[Dict[str, Any]]:
    """Every group, oldest first (the order of getpermissions)."""
    cursor = txn.raw.cursor(db=txn.dbs.permission_order)
    for key in cursor.iternext(keys=False, values=True):
        data = txn.raw.get(key, db=txn.dbs.permissions)
        if data is None:
            raise codec.StoreFormatError(
                f"permission_order points at a missing group {key!r}")
        yield codec.unpack(KIND, data)


def count(txn: Txn) -> int:
    return txn.entries(txn.dbs.permissions)


def _get_by_key(txn: Txn, key: bytes, permission_id: str) -> Optional[Dict[str, Any]]:
    data = txn.raw.get(key, db=txn.dbs.permissions)
    if data is None:
        return None
    record = codec.unpack(KIND, data)
    return record if record["permission_id"] == permission_id else None
