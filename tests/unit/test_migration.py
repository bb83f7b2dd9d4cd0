"""Store layout 2 -> 3 (features packed in blocks): a store written the way the previous
release wrote it is migrated at open, keeps every identity, face, photo and search answer,
and a crash at any point of the migration leaves it readable and the migration re-runnable.

The layout-2 store is written by a frozen copy of the previous release's face writer (schema
1: the feature inline, long field names; its bytes are checked against a record the previous
release produced), with today's unchanged repositories for identities, groups and photos.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import lmdb
import msgpack
import numpy as np
import pytest

from sophon_face.store import (Gallery, Store, faces, identities, images, keys, meta,
                               migrations, permissions)
from sophon_face.store.env import DUPSORT_DBS, Databases, Txn

DIM = 512
GROUPS = ("g1", "g2", "g3")
#: The databases of layout 2 (before ``features`` and ``feature_free``).
LAYOUT_2_DBS = ("identities", "identity_order", "group_members", "faces", "images",
                "permissions", "permission_names", "permission_order", "devices", "preview",
                "events", "push_queue", "settings", "meta")
#: A face record as the previous release's ``codec.pack("face", faces.make_record(...))``
#: wrote it (face 0f1e..., identity person-1, image 1111..., feature [0, .25, .5, .75],
#: created at 1700000000.25).
PREVIOUS_RELEASE_RECORD = bytes.fromhex(
    "87a7666163655f6964d92430663165326433632d346235612d343937382d383639352d61346233633264"
    "3165306639ab6964656e746974795f6964a8706572736f6e2d31b172656769737465725f696d616765"
    "5f6964d92431313131313131312d323232322d343333332d383434342d353535353535353535353535"
    "a766656174757265c410000000000000803e0000003f0000403fa364696d04aa637265617465645f61"
    "74cb41d954fc40100000a17601")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def schema_1_face(face_id: str, identity_id: str, image_id: str, feature: np.ndarray,
                  created_at: float) -> bytes:
    """The previous release's face record, frozen: codec.pack of faces.make_record."""
    return msgpack.packb({
        "face_id": face_id, "identity_id": identity_id, "register_image_id": image_id,
        "feature": np.ascontiguousarray(feature, dtype="<f4").tobytes(),
        "dim": int(feature.size), "created_at": created_at, "v": 1,
    }, use_bin_type=True, unicode_errors="surrogatepass")


def test_the_frozen_writer_writes_what_the_previous_release_wrote():
    assert schema_1_face("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9", "person-1",
                         "11111111-2222-4333-8444-555555555555",
                         np.arange(4, dtype=np.float32) / 4, 1700000000.25) \
        == PREVIOUS_RELEASE_RECORD


def write_layout_2_store(data_dir: Path, rng: np.random.Generator, people: int = 120,
                         layout: int = 2) -> None:
    """A store as the previous release left it: identities in groups, 0-3 faces each
    (features inline), photos, the layout stamp."""
    env = lmdb.open(str(data_dir / "lmdb"), max_dbs=len(LAYOUT_2_DBS), map_size=1 << 28)
    try:
        with env.begin(write=True) as raw:
            handles = {name: env.open_db(name.encode(), txn=raw, create=True,
                                         dupsort=name in DUPSORT_DBS) for name in LAYOUT_2_DBS}
            txn = Txn(raw, Databases(features=None, feature_free=None, **handles), True)
            for group in GROUPS:
                permissions.put(txn, {"permission_id": group, "permission_name": f"name {group}",
                                      "description": ""})
            for i in range(people):
                face_ids, image_ids = [], []
                for _ in range(int(rng.integers(0, 4))):
                    face_id, image_id = str(uuid.uuid4()), str(uuid.uuid4())
                    feature = rng.standard_normal(DIM).astype(np.float32)  # not normalised
                    raw.put(keys.face_key(face_id), schema_1_face(
                        face_id, f"p{i}", image_id, feature, 1.7e9 + i), db=txn.dbs.faces)
                    images.put(txn, image_id, b"\xff\xd8" + os.urandom(64))
                    face_ids.append(face_id)
                    image_ids.append(image_id)
                identities.put(txn, {
                    "identity_id": f"p{i}", "identity_name": f"person {i}",
                    "user_type": "employee",
                    "permission_ids": [g for g in GROUPS if rng.random() < 0.4],
                    "ext_user_info": {"n": i}, "face_ids": face_ids,
                    "register_image_ids": image_ids})
            if layout < 2:
                raw.drop(txn.dbs.group_members, delete=False)
            raw.put(keys.meta_key("layout_version"), struct.pack(">Q", layout), db=txn.dbs.meta)
    finally:
        env.close()


