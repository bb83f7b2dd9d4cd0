"""Identity records (api/identity.md section 1) and their creation-order index.

Record fields: ``identity_id``, ``identity_name``, ``user_type``, ``permission_ids`` (list,
no duplicates), ``ext_user_info`` (dict of JSON values), ``face_ids`` and
``register_image_ids`` (parallel lists), ``seq`` (creation order) and ``created_at`` (float
seconds). The faces and images themselves live in their own databases; keeping the three in
step is the job of the service's write function, which changes them in one transaction.

``put`` and ``delete`` also keep two indexes in the same transaction: ``identity_order``
(creation order) and ``group_members`` (permission key -> identity keys), so that a group's
members are found without reading every identity.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from sophon_face.errors import IdNotFound
from sophon_face.store import codec, keys, meta
from sophon_face.store.env import Txn
from sophon_face.store.name_filter import NameFilter

KIND = "identity"


def get(txn: Txn, identity_id: str) -> Optional[Dict[str, Any]]:
    """The identity record, or None when there is no such identity (``""`` included)."""
    if not isinstance(identity_id, str) or not identity_id:
        return None
    return _get_by_key(txn, keys.identity_key(identity_id), identity_id)


def require(txn: Txn, identity_id: str) -> Dict[str, Any]:
    """The identity record; ``IdNotFound(identity_id)`` when there is none."""
    record = get(txn, identity_id)
    if record is None:
        raise IdNotFound(identity_id)
    return record


def exists(txn: Txn, identity_id: str) -> bool:
    return get(txn, identity_id) is not None


def put(txn: Txn, record: Mapping[str, Any]) -> Dict[str, Any]:
    """Insert or update an identity; returns the record as stored.

    A new identity takes the next creation sequence number (and ``created_at`` now, unless
    given); an existing one keeps both, so updates never move it in ``iter_in_order``.
    To re-create an identity at the end of the order (force_replace), delete it first.
    """
    _check_invariants(record)
    identity_id = record["identity_id"]
    key = keys.identity_key(identity_id)
    stored = dict(record)
    old = _get_by_key(txn, key, identity_id)
    if old is not None:
        stored["seq"] = old["seq"]
        stored["created_at"] = old["created_at"]
        _unlink_groups(txn, key, set(old["permission_ids"]) - set(stored["permission_ids"]))
        _link_groups(txn, key, set(stored["permission_ids"]) - set(old["permission_ids"]))
    else:
        _refuse_digest_collision(txn, key, identity_id)
        stored["seq"] = meta.next_seq(txn)
        if stored.get("created_at") is None:
            stored["created_at"] = time.time()
        txn.raw.put(keys.seq_key(stored["seq"]), key, db=txn.dbs.identity_order)
        _link_groups(txn, key, stored["permission_ids"])
    txn.raw.put(key, codec.pack(KIND, stored), db=txn.dbs.identities)
    return stored


def delete(txn: Txn, identity_id: str) -> Optional[Dict[str, Any]]:
    """Remove the identity record and its order entry; returns the removed record or None.

    Its faces and images are not touched here: the caller removes them in the same
    transaction (it has the record, with ``face_ids`` and ``register_image_ids``).
    """
    record = get(txn, identity_id)
    if record is None:
        return None
    key = keys.identity_key(identity_id)
    txn.raw.delete(key, db=txn.dbs.identities)
    txn.raw.delete(keys.seq_key(record["seq"]), db=txn.dbs.identity_order)
    _unlink_groups(txn, key, record["permission_ids"])
    return record


def iter_in_order(txn: Txn, skip: int = 0) -> Iterator[Dict[str, Any]]:
    """Every identity, oldest first (the order of getidentities, api/README.md section 9),
    after the first ``skip``: those are stepped over in the order index without reading
    their records, so a page deep in a large library costs its own records only."""
    for data in _records_in_order(txn, skip):
        yield codec.unpack(KIND, data)


def named_in_order(txn: Txn, needle: str) -> List[Dict[str, Any]]:
    """The identities whose lower-cased name contains ``needle`` (already lower-cased),
    oldest first: getidentities' name filter. Every record is looked at in key order (no
    lookup per identity) and those that cannot match are skipped without being decoded
    (name_filter.py says why that is exact); the matches are sorted into creation order."""
    name_filter = NameFilter(needle)
    matches = []
    cursor = txn.raw.cursor(db=txn.dbs.identities)
    for data in cursor.iternext(keys=False, values=True):
        if name_filter.may_match(data):
            record = codec.unpack(KIND, data)
            if name_filter.matches(record["identity_name"]):
                matches.append(record)
    matches.sort(key=lambda record: record["seq"])
    return matches


def _records_in_order(txn: Txn, skip: int = 0) -> Iterator[bytes]:
    """The packed identity records in creation order, after the first ``skip``."""
    cursor = txn.raw.cursor(db=txn.dbs.identity_order)
    if not cursor.first():
        return
    for _ in range(skip):
        if not cursor.next():
            return
    for key in cursor.iternext(keys=False, values=True):
        data = txn.raw.get(key, db=txn.dbs.identities)
        if data is None:
            # Both entries are always written and deleted together; a dangling one means
            # the file was edited outside the store, which is worth a loud failure.
            raise codec.StoreFormatError(f"identity_order points at a missing identity {key!r}")
        yield data


def iter_all(txn: Txn) -> Iterator[Dict[str, Any]]:
    """Every identity in key order (cheaper than creation order; for bulk loads)."""
    cursor = txn.raw.cursor(db=txn.dbs.identities)
    for data in cursor.iternext(keys=False, values=True):
        yield codec.unpack(KIND, data)


def count(txn: Txn) -> int:
    return txn.entries(txn.dbs.identities)


def iter_group_member_ids(txn: Txn, permission_id: str) -> Iterator[str]:
    """Ids of the identities in a group, in key order (not creation order)."""
    cursor = txn.raw.cursor(db=txn.dbs.group_members)
    if not cursor.set_key(keys.permission_key(permission_id)):
        return
    for identity_key in cursor.iternext_dup(keys=False, values=True):
        yield _identity_id_of(txn, identity_key)


def count_group_members(txn: Txn, permission_id: str) -> int:
    """Number of identities in a group (O(log n), no record is read)."""
    cursor = txn.raw.cursor(db=txn.dbs.group_members)
    if not cursor.set_key(keys.permission_key(permission_id)):
        return 0
    return int(cursor.count())


def iter_memberships(txn: Txn) -> Iterator[Tuple[str, str]]:
    """Every (identity_id, permission_id) pair, grouped by permission (for bulk loads)."""
    cursor = txn.raw.cursor(db=txn.dbs.group_members)
    permission_id = ""
    last_key = None
    for permission_key, identity_key in cursor.iternext(keys=True, values=True):
        if permission_key != last_key:
            permission_id = _permission_id_of(txn, permission_key)
            last_key = permission_key
        yield _identity_id_of(txn, identity_key), permission_id


def members_in_order(txn: Txn, permission_ids: Iterable[str]) -> List[Dict[str, Any]]:
    """The identities in at least one of the groups, oldest first, read through the
    ``group_members`` index: a group's listing costs its members, not the library."""
    cursor = txn.raw.cursor(db=txn.dbs.group_members)
    member_keys = set()
    for permission_id in set(permission_ids):
        if permission_id and cursor.set_key(keys.permission_key(permission_id)):  # "": none
            member_keys.update(cursor.iternext_dup(keys=False, values=True))
    records = []
    for key in member_keys:
        data = txn.raw.get(key, db=txn.dbs.identities)
        if data is None:
            raise codec.StoreFormatError(f"group_members points at a missing identity {key!r}")
        records.append(codec.unpack(KIND, data))
    records.sort(key=lambda record: record["seq"])
    return records


