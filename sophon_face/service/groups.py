"""Permission groups (api/permission.md).

Deleting a group unbinds it from every identity and device in the same transaction (and from
the gallery's group index after the commit).
Names are unique by exact string equality; the id wins over the name when both address
a group (R49).
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, List, Optional, Tuple

from ..errors import IdRepeatError, NameRepeatError
from ..store import devices, identities, permissions
from ..store.env import Store, Txn
from ..store.gallery import GalleryChange, RemoveGroup
from .paging import page_of

GROUP_FIELDS = ("description", "permission_id", "permission_name")


def render_group(record: Dict[str, Any]) -> Dict[str, Any]:
    return {key: record[key] for key in GROUP_FIELDS}


def _short_id(txn: Txn) -> str:
    """8 lower-case hex chars, regenerated on collision (README 7)."""
    while True:
        candidate = uuid.uuid4().hex[:8]
        if not permissions.exists(txn, candidate):
            return candidate


def _addressed(txn: Txn, body: Dict[str, Any]) -> Dict[str, Any]:
    """The group named by ``permission_id`` or ``permission_name``; ID_NOT_FOUND carries
    the value used for the lookup."""
    if body["address"] == "permission_id":
        return permissions.require_by_id(txn, body["permission_id"])
    return permissions.require_by_name(txn, body["permission_name"])


class GroupService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, body: Dict[str, Any]) -> Dict[str, Any]:
        def write(txn: Txn) -> Tuple[Dict[str, Any], List[GalleryChange]]:
            permission_id: Optional[str] = body["permission_id"] or None  # "" -> generate (R18)
            if permission_id is not None and permissions.exists(txn, permission_id):
                raise IdRepeatError(permission_id)
            if permissions.get_by_name(txn, body["permission_name"]) is not None:
                raise NameRepeatError(body["permission_name"])
            record = permissions.put(txn, {
                "permission_id": permission_id or _short_id(txn),
                "permission_name": body["permission_name"],
                "description": body["description"],
            })
            return render_group(record), []

        return await self._store.write(write)

    async def get(self, body: Dict[str, Any]) -> Dict[str, Any]:
        return render_group(await self._store.read(_addressed, body))

    async def list(self, name_filter: Optional[str], page_limit: int,
                   page_index: int) -> Dict[str, Any]:
        needle = name_filter.lower() if name_filter is not None else None

        def scan(txn: Txn) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
            return page_of((render_group(r) for r in permissions.iter_in_order(txn)
                            if needle is None or needle in r["permission_name"].lower()),
                           page_limit, page_index)

        items, pagination = await self._store.read(scan)
        return {"pagination": pagination, "permissions": items}

    async def update(self, body: Dict[str, Any]) -> Dict[str, Any]:
        def write(txn: Txn) -> Tuple[Dict[str, Any], List[GalleryChange]]:
            record = _addressed(txn, body)
            new_name = body["new_name"]
            if new_name is not None:
                owner = permissions.get_by_name(txn, new_name)
                if owner is not None and owner["permission_id"] != record["permission_id"]:
                    raise NameRepeatError(new_name)
                record["permission_name"] = new_name
            if body["new_description"] is not None:
                record["description"] = body["new_description"]
            return render_group(permissions.put(txn, record)), []

        return await self._store.write(write)

    async def delete(self, body: Dict[str, Any]) -> Dict[str, Any]:
        def write(txn: Txn) -> Tuple[Dict[str, Any], List[GalleryChange]]:
            record = _addressed(txn, body)
            permission_id = record["permission_id"]
            # Only the members are touched (the store keeps a group -> members index).
            for identity_id in list(identities.iter_group_member_ids(txn, permission_id)):
                identity = identities.require(txn, identity_id)
                identity["permission_ids"] = [p for p in identity["permission_ids"]
                                              if p != permission_id]
                identities.put(txn, identity)
            devices.unbind_group(txn, permission_id)
            permissions.delete(txn, permission_id)
            return {"permission_id": permission_id}, [RemoveGroup(permission_id)]

        return await self._store.write(write, check_free_space=False)