class Contents:
    """Everything a client can see of a store, read in one transaction."""

    def __init__(self, txn: Txn) -> None:
        self.identities = {r["identity_id"]: r for r in identities.iter_all(txn)}
        self.order = [r["identity_id"] for r in identities.iter_in_order(txn)]
        self.faces = {r["face_id"]: r for r in faces.iter_all(txn)}
        self.images = {keys.uuid_from_key(k): bytes(v)
                       for k, v in txn.raw.cursor(db=txn.dbs.images).iternext()}
        self.memberships = sorted(identities.iter_memberships(txn))
        self.groups = [r["permission_id"] for r in permissions.iter_in_order(txn)]

    def expected_best(self, probe: np.ndarray, group: Optional[str]) -> Tuple[str, str]:
        """Brute force over the stored features: (face id, identity id)."""
        scope = [f for f, r in self.faces.items()
                 if group is None or group in self.identities[r["identity_id"]]["permission_ids"]]
        rows = np.stack([faces.feature(self.faces[f]) for f in scope]).astype(np.float64)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        best = scope[int(np.argmax(rows @ probe))]
        return best, self.faces[best]["identity_id"]


def read_old_store(data_dir: Path) -> Contents:
    """The store read directly (no Store, no migration): this release reads schema 1 too."""
    env = lmdb.open(str(data_dir / "lmdb"), max_dbs=len(LAYOUT_2_DBS), readonly=True)
    try:
        with env.begin() as raw:
            handles = {name: env.open_db(name.encode(), txn=raw, create=False,
                                         dupsort=name in DUPSORT_DBS) for name in LAYOUT_2_DBS}
            return Contents(Txn(raw, Databases(features=None, feature_free=None, **handles),
                                False))
    finally:
        env.close()


def open_and_search(data_dir: Path, probes: np.ndarray) -> Tuple[Contents, List[Any], int, Any]:
    async def scenario():
        store = Store(data_dir, gallery=Gallery(DIM))
        await store.open()
        try:
            contents = await store.read(Contents)
            answers = await store.read(lambda t: [
                store.gallery.search(p, g, t) for p in probes for g in (None,) + GROUPS])
            layout = await store.read(meta.layout_version)
            slots = await store.read(lambda t: [faces.decode(v).slot for v in
                                                t.raw.cursor(db=t.dbs.faces).iternext(keys=False)])
            return contents, answers, layout, slots
        finally:
            await store.close()

    return run(scenario())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_migrated(data_dir: Path, before: Contents, probes: np.ndarray) -> None:
    after, answers, layout, slots = open_and_search(data_dir, probes)
    assert layout == meta.LAYOUT_VERSION == 3
    assert all(slot is not None for slot in slots) and len(slots) == len(before.faces)
    assert after.identities == before.identities and after.order == before.order
    assert after.faces == before.faces  # ids, identity, photo id, feature bytes, dim, time
    assert after.images == before.images
    assert after.memberships == before.memberships and after.groups == before.groups
    cases = [(p, g) for p in probes for g in (None,) + GROUPS]
    for (probe, group), match in zip(cases, answers):
        if not any(group is None or group in before.identities[r["identity_id"]]["permission_ids"]
                   for r in before.faces.values()):
            assert match is None
            continue
        assert (match.face_id, match.identity_id) == before.expected_best(probe, group)
    assert not (data_dir / "lmdb" / migrations.MIGRATING_FILE).exists()


def unit_probes(rng: np.random.Generator, before: Contents, count: int = 12) -> np.ndarray:
    """Half near a stored face, half random."""
    stored = [faces.feature(r) for r in before.faces.values()]
    probes = rng.standard_normal((count, DIM)).astype(np.float32)
    for i in range(0, count, 2):
        probes[i] = stored[i % len(stored)] / np.linalg.norm(stored[i % len(stored)]) \
            + 0.02 * probes[i]
    return probes / np.linalg.norm(probes, axis=1, keepdims=True)