def iter_groups(txn: Txn) -> Iterator[Tuple[str, List[str]]]:
    """Every permission group that has members, with its member identity ids (bulk loads).

    One pass over ``group_members``, key by key: each permission key is decoded once, and
    the members' ids are read from their keys in one comprehension (a record is read only
    for the rare digest key).
    """
    cursor = txn.raw.cursor(db=txn.dbs.group_members)
    found = cursor.first()
    while found:
        permission_id = _permission_id_of(txn, cursor.key())
        member_keys = list(cursor.iternext_dup(keys=False, values=True))
        members = keys.client_strings_from_keys(member_keys)
        if None in members:
            members = [_identity_id_of(txn, key) if member is None else member
                       for key, member in zip(member_keys, members)]
        yield permission_id, members  # type: ignore[misc]
        found = cursor.next_nodup()


def _get_by_key(txn: Txn, key: bytes, identity_id: str) -> Optional[Dict[str, Any]]:
    data = txn.raw.get(key, db=txn.dbs.identities)
    if data is None:
        return None
    record = codec.unpack(KIND, data)
    # Long ids are keyed by a digest (keys.py); the stored id is the truth.
    if record["identity_id"] != identity_id:
        return None
    return record


def rebuild_group_index(txn: Txn) -> int:
    """Rebuild ``group_members`` from the identity records; returns the links written."""
    txn.raw.drop(txn.dbs.group_members, delete=False)
    links = 0
    cursor = txn.raw.cursor(db=txn.dbs.identities)
    for key, data in cursor.iternext(keys=True, values=True):
        permission_ids = codec.unpack(KIND, data)["permission_ids"]
        _link_groups(txn, key, permission_ids)
        links += len(permission_ids)
    return links


