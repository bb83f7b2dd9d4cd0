"""The identity family (api/identity.md): persons, their faces and registration photos.

Every change is ONE store transaction: identity record, face records (features), photo
blobs and group links commit together or not at all, and the gallery follows after the
commit. State checks run twice: once before the (slow) face pipeline, so errors come in
the spec's order without wasting inference, and again inside the write transaction, so a
concurrent request can never slip between check and write.

Choices where the spec is silent:
- ``force_replace`` re-creates the identity: it moves to the end of the creation order,
  "as if deleted and created again" (identity.md 2).
- ``deleteidentities`` deletes all found ids in one transaction (all or nothing on a
  storage failure); it is allowed on a full disk, so an operator can free space.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import GroupLenError, IdNotFound, IdRepeatError, PermissionIdNotFound, invalid_argument
from ..pipeline.face_pipeline import FacePipeline
from ..pipeline.images import jpeg_for_storage, load_image
from ..pipeline.types import ImageInput
from ..store import faces, identities, images, permissions
from ..store.env import Store, Txn
from ..store.gallery import AddFace, GalleryChange, RemoveFace, RemoveIdentity, SetGroups
from ..workers.pool import WorkerPool
from .analysis import ImageAccess, image_input
from .paging import page_of, page_of_counted

IDENTITY_FIELDS = ("ext_user_info", "face_ids", "identity_id", "identity_name",
                   "permission_ids", "register_image_ids", "user_type")


def render_identity(record: Dict[str, Any]) -> Dict[str, Any]:
    """The identity object of identity.md 1 (no internal fields)."""
    return {key: record[key] for key in IDENTITY_FIELDS}


def new_id() -> str:
    return str(uuid.uuid4())


def _registration_job(pipeline: FacePipeline, source: ImageInput, access: ImageAccess,
                      level: str) -> Tuple[np.ndarray, bytes]:
    """On a worker: the photo's largest face, quality-checked, its feature and the JPEG."""
    image = load_image(source, access.limits, access.roots)
    analyzed = pipeline.analyze_largest(image, level, with_feature=True)
    assert analyzed.feature is not None
    return analyzed.feature, jpeg_for_storage(image)


def require_groups(txn: Txn, permission_ids: Iterable[str]) -> None:
    for permission_id in permission_ids:  # first unknown, in request order (R15)
        if not permissions.exists(txn, permission_id):
            raise PermissionIdNotFound(permission_id)


def _drop_faces(txn: Txn, record: Dict[str, Any]) -> None:
    """Delete an identity's face records and photos (the caller updates the identity)."""
    for face_id, image_id in zip(record["face_ids"], record["register_image_ids"]):
        faces.delete(txn, face_id)
        images.delete(txn, image_id)


def _face_index(record: Dict[str, Any], target: str, body: Dict[str, Any]) -> int:
    """Position of the addressed face in the identity's parallel lists."""
    if target == "register_image_index":
        index = body["register_image_index"]
        if index >= len(record["face_ids"]):
            raise invalid_argument("register_image_index", index)
        return index
    column = "register_image_ids" if target == "register_image_id" else "face_ids"
    try:
        return record[column].index(body[target])
    except ValueError:
        raise IdNotFound(body[target]) from None


