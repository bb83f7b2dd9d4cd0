"""The LMDB store against a real environment in tmp_path: codec, keys, repositories,
transactions, map growth, full disk, persistence."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import threading
import uuid
from collections import namedtuple
from typing import Any, Dict, List

import lmdb
import msgpack
import numpy as np
import pytest

from sophon_face.errors import GroupLenError, IdNotFound, InsufficientSpaceLeft, NameRepeatError
from sophon_face.store import (
    AddFace, Gallery, SetGroups, Store, StoreClosed, codec, faces, feature_blocks, identities,
    images, keys, meta, permissions,
)

DIM = 8


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def unit(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def identity_record(identity_id: str, **fields: Any) -> Dict[str, Any]:
    record = {
        "identity_id": identity_id, "identity_name": "小王", "user_type": "employee",
        "permission_ids": [], "ext_user_info": {}, "face_ids": [], "register_image_ids": [],
    }
    record.update(fields)
    return record


def create_identity(txn, identity_id: str, feature: np.ndarray, image: bytes = b"\xff\xd8jpeg",
                    permission_ids: List[str] = ()):
    """A createidentity-shaped write function: identity + face + image, one transaction."""
    face_id, image_id = str(uuid.uuid4()), str(uuid.uuid4())
    identities.put(txn, identity_record(
        identity_id, permission_ids=list(permission_ids), face_ids=[face_id],
        register_image_ids=[image_id]))
    faces.put(txn, faces.make_record(face_id, identity_id, image_id, feature))
    images.put(txn, image_id, image)
    return face_id, [AddFace(face_id, identity_id, feature),
                     SetGroups(identity_id, tuple(permission_ids))]


def snapshot_counts(txn):
    return identities.count(txn), faces.count(txn), permissions.count(txn), \
        txn.entries(txn.dbs.images), txn.entries(txn.dbs.meta)


# ---------------------------------------------------------------------------- codec

def test_codec_round_trip_keeps_every_json_value():
    record = identity_record(
        "id-1", ext_user_info={"mobile": "13800000000", "n": 3, "f": 1.5, "b": True,
                               "none": None, "list": [1, "二", {"x": []}]},
        permission_ids=["g1", "g2"], seq=7, created_at=1628066406.608026)
    data = codec.pack("identity", record)
    assert codec.unpack("identity", data) == record
    assert msgpack.unpackb(data)["v"] == 1


def test_codec_refuses_newer_schema_version_clearly():
    data = msgpack.packb({"v": 2, "identity_id": "x"}, use_bin_type=True)
    with pytest.raises(codec.StoreFormatError, match="schema version 2, newer"):
        codec.unpack("identity", data)


@pytest.mark.parametrize("data", [
    msgpack.packb({"identity_id": "x"}),  # no version
    msgpack.packb([1, 2]),  # not a map
    b"\xc1",  # never-used msgpack byte
])
def test_codec_refuses_unreadable_records(data):
    with pytest.raises(codec.StoreFormatError):
        codec.unpack("identity", data)


def test_codec_refuses_incomplete_records_and_unknown_kinds():
    with pytest.raises(ValueError, match="lacks"):
        codec.pack("face", {"face_id": "x"})
    with pytest.raises(ValueError, match="unknown record kind"):
        codec.pack("nope", {})


def test_codec_never_pickles():
    with pytest.raises(TypeError):
        codec.pack("setting", {"value": object()})


def test_feature_bytes_are_little_endian_float32():
    feature = np.array([1.0, -2.5, 0.125], dtype=np.float64)
    data = codec.feature_to_bytes(feature)
    assert data == struct.pack("<3f", 1.0, -2.5, 0.125)
    back = codec.feature_from_bytes(data)
    assert back.dtype == np.float32 and back.tolist() == [1.0, -2.5, 0.125]
    with pytest.raises(codec.StoreFormatError):
        codec.feature_from_bytes(b"abc")
    with pytest.raises(ValueError):
        codec.feature_to_bytes(np.zeros((2, 2)))


def test_lone_surrogates_survive_the_codec():
    record = {"value": "a\ud800b"}
    assert codec.unpack("setting", codec.pack("setting", record)) == record


# ---------------------------------------------------------------------------- keys

def test_client_keys_inline_ascii_and_digest_long_utf8():
    ascii_id = "x" * 128
    assert keys.identity_key(ascii_id) == b"\x00" + ascii_id.encode()
    long_ids = ["𝄞" * 128, "王" * 128, "王" * 100 + "a", "王" * 100 + "b"]
    long_keys = [keys.identity_key(i) for i in long_ids]
    assert len(set(long_keys)) == len(long_ids)
    for key in long_keys:
        assert key[:1] == b"\x01" and len(key) == 33
    assert keys.identity_key("王" * 84) == b"\x00" + ("王" * 84).encode()  # 252 bytes inline
    assert max(len(keys.identity_key(i)) for i in [ascii_id, *long_ids]) <= 255
    # A digest form can never equal an inline form, whatever the inline bytes are.
    assert keys.identity_key("\x01" + "a" * 32) != keys.identity_key("王" * 128)
    with pytest.raises(ValueError):
        keys.identity_key("")


def test_uuid_keys_accept_only_the_canonical_form():
    face_id = str(uuid.uuid4())
    key = keys.face_key(face_id)
    assert len(key) == 16 and keys.uuid_from_key(key) == face_id
    for other in (face_id.upper(), face_id.replace("-", ""), "{%s}" % face_id, "abc", ""):
        with pytest.raises(ValueError):
            keys.face_key(other)


def test_seq_keys_sort_numerically():
    values = [1, 2, 255, 256, 70000, 2 ** 40]
    assert sorted(values, key=keys.seq_key) == values
    assert [keys.seq_from_key(keys.seq_key(v)) for v in values] == values


# ---------------------------------------------------------------------------- repositories

@pytest.fixture
def store_factory(tmp_path):
    opened: List[Store] = []

    def make(**options: Any) -> Store:
        options.setdefault("gallery", Gallery(DIM))
        store = Store(tmp_path / "data", **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        if store.is_open:
            run(store.close())


def test_identity_round_trip_with_long_utf8_id_and_creation_order(store_factory):
    long_id = "身份" * 64  # 128 chars, 384 bytes in UTF-8: digest-keyed
    ids = ["b", long_id, "a", "𝄞" * 128]

    async def scenario():
        store = store_factory()
        await store.open()
        for identity_id in ids:
            await store.write(lambda txn, i=identity_id: (identities.put(txn, identity_record(i)), None))
        got = await store.read(identities.require, long_id)
        order = await store.read(lambda txn: [r["identity_id"] for r in identities.iter_in_order(txn)])
        # An update keeps the position and the creation time.
        first = await store.read(identities.require, "b")
        await store.write(lambda txn: (identities.put(txn, identity_record("b", identity_name="new")), None))
        updated = await store.read(identities.require, "b")
        # Delete + put (force_replace) moves it to the end.
        await store.write(lambda txn: (identities.delete(txn, "b"), None))
        await store.write(lambda txn: (identities.put(txn, identity_record("b")), None))
        order_after = await store.read(lambda txn: [r["identity_id"] for r in identities.iter_in_order(txn)])
        count = await store.read(identities.count)
        with pytest.raises(IdNotFound) as missing:
            await store.read(identities.require, "nobody")
        none_for_empty = await store.read(identities.get, "")
        await store.close()
        return got, order, first, updated, order_after, count, missing.value, none_for_empty

    got, order, first, updated, order_after, count, missing, none_for_empty = run(scenario())
    assert got["identity_id"] == long_id and got["identity_name"] == "小王"
    assert order == ids
    assert updated["identity_name"] == "new"
    assert (updated["seq"], updated["created_at"]) == (first["seq"], first["created_at"])
    assert order_after == ids[1:] + ["b"]
    assert count == 4
    assert missing.message == "nobody"
    assert none_for_empty is None


def test_identity_invariants_are_enforced_before_writing(store_factory):
    async def scenario():
        store = store_factory()
        await store.open()
        bad = [
            identity_record("x", face_ids=["f"], register_image_ids=[]),
            identity_record("x", permission_ids=["g", "g"]),
        ]
        for record in bad:
            with pytest.raises(ValueError):
                await store.write(lambda txn, r=record: (identities.put(txn, r), None))
        return await store.read(identities.count)

    assert run(scenario()) == 0


def test_group_membership_index_follows_puts_and_deletes(store_factory):
    long_group = "组" * 128  # digest-keyed
    long_person = "人" * 128

    def setup(txn):
        permissions.put(txn, {"permission_id": long_group, "permission_name": "long",
                              "description": ""})
        identities.put(txn, identity_record("a", permission_ids=["g1", long_group]))
        identities.put(txn, identity_record(long_person, permission_ids=[long_group]))
        identities.put(txn, identity_record("c", permission_ids=["g1"]))
        return None, None

    def members(txn):
        return ({g: sorted(identities.iter_group_member_ids(txn, g))
                 for g in ("g1", long_group, "none")},
                {g: identities.count_group_members(txn, g) for g in ("g1", long_group, "none")},
                sorted(identities.iter_memberships(txn)),
                {g: sorted(ids) for g, ids in identities.iter_groups(txn)})

    async def scenario():
        store = store_factory()
        await store.open()
        await store.write(setup)
        first = await store.read(members)
        await store.write(lambda t: (identities.put(
            t, identity_record("a", permission_ids=[long_group, "g2"])), None))
        await store.write(lambda t: (identities.delete(t, long_person), None))
        second = await store.read(members)
        return first, second

    first, second = run(scenario())
    assert first[0] == {"g1": ["a", "c"], long_group: sorted(["a", long_person]), "none": []}
    assert first[1] == {"g1": 2, long_group: 2, "none": 0}
    assert first[2] == sorted([("a", "g1"), ("a", long_group), (long_person, long_group),
                               ("c", "g1")])
    assert first[3] == {"g1": ["a", "c"], long_group: sorted(["a", long_person])}
    assert second[0] == {"g1": ["c"], long_group: ["a"], "none": []}
    assert second[2] == sorted([("a", long_group), ("a", "g2"), ("c", "g1")])
    assert second[3] == {"g1": ["c"], "g2": ["a"], long_group: ["a"]}


def test_permissions_name_index_follows_renames_and_deletes(store_factory):
    def create(txn, pid, name):
        return permissions.put(txn, {"permission_id": pid, "permission_name": name,
                                     "description": ""}), None

    async def scenario():
        store = store_factory()
        await store.open()
        await store.write(create, "270ec5e6", "测试组")
        await store.write(create, "g2", "second")
        with pytest.raises(NameRepeatError):
            await store.write(create, "g3", "测试组")
        await store.write(create, "270ec5e6", "renamed")  # rename
        by_old = await store.read(permissions.get_by_name, "测试组")
        by_new = await store.read(permissions.get_by_name, "renamed")
        await store.write(create, "g3", "测试组")  # the old name is free again
        order = await store.read(lambda t: [r["permission_id"] for r in permissions.iter_in_order(t)])
        removed = await store.write(lambda t: (permissions.delete(t, "g2"), None))
        after = await store.read(permissions.get_by_name, "second")
        with pytest.raises(IdNotFound) as missing:
            await store.read(permissions.require_by_name, "second")
        count = await store.read(permissions.count)
        names = await store.read(lambda t: t.entries(t.dbs.permission_names))
        return by_old, by_new, order, removed, after, missing.value, count, names

    by_old, by_new, order, removed, after, missing, count, names = run(scenario())
    assert by_old is None and by_new["permission_id"] == "270ec5e6"
    assert order == ["270ec5e6", "g2", "g3"]
    assert removed["permission_name"] == "second" and after is None
    assert missing.message == "second"
    assert count == names == 2


def test_faces_and_images_repositories(store_factory):
    rng = np.random.default_rng(0)

    async def scenario():
        store = store_factory()
        await store.open()
        face_id = await store.write(create_identity, "p1", unit(rng), b"JPEGDATA")
        record = await store.read(faces.get, face_id)
        image_id = record["register_image_id"]
        image = await store.read(images.get, image_id)
        exists = await store.read(images.exists, image_id)
        odd = await store.read(faces.get, face_id.upper())
        await store.write(lambda t: (faces.delete(t, face_id), None))
        counts = await store.read(lambda t: (faces.count(t), images.exists(t, "x")))
        return record, image, exists, odd, counts

    record, image, exists, odd, counts = run(scenario())
    assert record["dim"] == DIM and len(record["feature"]) == DIM * 4
    assert faces.feature(record).shape == (DIM,)
    assert image == b"JPEGDATA" and exists is True and odd is None
    assert counts == (0, False)


def test_features_live_in_blocks_beside_small_records(store_factory):
    """Layout 3: slots fill blocks in order, a deleted face's row is zeroed and its slot is
    reused first, an overwritten face keeps its slot, each block's owners follow its rows
    (face key and identity per row, None when free) within the block's 32 pages, and no
    record needs an overflow page (a 512-d feature inline used to take a 4 KB page per
    face)."""
    dim = 512
    per_block = feature_blocks.rows_per_block(dim)
    rng = np.random.default_rng(21)
    count = per_block + 5  # spills into a second block
    records = [faces.make_record(str(uuid.uuid4()), f"p{i}", str(uuid.uuid4()),
                                 unit(rng, dim), created_at=1.5 + i) for i in range(count)]

    def slot_of(txn, face_id):
        return faces.decode(txn.raw.get(keys.face_key(face_id), db=txn.dbs.faces)).slot

    def row_of(txn, slot):
        block = txn.raw.get(keys.feature_block_key(dim, slot // per_block), db=txn.dbs.features)
        return np.frombuffer(block, "<f4", count=per_block * dim).reshape(
            per_block, dim)[slot % per_block]

    def owner_of(txn, slot):
        block = txn.raw.get(keys.feature_block_key(dim, slot // per_block), db=txn.dbs.features)
        face_keys, identity_ids = msgpack.unpackb(block[feature_blocks.block_bytes(dim):])
        return face_keys[slot % per_block], identity_ids[slot % per_block]

    async def scenario():
        store = store_factory(gallery=Gallery(dim))
        await store.open()
        await store.write(lambda t: (faces.put_many(t, records[:10]), None))
        for record in records[10:]:
            await store.write(lambda t, r=record: (faces.put(t, r), None))
        slots = await store.read(lambda t: [slot_of(t, r["face_id"]) for r in records])
        stats = await store.read(lambda t: (t.raw.stat(t.dbs.faces), t.raw.stat(t.dbs.features),
                                            feature_blocks.next_slot(t, dim)))
        victim = records[3]
        await store.write(lambda t: (faces.delete(t, victim["face_id"]), None))
        zeroed = await store.read(lambda t: (row_of(t, slots[3]).copy(), owner_of(t, slots[3]),
                                             owner_of(t, slots[4])))
        newcomer = faces.make_record(str(uuid.uuid4()), "q", str(uuid.uuid4()), unit(rng, dim))
        await store.write(lambda t: (faces.put(t, newcomer), None))
        changed = dict(records[5], feature=unit(rng, dim).astype("<f4").tobytes())
        await store.write(lambda t: (faces.put(t, changed), None))
        after = await store.read(lambda t: (slot_of(t, newcomer["face_id"]),
                                            slot_of(t, changed["face_id"]),
                                            faces.get(t, changed["face_id"]),
                                            faces.get(t, records[-1]["face_id"]),
                                            t.entries(t.dbs.feature_free),
                                            owner_of(t, slots[3])))
        return slots, stats, zeroed, after, changed, newcomer

    slots, (face_stat, block_stat, next_slot), zeroed, after, changed, newcomer = run(scenario())
    assert slots == list(range(count)) and next_slot == count
    assert face_stat["overflow_pages"] == 0 and block_stat["entries"] == 2
    assert per_block == 62
    assert block_stat["overflow_pages"] == 2 * (128 * 1024 // 4096)
    zeroed, freed_owner, kept_owner = zeroed
    assert not zeroed.any()  # the deleted feature is gone from the live data
    assert freed_owner == (None, None)
    assert kept_owner == (keys.face_key(records[4]["face_id"]), "p4")
    new_slot, changed_slot, changed_record, last_record, free, new_owner = after
    assert new_owner == (keys.face_key(newcomer["face_id"]), "q")
    assert new_slot == slots[3] and changed_slot == slots[5] and free == 0
    assert changed_record["feature"] == changed["feature"] != records[5]["feature"]
    assert changed_record["identity_id"] == "p5" and changed_record["created_at"] == 6.5
    assert last_record == records[-1]  # every field round-trips


def test_capacity_check_counts_inside_the_transaction(store_factory):
    rng = np.random.default_rng(11)

    def create_within(txn, identity_id, capacity):
        faces.check_capacity(txn, capacity)
        return create_identity(txn, identity_id, unit(rng))

    async def scenario():
        store = store_factory()
        await store.open()
        results = await asyncio.gather(
            *(store.write(create_within, f"p{i}", 3) for i in range(5)), return_exceptions=True)
        replace_ok = await store.read(
            lambda t: faces.check_capacity(t, 3, adding=1, removing=1))
        return results, await store.read(faces.count), replace_ok

    results, count, replace_ok = run(scenario())
    assert [isinstance(r, GroupLenError) for r in results] == [False] * 3 + [True] * 2
    assert count == 3 and replace_ok is None


# ---------------------------------------------------------------------------- transactions

def test_a_failed_write_leaves_store_and_gallery_untouched(store_factory):
    rng = np.random.default_rng(1)

    def half_then_fail(txn):
        create_identity(txn, "ghost", unit(rng))
        permissions.put(txn, {"permission_id": "g", "permission_name": "n", "description": ""})
        raise IdNotFound("boom")

    async def scenario():
        store = store_factory()
        await store.open()
        await store.write(create_identity, "real", unit(rng))
        before = await store.read(snapshot_counts)
        gallery_before = await store.read(store.gallery.snapshot)
        with pytest.raises(IdNotFound):
            await store.write(half_then_fail)
        with pytest.raises(TypeError, match="must return"):
            await store.write(lambda txn: identities.put(txn, identity_record("bad-shape")))
        after = await store.read(snapshot_counts)
        missing = await store.read(lambda t: (identities.get(t, "ghost"),
                                              identities.get(t, "bad-shape")))
        # The sequence counter did not move either: the next identity gets seq 2.
        await store.write(lambda t: (identities.put(t, identity_record("next")), None))
        nxt = await store.read(identities.require, "next")
        gallery_after = await store.read(store.gallery.snapshot)
        return before, after, missing, gallery_before, gallery_after, nxt

    before, after, missing, gallery_before, gallery_after, nxt = run(scenario())
    assert before == after and missing == (None, None)
    assert gallery_before.face_ids == gallery_after.face_ids
    assert np.array_equal(gallery_before.matrix, gallery_after.matrix)
    assert nxt["seq"] == 2


def test_face_is_searchable_as_soon_as_the_write_returns(store_factory):
    rng = np.random.default_rng(2)
    feature = unit(rng)

    async def scenario():
        store = store_factory()
        await store.open()
        face_id = await store.write(create_identity, "p", feature, b"jpeg", ["g"])
        # The next read already finds it (its exact feature is read in that transaction).
        hit = await store.read(store.gallery.search_in, feature, None)
        return face_id, hit, await store.read(store.gallery.search_in, feature, "g")

    face_id, hit, group_hit = run(scenario())
    assert hit.face_id == face_id and hit.identity_id == "p" and hit.score == pytest.approx(1)
    assert group_hit == hit


def test_a_gallery_failure_after_commit_rebuilds_from_lmdb(store_factory):
    rng = np.random.default_rng(3)

    def create_with_bad_change(txn):
        face_id, _ = create_identity(txn, "p", unit(rng))
        return face_id, [AddFace(face_id, "p", np.ones(DIM + 1, np.float32))]

    async def scenario():
        store = store_factory()
        await store.open()
        face_id = await store.write(create_with_bad_change)
        return face_id, await store.read(store.gallery.snapshot)

    face_id, snap = run(scenario())
    assert snap.face_ids == [face_id]


def test_persistence_across_close_and_reopen(store_factory):
    rng = np.random.default_rng(4)
    features = [unit(rng) for _ in range(5)]

    async def first():
        store = store_factory()
        await store.open()
        ids = [await store.write(create_identity, f"p{i}", f, b"jpeg", ["g"] if i % 2 else [])
               for i, f in enumerate(features)]
        snapshot = await store.read(store.gallery.snapshot)
        await store.close()
        return ids, snapshot

    async def second():
        store = store_factory()
        await store.open()
        order = await store.read(lambda t: [r["identity_id"] for r in identities.iter_in_order(t)])
        snapshot = await store.read(store.gallery.snapshot)
        return order, snapshot, store.gallery.count_in_group("g")

    ids, snap_before = run(first())
    order, snap_after, in_group = run(second())
    assert order == [f"p{i}" for i in range(5)]
    assert sorted(snap_after.face_ids) == sorted(ids)
    rows_before = dict(zip(snap_before.face_ids, snap_before.matrix))
    for face_id, row in zip(snap_after.face_ids, snap_after.matrix):
        assert np.array_equal(rows_before[face_id], row)
    assert in_group == 2


def test_closed_store_refuses_work(store_factory):
    store = store_factory()
    with pytest.raises(StoreClosed):
        run(store.read(identities.count))

    async def scenario():
        await store.open()
        await store.close()
        await store.close()  # idempotent
        with pytest.raises(StoreClosed):
            await store.write(lambda t: (None, None))

    run(scenario())


def test_newer_layout_is_refused(store_factory):
    async def stamp_future():
        store = store_factory()
        await store.open()
        await store.write(lambda t: (t.raw.put(keys.meta_key("layout_version"),
                                               struct.pack(">Q", meta.LAYOUT_VERSION + 1),
                                               db=t.dbs.meta), None))
        await store.close()

    run(stamp_future())
    with pytest.raises(codec.StoreFormatError, match="layout version"):
        run(store_factory().open())


def test_layout_1_store_gets_its_group_index_on_open(store_factory):
    rng = np.random.default_rng(12)

    async def make_layout_1():
        store = store_factory()
        await store.open()
        await store.write(create_identity, "a", unit(rng), b"jpeg", ["g1", "g2"])
        await store.write(create_identity, "b", unit(rng), b"jpeg", ["g2"])

        def downgrade(txn):
            # What a layout-1 store looks like: no membership index, version 1.
            txn.raw.drop(txn.dbs.group_members, delete=False)
            txn.raw.put(keys.meta_key("layout_version"), struct.pack(">Q", 1), db=txn.dbs.meta)
            return None, None

        await store.write(downgrade)
        await store.close()

    async def reopen():
        store = store_factory()
        await store.open()
        members = await store.read(lambda t: sorted(identities.iter_memberships(t)))
        layout = await store.read(lambda t: t.raw.get(keys.meta_key("layout_version"),
                                                      db=t.dbs.meta))
        return members, struct.unpack(">Q", layout)[0], store.gallery.count_in_group("g2")

    run(make_layout_1())
    members, layout, in_g2 = run(reopen())
    assert members == [("a", "g1"), ("a", "g2"), ("b", "g2")]
    assert layout == meta.LAYOUT_VERSION and in_g2 == 2


# ---------------------------------------------------------------------------- map growth

def test_map_grows_on_demand_while_reads_run(store_factory):
    rng = np.random.default_rng(5)
    blob = bytes(rng.integers(0, 256, 40_000, dtype=np.uint8))

    async def scenario():
        store = store_factory(map_size_bytes=64 * 1024, max_map_size_bytes=256 * 1024 * 1024,
                              read_threads=4)
        await store.open()
        start = store.map_size_bytes
        stop = False
        read_errors: List[BaseException] = []

        async def reader():
            while not stop:
                try:
                    # Reads that walk the data while the map is being replaced.
                    await store.read(lambda t: sum(len(v) for _, v in
                                                   t.raw.cursor(db=t.dbs.images)))
                except BaseException as exc:  # pragma: no cover - the failure we test for
                    read_errors.append(exc)
                    return

        readers = [asyncio.ensure_future(reader()) for _ in range(4)]
        face_ids = []
        for i in range(60):
            face_ids.append(await store.write(create_identity, f"p{i}", unit(rng), blob))
        # One transaction bigger than the current map: grows (maybe twice) and retries.
        def bulk(txn):
            return [create_identity(txn, f"bulk{i}", unit(rng), blob)[0] for i in range(150)], None
        face_ids += await store.write(bulk)
        stop = True
        await asyncio.gather(*readers)
        grown = store.map_size_bytes
        counts = await store.read(snapshot_counts)
        await store.close()
        store2 = store_factory(map_size_bytes=64 * 1024)
        await store2.open()
        images_after = await store2.read(
            lambda t: [images.get(t, faces.get(t, f)["register_image_id"]) for f in face_ids])
        return start, grown, counts, read_errors, images_after

    start, grown, counts, read_errors, images_after = run(scenario())
    assert read_errors == []
    assert grown > start and grown >= 210 * 40_000
    assert counts[:2] == (210, 210) and counts[3] == 210
    assert all(img == blob for img in images_after)


def test_map_at_its_cap_refuses_with_insufficient_space(store_factory):
    blob = b"x" * 100_000

    async def scenario():
        store = store_factory(map_size_bytes=256 * 1024, max_map_size_bytes=1024 * 1024)
        await store.open()
        written = 0
        with pytest.raises(InsufficientSpaceLeft):
            for i in range(100):
                await store.write(
                    lambda t, i=i: (images.put(t, str(uuid.UUID(int=i + 1)), blob), None))
                written += 1
        count = await store.read(lambda t: t.entries(t.dbs.images))
        return written, count, store.map_size_bytes

    written, count, map_size = run(scenario())
    assert 0 < written < 100 and count == written and map_size == 1024 * 1024


def test_a_map_full_to_the_last_page_can_still_be_freed_by_deleting(store_factory):
    """Deleting copies the pages it changes (a face's whole feature block), so in a map full
    to its last page it needs room: removals may grow the map past its cap by a reserve,
    and the map is shrunk back right after, so other writes never get that reserve."""
    rng = np.random.default_rng(5)
    cap = 1024 * 1024

    async def scenario():
        store = store_factory(map_size_bytes=256 * 1024, max_map_size_bytes=cap)
        await store.open()
        face_id = await store.write(create_identity, "a", unit(rng))
        blobs: List[str] = []
        size = 64 * 1024
        while size >= 64:  # ever smaller blobs: the map full to its last pages
            blob_id = str(uuid.uuid4())
            try:
                await store.write(lambda t, i=blob_id, s=size: (
                    images.put(t, i, os.urandom(s)), None))
                blobs.append(blob_id)
            except InsufficientSpaceLeft:
                size //= 4
        with pytest.raises(InsufficientSpaceLeft):
            await store.write(create_identity, "b", unit(rng))

        def remove(txn):  # what deleteidentities does, with some large photos
            identities.delete(txn, "a")
            faces.delete(txn, face_id)
            for blob_id in blobs[:4]:
                images.delete(txn, blob_id)
            return None, None

        await store.write(remove, check_free_space=False)
        after_delete = store.map_size_bytes
        await store.write(create_identity, "b", unit(rng))  # the freed pages are reused
        return after_delete, await store.read(lambda t: [r["identity_id"] for r in
                                                          identities.iter_all(t)])

    after_delete, remaining = run(scenario())
    assert cap <= after_delete < cap + 256 * 1024  # shrunk back: at most what is in use
    assert remaining == ["b"]


# ---------------------------------------------------------------------------- full disk

def test_free_space_reserve_refuses_writes_but_allows_deletes(store_factory, monkeypatch):
    rng = np.random.default_rng(6)

    async def scenario():
        store = store_factory()
        await store.open()
        await store.write(create_identity, "keep", unit(rng))
        before = await store.read(snapshot_counts)
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
        with pytest.raises(InsufficientSpaceLeft):
            await store.write(create_identity, "new", unit(rng))
        after = await store.read(snapshot_counts)
        gallery_count = store.gallery.count()
        # Removing data stays possible so an operator can get out of a full disk.
        await store.write(lambda t: (identities.delete(t, "keep"), None), check_free_space=False)
        return before, after, gallery_count, await store.read(identities.count)

    before, after, gallery_count, remaining = run(scenario())
    assert before == after and gallery_count == 1 and remaining == 0


class _FailingCommitEnv:
    """An environment whose write transactions fail at commit with ``error``."""

    def __init__(self, env: lmdb.Environment, error: BaseException) -> None:
        self._env, self._error = env, error

    def begin(self, write: bool = False, **kwargs: Any):
        txn = self._env.begin(write=write, **kwargs)
        return _FailingCommitTxn(txn, self._error) if write else txn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


class _FailingCommitTxn:
    def __init__(self, txn: lmdb.Transaction, error: BaseException) -> None:
        self._txn, self._error = txn, error

    def commit(self) -> None:
        self._txn.abort()  # what LMDB does when mdb_txn_commit fails
        raise self._error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._txn, name)


@pytest.mark.parametrize("error", [
    lmdb.DiskError("mdb_txn_commit: No space left on device"),
    lmdb.Error("mdb_txn_commit: No space left on device"),
    lmdb.Error("mdb_txn_commit: Disk quota exceeded"),
], ids=["DiskError", "Error-message", "EDQUOT"])
def test_enospc_at_commit_becomes_insufficient_space(store_factory, error):
    rng = np.random.default_rng(7)

    async def scenario():
        store = store_factory()
        await store.open()
        await store.write(create_identity, "keep", unit(rng))
        before = await store.read(snapshot_counts)
        gallery_before = store.gallery.count()
        real_env = store._env
        store._env = _FailingCommitEnv(real_env, error)
        with pytest.raises(InsufficientSpaceLeft):
            await store.write(create_identity, "new", unit(rng))
        store._env = real_env
        return before, await store.read(snapshot_counts), gallery_before, store.gallery.count()

    before, after, gallery_before, gallery_after = run(scenario())
    assert before == after and gallery_before == gallery_after == 1


def test_enospc_errno_during_put_becomes_insufficient_space(store_factory):
    try:
        error = lmdb.Error("mdb_put", 28)  # newer py-lmdb: code + strerror
        assert "No space left on device" in str(error) or getattr(error, "code", 0) == 28
    except (TypeError, AssertionError):
        error = lmdb.Error("mdb_put: No space left on device")
    rng = np.random.default_rng(8)

    def put_then_disk_full(txn):
        create_identity(txn, "new", unit(rng))
        raise error

    def io_error(txn):
        raise lmdb.Error("mdb_put: Input/output error")

    async def scenario():
        store = store_factory()
        await store.open()
        with pytest.raises(InsufficientSpaceLeft):
            await store.write(put_then_disk_full)
        # Other LMDB errors are not disguised as a full disk.
        with pytest.raises(lmdb.Error) as other:
            await store.write(io_error)
        return await store.read(snapshot_counts), other.value

    counts, other = run(scenario())
    assert counts[:2] == (0, 0)
    assert not isinstance(other, InsufficientSpaceLeft)


@pytest.mark.parametrize("free_bytes, disk_full", [(1000, True), (10 ** 12, False)])
def test_short_write_eio_counts_as_disk_full_only_on_a_full_disk(
        store_factory, monkeypatch, free_bytes, disk_full):
    # A disk filling up during a commit makes LMDB report a short write as EIO (seen on a
    # real full tmpfs), so EIO on a disk with (almost) no space left is a full disk.
    error = lmdb.Error("mdb_txn_commit: Input/output error")

    async def scenario():
        store = store_factory(min_free_bytes=0)
        await store.open()
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 13, 0, free_bytes))
        real_env = store._env
        store._env = _FailingCommitEnv(real_env, error)
        try:
            await store.write(create_identity, "new", unit(np.random.default_rng(0)))
        except Exception as exc:  # noqa: BLE001 - the type is what the test checks
            raised = exc
        store._env = real_env
        return raised, await store.read(snapshot_counts)

    raised, counts = run(scenario())
    assert isinstance(raised, InsufficientSpaceLeft) is disk_full
    assert isinstance(raised, lmdb.Error) is not disk_full
    assert counts[:2] == (0, 0)


def test_concurrent_writes_are_serialised_and_all_land(store_factory):
    rng = np.random.default_rng(9)
    features = [unit(rng) for _ in range(50)]
    threads = set()

    def create(txn, i):
        threads.add(threading.get_ident())
        return create_identity(txn, f"p{i}", features[i])

    async def scenario():
        store = store_factory()
        await store.open()
        face_ids = await asyncio.gather(*(store.write(create, i) for i in range(50)))
        return face_ids, await store.read(snapshot_counts), store.gallery.count()

    face_ids, counts, gallery_count = run(scenario())
    assert len(set(face_ids)) == 50 and counts[:2] == (50, 50) and gallery_count == 50
    assert len(threads) == 1 and threading.get_ident() not in threads