def _link_groups(txn: Txn, key: bytes, permission_ids: Iterable[str]) -> None:
    for permission_id in permission_ids:
        txn.raw.put(keys.permission_key(permission_id), key, db=txn.dbs.group_members)


def _unlink_groups(txn: Txn, key: bytes, permission_ids: Iterable[str]) -> None:
    for permission_id in permission_ids:
        txn.raw.delete(keys.permission_key(permission_id), key, db=txn.dbs.group_members)


def _client_id_of(txn: Txn, key: bytes, db: Any, kind: str, field: str) -> str:
    """The client id behind a ``group_members`` key. A digest key (a long non-ASCII id)
    does not spell the id, so it is read from the record the key addresses."""
    client_id = keys.client_string_from_key(key)
    if client_id is not None:
        return client_id
    data = txn.raw.get(key, db=db)
    if data is None:
        # Identities may only name existing groups (deletepermission unlinks its members).
        raise codec.StoreFormatError(f"group_members points at a missing {kind}")
    return codec.unpack(kind, data)[field]


def _identity_id_of(txn: Txn, identity_key: bytes) -> str:
    return _client_id_of(txn, identity_key, txn.dbs.identities, KIND, "identity_id")


def _permission_id_of(txn: Txn, permission_key: bytes) -> str:
    return _client_id_of(txn, permission_key, txn.dbs.permissions, "permission", "permission_id")


def _refuse_digest_collision(txn: Txn, key: bytes, identity_id: str) -> None:
    if txn.raw.get(key, db=txn.dbs.identities) is not None:
        raise RuntimeError(f"identity key collision for {identity_id!r}")


def _check_invariants(record: Mapping[str, Any]) -> None:
    """Refuse records that break api/identity.md section 1 before they reach the disk."""
    # Missing fields are reported by codec.pack; only relations between fields here.
    face_ids = record.get("face_ids", ())
    permission_ids = record.get("permission_ids", ())
    if len(face_ids) != len(record.get("register_image_ids", ())):
        raise ValueError("face_ids and register_image_ids must be parallel lists")
    if len(set(permission_ids)) != len(permission_ids):
        raise ValueError("permission_ids must not contain duplicates")
    if len(set(face_ids)) != len(face_ids):
        raise ValueError("face_ids must not contain duplicates")
