"""The in-memory gallery: exact search against brute force, group scoping, swap-remove,
capacity, and a rebuild from LMDB that equals the incrementally built gallery."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import pytest

from sophon_face.store import (
    AddFace, Gallery, RemoveFace, RemoveGroup, RemoveIdentity, SetGroups, Store, faces,
    gallery as gallery_module, gallery_library, identities,
)
from sophon_face.store.gallery import FeatureDimMismatch
from sophon_face.store.gallery_library import Library, quantise_into

DIM = 32


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    m = rng.standard_normal((n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


class Model:
    """The obvious reference: dicts, and brute-force scoring of every face in scope."""

    def __init__(self) -> None:
        self.features: Dict[str, np.ndarray] = {}
        self.identity_of: Dict[str, str] = {}
        self.groups: Dict[str, Set[str]] = {}

    def add(self, face_id: str, identity_id: str, feature: np.ndarray) -> None:
        self.features[face_id] = feature
        self.identity_of[face_id] = identity_id

    def remove_face(self, face_id: str) -> None:
        self.features.pop(face_id, None)
        self.identity_of.pop(face_id, None)

    def remove_identity(self, identity_id: str) -> None:
        for face_id in [f for f, i in self.identity_of.items() if i == identity_id]:
            self.remove_face(face_id)
        self.groups.pop(identity_id, None)

    def in_scope(self, permission_id: Optional[str]) -> List[str]:
        return [f for f, i in self.identity_of.items()
                if permission_id is None or permission_id in self.groups.get(i, ())]

    def best(self, probe: np.ndarray, permission_id: Optional[str]) -> Optional[Tuple[str, float]]:
        scope = self.in_scope(permission_id)
        if not scope:
            return None
        scores = np.stack([self.features[f] for f in scope]) @ probe
        best = int(np.argmax(scores))
        return scope[best], float(scores[best])


def check_search(gallery: Gallery, model: Model, probe: np.ndarray,
                 permission_id: Optional[str]) -> None:
    expected = model.best(probe, permission_id)
    got = gallery.search(probe, permission_id)
    if expected is None:
        assert got is None
        return
    assert got is not None
    # Ties aside (probability ~0 with random vectors), the face must be the same one.
    assert got.face_id == expected[0]
    assert got.identity_id == model.identity_of[expected[0]]
    assert got.score == pytest.approx(expected[1], abs=1e-5)


def new_id() -> str:
    return str(uuid.uuid4())


def test_search_is_exact_over_the_whole_library():
    rng = np.random.default_rng(0)
    gallery, model = Gallery(DIM, initial_capacity=16), Model()
    rows = unit_rows(rng, 3000)
    for i, feature in enumerate(rows):
        face_id = new_id()
        gallery.add(face_id, f"p{i % 1000}", feature)
        model.add(face_id, f"p{i % 1000}", feature)
    assert gallery.count() == 3000
    for probe in unit_rows(rng, 50):
        check_search(gallery, model, probe, None)
    # A registered face finds itself with cosine 1.
    face_id = next(iter(model.features))
    hit = gallery.search(model.features[face_id])
    assert hit.face_id == face_id and hit.score == pytest.approx(1.0, abs=1e-6)


def test_search_scores_are_cosines_of_unnormalised_inputs():
    gallery = Gallery(3)
    gallery.add(new_id(), "a", np.array([3.0, 0.0, 0.0]))
    hit = gallery.search(np.array([10.0, 10.0, 0.0]))
    assert hit.score == pytest.approx(np.sqrt(0.5))


def test_empty_scopes_return_none():
    gallery = Gallery(DIM)
    probe = unit_rows(np.random.default_rng(1), 1)[0]
    assert gallery.search(probe) is None
    gallery.add(new_id(), "a", probe)
    assert gallery.search(probe, "no-such-group") is None
    gallery.set_identity_groups("b", ["g"])  # a member without faces
    assert gallery.search(probe, "g") is None
    assert gallery.count_in_group("g") == 0


@pytest.mark.parametrize("gather_fraction", [0.0, 1.1], ids=["score-all", "gather"])
def test_group_scoped_search_is_exact(monkeypatch, gather_fraction):
    monkeypatch.setattr(gallery_library, "GATHER_FRACTION", gather_fraction)
    rng = np.random.default_rng(2)
    gallery, model = Gallery(DIM), Model()
    group_names = ["g0", "g1", "g2", "big"]
    for i in range(400):
        identity_id = f"p{i}"
        groups = {g for g in group_names[:3] if rng.random() < 0.2}
        if rng.random() < 0.7:
            groups.add("big")
        # Groups before faces for some identities, after for others.
        if i % 2:
            gallery.set_identity_groups(identity_id, sorted(groups))
        for feature in unit_rows(rng, int(rng.integers(0, 4))):
            face_id = new_id()
            gallery.add(face_id, identity_id, feature)
            model.add(face_id, identity_id, feature)
        if not i % 2:
            gallery.set_identity_groups(identity_id, sorted(groups))
        model.groups[identity_id] = groups
    for group in group_names:
        assert gallery.count_in_group(group) == len(model.in_scope(group))
    for probe in unit_rows(rng, 20):
        for group in group_names + [None, "unknown"]:
            check_search(gallery, model, probe, group)


def test_swap_remove_keeps_every_row_with_its_face():
    rng = np.random.default_rng(3)
    gallery, model = Gallery(DIM, initial_capacity=8), Model()
    live: List[str] = []
    for step in range(3000):
        if live and rng.random() < 0.45:
            face_id = live.pop(int(rng.integers(len(live))))
            assert gallery.remove_face(face_id)
            model.remove_face(face_id)
        else:
            face_id = new_id()
            feature = unit_rows(rng, 1)[0]
            identity_id = f"p{int(rng.integers(50))}"
            gallery.add(face_id, identity_id, feature)
            model.add(face_id, identity_id, feature)
            live.append(face_id)
    assert not gallery.remove_face("never-added")
    snap = gallery.snapshot()
    assert sorted(snap.face_ids) == sorted(model.features)
    for face_id, identity_id, row in zip(snap.face_ids, snap.identity_ids, snap.matrix):
        assert model.identity_of[face_id] == identity_id
        # Rows are re-normalised by the gallery: equal up to float32 rounding.
        np.testing.assert_allclose(row, model.features[face_id], atol=1e-6)
    for probe in unit_rows(rng, 10):
        check_search(gallery, model, probe, None)


def test_remove_identity_and_groups():
    rng = np.random.default_rng(4)
    gallery, model = Gallery(DIM), Model()
    for i in range(30):
        gallery.set_identity_groups(f"p{i}", ["even" if i % 2 == 0 else "odd", "all"])
        model.groups[f"p{i}"] = {"even" if i % 2 == 0 else "odd", "all"}
        for feature in unit_rows(rng, 3):
            face_id = new_id()
            gallery.add(face_id, f"p{i}", feature)
            model.add(face_id, f"p{i}", feature)
    assert gallery.count_in_group("all") == 90
    assert gallery.remove_identity("p0") == 3
    model.remove_identity("p0")
    assert gallery.count() == 87 and gallery.count_in_group("even") == 42
    assert gallery.groups_of("p0") == frozenset()
    gallery.remove_group("odd")
    for identity_groups in model.groups.values():
        identity_groups.discard("odd")
    assert gallery.count_in_group("odd") == 0 and gallery.count_in_group("all") == 87
    assert gallery.groups_of("p1") == frozenset({"all"})
    gallery.set_identity_groups("p2", [])
    model.groups["p2"] = set()
    assert gallery.count_in_group("even") == 39
    for probe in unit_rows(rng, 10):
        for group in ("even", "odd", "all", None):
            check_search(gallery, model, probe, group)


def test_apply_is_all_or_nothing_for_invalid_changes():
    rng = np.random.default_rng(5)
    gallery = Gallery(DIM)
    gallery.add(new_id(), "a", unit_rows(rng, 1)[0])
    before = gallery.snapshot()
    bad_batches = [
        [AddFace(new_id(), "b", unit_rows(rng, 1)[0]), AddFace(new_id(), "b", np.ones(DIM + 1))],
        [RemoveIdentity("a"), AddFace(new_id(), "b", np.zeros(DIM))],
        [RemoveGroup("g"), AddFace(new_id(), "b", np.full(DIM, np.nan))],
        [RemoveFace(before.face_ids[0]), "not a change"],
    ]
    for batch in bad_batches:
        with pytest.raises((ValueError, TypeError)):
            gallery.apply(batch)
    after = gallery.snapshot()
    assert after.face_ids == before.face_ids and np.array_equal(after.matrix, before.matrix)


def test_capacity_grows_by_a_quarter_and_shrinks_after_mass_removal():
    rng = np.random.default_rng(6)
    gallery = Gallery(DIM)
    face_ids = [new_id() for _ in range(20000)]
    for face_id, feature in zip(face_ids, unit_rows(rng, 20000)):
        gallery.add(face_id, "p", feature)
    capacity = gallery._lib.codes.shape[0]
    assert 20000 <= capacity <= int(20000 * 1.25) + 1
    for face_id in face_ids[:19000]:
        gallery.remove_face(face_id)
    assert gallery._lib.codes.shape[0] <= 2 * 1000 + gallery_module.MIN_CAPACITY
    assert gallery.count() == 1000


def test_replacing_a_face_id_moves_it():
    rng = np.random.default_rng(7)
    gallery = Gallery(DIM)
    a, b = unit_rows(rng, 2)
    gallery.add("f", "p1", a)
    gallery.add("f", "p2", b)
    snap = gallery.snapshot()
    assert snap.face_ids == ["f"] and snap.identity_ids == ["p2"]
    assert gallery.search(b).identity_id == "p2"


def test_searches_run_safely_while_changes_are_applied():
    rng = np.random.default_rng(8)
    gallery = Gallery(DIM)
    features = unit_rows(rng, 2000)
    errors: List[BaseException] = []
    done = threading.Event()

    def searcher() -> None:
        probes = unit_rows(np.random.default_rng(9), 20)
        while not done.is_set():
            try:
                for probe in probes:
                    hit = gallery.search(probe, "g" if rng.random() < 0.5 else None)
                    assert hit is None or -1.0001 <= hit.score <= 1.0001
            except BaseException as exc:  # pragma: no cover - the failure we test for
                errors.append(exc)
                return

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for thread in threads:
        thread.start()
    live: List[str] = []
    for i, feature in enumerate(features):
        face_id = new_id()
        gallery.apply([AddFace(face_id, f"p{i % 300}", feature),
                       SetGroups(f"p{i % 300}", ("g",) if i % 3 else ())])
        live.append(face_id)
        if i % 4 == 0:
            gallery.apply([RemoveFace(live.pop(0))])
        if i % 500 == 0:
            gallery.apply([RemoveIdentity(f"p{i % 300}")])
    done.set()
    for thread in threads:
        thread.join()
    assert errors == []


# ---------------------------------------------------------------------------- rebuild

def test_rebuild_from_lmdb_equals_the_incremental_gallery(tmp_path):
    rng = np.random.default_rng(10)

    def create(txn, identity_id, groups, features):
        face_ids = [new_id() for _ in features]
        image_ids = [new_id() for _ in features]
        identities.put(txn, {
            "identity_id": identity_id, "identity_name": "", "user_type": "employee",
            "permission_ids": groups, "ext_user_info": {}, "face_ids": face_ids,
            "register_image_ids": image_ids,
        })
        changes = [SetGroups(identity_id, tuple(groups))]
        for face_id, image_id, feature in zip(face_ids, image_ids, features):
            faces.put(txn, faces.make_record(face_id, identity_id, image_id, feature))
            changes.append(AddFace(face_id, identity_id, feature))
        return face_ids, changes

    def delete_identity(txn, identity_id):
        record = identities.delete(txn, identity_id)
        for face_id in record["face_ids"]:
            faces.delete(txn, face_id)
        return None, [RemoveIdentity(identity_id)]

    def delete_face(txn, identity_id, face_id):
        record = identities.require(txn, identity_id)
        index = record["face_ids"].index(face_id)
        del record["face_ids"][index]
        del record["register_image_ids"][index]
        identities.put(txn, record)
        faces.delete(txn, face_id)
        return None, [RemoveFace(face_id)]

    def regroup(txn, identity_id, groups):
        record = identities.require(txn, identity_id)
        record["permission_ids"] = groups
        identities.put(txn, record)
        return None, [SetGroups(identity_id, tuple(groups))]

    async def scenario():
        store = Store(tmp_path, gallery=Gallery(DIM, initial_capacity=4))
        await store.open()
        all_faces = {}
        for i in range(300):
            groups = [g for g in ("a", "b", "c") if rng.random() < 0.4]
            face_ids = await store.write(create, f"p{i}", groups,
                                         list(unit_rows(rng, int(rng.integers(0, 4)))))
            all_faces[f"p{i}"] = face_ids
        for i in range(0, 300, 7):
            await store.write(delete_identity, f"p{i}")
        for i in range(1, 300, 5):
            if all_faces[f"p{i}"] and i % 7:
                await store.write(delete_face, f"p{i}", all_faces[f"p{i}"][0])
        for i in range(2, 300, 11):
            if i % 7:
                await store.write(regroup, f"p{i}", ["c"])
        rebuilt = Gallery(DIM)
        await store.read(rebuilt.load_from_txn)
        stored_count = await store.read(faces.count)
        incremental = store.gallery
        # Both hold their exact features in LMDB: compared inside read transactions.
        snapshots = await store.read(lambda t: (incremental.snapshot(t), rebuilt.snapshot(t)))
        probes = unit_rows(rng, 20)
        answers = await store.read(lambda t: [
            (incremental.search(probe, group, t), rebuilt.search(probe, group, t))
            for probe in probes for group in ("a", "b", "c", None)])
        await store.close()
        return incremental, rebuilt, stored_count, snapshots, answers

    incremental, rebuilt, stored_count, (inc, reb), answers = run(scenario())
    assert len(inc.face_ids) == len(reb.face_ids) == stored_count > 0
    inc_rows = {f: (i, row, code) for f, i, row, code
                in zip(inc.face_ids, inc.identity_ids, inc.matrix, inc.codes)}
    for face_id, identity_id, row, code in zip(reb.face_ids, reb.identity_ids, reb.matrix,
                                               reb.codes):
        assert inc_rows[face_id][0] == identity_id
        assert np.array_equal(inc_rows[face_id][1], row)
        assert np.array_equal(inc_rows[face_id][2], code)  # the same codes, bit for bit
    for group in ("a", "b", "c"):
        assert incremental.count_in_group(group) == rebuilt.count_in_group(group)
    for expected, got in answers:
        # Same face; the score may differ in the last bit because BLAS blocks rows
        # differently when they sit at other positions.
        assert got[:2] == expected[:2]
        assert got.score == pytest.approx(expected.score, abs=1e-6)


def test_rebuild_follows_faces_rewritten_to_another_identity(tmp_path):
    """The rebuild reads who holds each row from the feature blocks' owners, which follow
    a face record rewritten with another identity, and rows freed and reused."""
    rng = np.random.default_rng(12)
    features = unit_rows(rng, 5)
    records = [faces.make_record(new_id(), f"p{i}", new_id(), f) for i, f in enumerate(features)]
    moved = dict(records[1], identity_id="q", feature=features[4].astype("<f4").tobytes())

    async def scenario():
        store = Store(tmp_path, gallery=Gallery(DIM))
        await store.open()
        await store.write(lambda t: (faces.put_many(t, records[:4]), None))
        await store.write(lambda t: (faces.put(t, moved), None))
        await store.write(lambda t: (faces.delete(t, records[2]["face_id"]), None))
        await store.close()
        store = Store(tmp_path, gallery=Gallery(DIM))
        await store.open()
        try:
            snapshot = await store.read(store.gallery.snapshot)
            hit = await store.read(store.gallery.search_in, features[4])
            return snapshot, hit
        finally:
            await store.close()

    snapshot, hit = run(scenario())
    held = dict(zip(snapshot.face_ids, snapshot.identity_ids))
    assert held == {records[0]["face_id"]: "p0", records[1]["face_id"]: "q",
                    records[3]["face_id"]: "p3"}
    assert (hit.face_id, hit.identity_id) == (records[1]["face_id"], "q")
    assert hit.score == pytest.approx(1.0)


def test_a_bulk_library_numbers_identities_by_first_row_and_reuses_the_gaps():
    """``Library.from_bulk`` indexes an identity by the row it first appears in; the rows
    where none starts are free indices, taken by identities that arrive later (here a
    group member without faces), and the library then changes like any other."""
    rng = np.random.default_rng(13)
    rows = unit_rows(rng, 5)
    codes = np.empty((8, DIM), dtype=np.int8)  # 3 rows of spare capacity
    scale, resid = np.empty(8, dtype=np.float32), np.empty(8, dtype=np.float32)
    quantise_into(rows.copy(), codes[:5], scale[:5], resid[:5])
    lib = Library.from_bulk(DIM, [f"f{i}" for i in range(5)], ["a", "b", "a", "c", "b"],
                            codes, scale, resid, np.dtype(np.float32))
    assert lib.ident_ids == ["a", "b", None, "c", None] and sorted(lib.free_indices) == [2, 4]
    assert lib.row_ident[:5].tolist() == [0, 1, 0, 3, 1]
    lib.load_groups([("g", ["a", "z"])])
    assert lib.ident_index["z"] in (2, 4) and lib.group_faces == {"g": 2}
    lib.set_groups("c", ["g"])
    assert lib.group_faces == {"g": 3} and lib.face_row == {f"f{i}": i for i in range(5)}
    assert lib.remove_identity("a") == 2
    assert lib.group_faces == {"g": 1} and lib.groups_of("z") == {"g"}
    lib.add("f5", "d", rows[0])  # the fifth row of spare capacity, a free index
    assert lib.n == 4 and lib.ident_ids[lib.ident_index["d"]] == "d"
    assert sorted(lib.face_row) == ["f1", "f3", "f4", "f5"]
    assert lib.group_rows("g").tolist() == [lib.face_row["f3"]]


def test_rebuild_refuses_features_of_another_dimension(tmp_path):
    async def scenario():
        store = Store(tmp_path, gallery=Gallery(DIM))
        await store.open()
        await store.write(lambda t: (faces.put(t, faces.make_record(
            new_id(), "p", new_id(), np.ones(DIM))), None))
        await store.close()
        with pytest.raises(FeatureDimMismatch, match="1 of dimension 32"):
            await Store(tmp_path, gallery=Gallery(DIM * 2)).open()

    run(scenario())


def run(coro):
    return asyncio.run(coro)