class IdentityService:
    def __init__(self, store: Store, pool: WorkerPool, access: ImageAccess,
                 capacity: Callable[[], int]) -> None:
        self._store = store
        self._pool = pool
        self._access = access
        self._capacity = capacity

    # -- shared steps ---------------------------------------------------------------

    def _check_capacity(self, txn: Txn, adding: int, freeing: int = 0) -> None:
        if faces.count(txn) - freeing + adding > self._capacity():
            raise GroupLenError()

    async def _new_face(self, body: Dict[str, Any]) -> Tuple[np.ndarray, Optional[bytes]]:
        """The feature (and photo) of the request's registration source (R8 priority)."""
        source = body["source"]
        if source == "register_feature":
            return body["register_feature"], None  # R19: no photo behind its image id
        image = image_input(body, "source", "register_image", "register_image_path")
        return await self._pool.run(_registration_job, image, self._access, body["fiqa_level"])

    @staticmethod
    def _put_face(txn: Txn, identity_id: str, feature: np.ndarray,
                  jpeg: Optional[bytes]) -> Tuple[str, str, AddFace]:
        face_id, image_id = new_id(), new_id()
        record = faces.make_record(face_id, identity_id, image_id, feature)
        faces.put(txn, record)
        if jpeg is not None:
            images.put(txn, image_id, jpeg)
        return face_id, image_id, AddFace(face_id, identity_id, faces.feature(record))

    # -- createidentity -------------------------------------------------------------

    def _check_create(self, txn: Txn, identity_id: str, explicit_id: bool, force: bool,
                      permission_ids: Sequence[str]) -> Optional[Dict[str, Any]]:
        old = identities.get(txn, identity_id) if explicit_id else None
        if old is not None and not force:
            raise IdRepeatError(identity_id)
        require_groups(txn, permission_ids)
        self._check_capacity(txn, 1, len(old["face_ids"]) if old else 0)
        return old

    async def create(self, body: Dict[str, Any]) -> Dict[str, Any]:
        explicit_id = bool(body["identity_id"])  # absent, null or "" -> generated (R18)
        identity_id = body["identity_id"] if explicit_id else new_id()
        force, groups = body["force_replace"], body["permission_ids"]
        await self._store.read(self._check_create, identity_id, explicit_id, force, groups)
        feature, jpeg = await self._new_face(body)

        def write(txn: Txn) -> Tuple[Dict[str, Any], List[GalleryChange]]:
            old = self._check_create(txn, identity_id, explicit_id, force, groups)
            changes: List[GalleryChange] = []
            if old is not None:
                _drop_faces(txn, old)
                identities.delete(txn, identity_id)
                changes.append(RemoveIdentity(identity_id))
            face_id, image_id, add = self._put_face(txn, identity_id, feature, jpeg)
            identities.put(txn, {
                "identity_id": identity_id, "identity_name": body["identity_name"],
                "user_type": body["user_type"], "permission_ids": list(groups),
                "ext_user_info": body["ext_user_info"], "face_ids": [face_id],
                "register_image_ids": [image_id],
            })
            changes += [SetGroups(identity_id, tuple(groups)), add]
            return ({"face_id": face_id, "identity_id": identity_id,
                     "register_image_id": image_id}, changes)

        return await self._store.write(write)

    # -- reads ----------------------------------------------------------------------

    async def get(self, identity_id: str) -> Dict[str, Any]:
        record = await self._store.read(identities.require, identity_id)
        return render_identity(record)

    async def list(self, filters: Dict[str, Any], page_limit: int, page_index: int) -> Dict[str, Any]:
        groups = set(filters.get("permission_id_list") or ())  # [] = no restriction (3.4)
        name = filters.get("identity_name")
        needle = name.lower() if name is not None else None
        exact_id = filters.get("identity_id")

        def matches(record: Dict[str, Any]) -> bool:
            return ((not groups or not groups.isdisjoint(record["permission_ids"]))
                    and (needle is None or needle in record["identity_name"].lower())
                    and (exact_id is None or record["identity_id"] == exact_id))

        def scan(txn: Txn) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
            # Read as few records as the filters allow: a management platform pages
            # through the whole library, a door pad lists one group or one id.
            candidates: Iterable[Dict[str, Any]]
            if exact_id is not None:
                record = identities.get(txn, exact_id)
                candidates = [record] if record is not None else []
            elif groups:
                candidates = identities.members_in_order(txn, groups)
            elif needle is None:
                return page_of_counted(identities.count(txn),
                                       lambda skip: identities.iter_in_order(txn, skip),
                                       page_limit, page_index)
            else:
                candidates = identities.named_in_order(txn, needle)
            return page_of((r for r in candidates if matches(r)), page_limit, page_index)

        records, pagination = await self._store.read(scan)
        return {"identities": [render_identity(r) for r in records], "pagination": pagination}

    async def register_image(self, image_id: str) -> Optional[bytes]:
        return await self._store.read(images.get, image_id)

    # -- updateidentity / deleteidentities ------------------------------------------

    async def update(self, body: Dict[str, Any]) -> Dict[str, Any]:
        identity_id = body["identity_id"]

        def write(txn: Txn) -> Tuple[Dict[str, Any], List[GalleryChange]]:
            record = identities.require(txn, identity_id)
            changes: List[GalleryChange] = []
            if body["permission_ids"] is not None:
                require_groups(txn, body["permission_ids"])
                changes.append(SetGroups(identity_id, tuple(body["permission_ids"])))
            for key in ("identity_name", "user_type", "permission_ids", "ext_user_info"):
                if body[key] is not None:  # R17: present fields replace wholesale
                    record[key] = body[key]
            return render_identity(identities.put(txn, record)), changes

        return await self._store.write(write)

    async def delete_many(self, identity_ids: Sequence[str]) -> Dict[str, Any]:
        unique = list(dict.fromkeys(identity_ids))  # a repeated id is processed once (R60)

        def write(txn: Txn) -> Tuple[Dict[str, Any], List[GalleryChange]]:
            done: List[str] = []
            missing: List[str] = []
            changes: List[GalleryChange] = []
            for identity_id in unique:
                record = identities.get(txn, identity_id)
                if record is None:
                    missing.append(identity_id)
                    continue
                _drop_faces(txn, record)
                identities.delete(txn, identity_id)
                changes.append(RemoveIdentity(identity_id))
                done.append(identity_id)
            return {"failed_identity_ids": missing, "success_identity_ids": done}, changes

        return await self._store.write(write, check_free_space=False)

    # -- faces ----------------------------------------------------------------------

    @staticmethod
    def _faces_reply(record: Dict[str, Any]) -> Dict[str, Any]:
        return {"face_ids": record["face_ids"], "identity_id": record["identity_id"],
                "register_image_ids": record["register_image_ids"],
                "total_face_cnt": len(record["face_ids"])}

    def _check_add(self, txn: Txn, identity_id: str) -> Dict[str, Any]:
        record = identities.require(txn, identity_id)
        self._check_capacity(txn, 1)
        return record

    async def add_face(self, body: Dict[str, Any]) -> Dict[str, Any]:
        identity_id = body["identity_id"]
        await self._store.read(self._check_add, identity_id)
        feature, jpeg = await self._new_face(body)

        def write(txn: Txn) -> Tuple[Dict[str, Any], List[GalleryChange]]:
            record = self._check_add(txn, identity_id)
            face_id, image_id, add = self._put_face(txn, identity_id, feature, jpeg)
            record["face_ids"].append(face_id)
            record["register_image_ids"].append(image_id)
            return self._faces_reply(identities.put(txn, record)), [add]

        return await self._store.write(write)

    async def delete_face(self, body: Dict[str, Any]) -> Dict[str, Any]:
        identity_id = body["identity_id"]

        def write(txn: Txn) -> Tuple[Dict[str, Any], List[GalleryChange]]:
            record = identities.require(txn, identity_id)
            index = _face_index(record, body["target"], body)
            face_id = record["face_ids"].pop(index)
            image_id = record["register_image_ids"].pop(index)
            faces.delete(txn, face_id)
            images.delete(txn, image_id)
            return self._faces_reply(identities.put(txn, record)), [RemoveFace(face_id)]

        return await self._store.write(write, check_free_space=False)

    async def replace_face(self, body: Dict[str, Any]) -> Dict[str, Any]:
        """replaceface: the new face takes the replaced one's position, with new ids; the
        old feature and photo leave store and gallery in the same transaction."""
        identity_id, target = body["identity_id"], body["target"]

        def check(txn: Txn) -> None:
            _face_index(identities.require(txn, identity_id), target, body)

        await self._store.read(check)
        feature, jpeg = await self._new_face(body)

        def write(txn: Txn) -> Tuple[Dict[str, Any], List[GalleryChange]]:
            record = identities.require(txn, identity_id)
            index = _face_index(record, target, body)
            old_face, old_image = record["face_ids"][index], record["register_image_ids"][index]
            faces.delete(txn, old_face)
            images.delete(txn, old_image)
            face_id, image_id, add = self._put_face(txn, identity_id, feature, jpeg)
            record["face_ids"][index] = face_id
            record["register_image_ids"][index] = image_id
            return self._faces_reply(identities.put(txn, record)), [RemoveFace(old_face), add]

        return await self._store.write(write)