def test_a_layout_2_store_is_migrated_at_open_and_keeps_everything(tmp_path):
    rng = np.random.default_rng(1)
    write_layout_2_store(tmp_path, rng)
    before = read_old_store(tmp_path)
    assert len(before.faces) > 100 and all(len(r["feature"]) == DIM * 4
                                            for r in before.faces.values())
    size_before = (tmp_path / "lmdb" / "data.mdb").stat().st_size
    check_migrated(tmp_path, before, unit_probes(rng, before))
    # 4 KB per face before; now about the feature's 2 KB.
    assert (tmp_path / "lmdb" / "data.mdb").stat().st_size < size_before * 0.75
    # Opening again is a no-op (the layout is current).
    check_migrated(tmp_path, before, unit_probes(rng, before))


def test_a_layout_1_store_also_gets_its_group_index(tmp_path):
    rng = np.random.default_rng(2)
    write_layout_2_store(tmp_path, rng, people=40, layout=1)
    before = read_old_store(tmp_path)
    assert before.memberships == []  # layout 1 had no membership index
    after, _, layout, _ = open_and_search(tmp_path, unit_probes(rng, before, 2))
    assert layout == 3 and after.faces == before.faces
    assert after.memberships == sorted((i, g) for i, r in before.identities.items()
                                       for g in r["permission_ids"])


class Crash(Exception):
    pass


@pytest.mark.parametrize("where", ["copying faces", "before the swap"])
def test_a_crash_mid_migration_leaves_the_old_store_readable_and_rerunnable(
        tmp_path, monkeypatch, where):
    rng = np.random.default_rng(3)
    write_layout_2_store(tmp_path, rng)
    before = read_old_store(tmp_path)
    data_file = tmp_path / "lmdb" / "data.mdb"
    old_digest = digest(data_file)
    monkeypatch.setattr(migrations, "COPY_BATCH_RECORDS", 16)  # several transactions
    if where == "copying faces":
        added = {"n": 0}
        real_add = faces.FaceCopier.add

        def add_then_crash(self, txn, key, record):
            added["n"] += 1
            if added["n"] == 70:
                raise Crash()
            real_add(self, txn, key, record)

        monkeypatch.setattr(faces.FaceCopier, "add", add_then_crash)
        crashing = migrations.upgrade_layout
    else:
        real_upgrade = migrations.upgrade_layout

        def crashing(path: str) -> bool:
            def crash() -> None:
                raise Crash()
            return real_upgrade(path, before_swap=crash)
    monkeypatch.setattr(migrations, "upgrade_layout", crashing)
    with pytest.raises(Crash):
        run(Store(tmp_path, gallery=Gallery(DIM)).open())
    monkeypatch.undo()
    # The old file is untouched and reads as before; the partial new file is still there.
    assert digest(data_file) == old_digest
    assert (tmp_path / "lmdb" / migrations.MIGRATING_FILE).exists()
    again = read_old_store(tmp_path)
    assert again.faces == before.faces and again.identities == before.identities
    # The next open removes the partial file and migrates from the start.
    check_migrated(tmp_path, before, unit_probes(rng, before))


def test_not_enough_free_disk_refuses_and_leaves_the_store_unchanged(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    write_layout_2_store(tmp_path, rng, people=30)
    data_file = tmp_path / "lmdb" / "data.mdb"
    old_digest = digest(data_file)
    usage = migrations.shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(migrations.shutil, "disk_usage",
                        lambda path: usage._replace(free=1024 * 1024))
    with pytest.raises(migrations.MigrationError, match="MiB free"):
        run(Store(tmp_path, gallery=Gallery(DIM)).open())
    assert digest(data_file) == old_digest
    assert not (tmp_path / "lmdb" / migrations.MIGRATING_FILE).exists()


def test_a_new_store_and_a_current_one_are_not_rebuilt(tmp_path, monkeypatch):
    rebuilt: List[str] = []
    real = migrations._rebuild
    monkeypatch.setattr(migrations, "_rebuild", lambda *a: rebuilt.append("x") or real(*a))

    async def scenario() -> Dict[str, Any]:
        for _ in range(2):
            store = Store(tmp_path, gallery=Gallery(DIM))
            await store.open()
            record = faces.make_record(str(uuid.uuid4()), "p", str(uuid.uuid4()),
                                       np.ones(DIM, np.float32))
            await store.write(lambda t: (faces.put(t, record), None))
            await store.close()
        return {}

    run(scenario())
    assert rebuilt == []
