"""The compressed scan behind exact search: the error bound holds row by row, both kernels
compute the same integers, near-ties the int8 codes cannot separate still come out as the
float32 winner, and a store-backed gallery reads its candidates in the read transaction."""

from __future__ import annotations

import asyncio
import sys
import uuid

import numpy as np
import pytest

from sophon_face.store import Gallery, Store, faces, gallery_scan, keys
from sophon_face.store.codec import StoreFormatError
from sophon_face.store.gallery import AddFace

DIM = 512


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    m = rng.standard_normal((n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def quantised(rows: np.ndarray):
    codes = np.empty(rows.shape, dtype=np.int8)
    scale = np.empty(len(rows), dtype=np.float32)
    resid = np.empty(len(rows), dtype=np.float32)
    gallery_scan.quantise_rows(rows, codes, scale, resid)
    return codes, scale, resid


def kernels():
    names = ["numpy"]
    if gallery_scan._import_simsimd() is not None:
        names.append("simsimd")
    return names


def test_every_float32_score_lies_within_its_margin_of_the_compressed_score():
    rng = np.random.default_rng(1)
    rows = unit_rows(rng, 4000)
    rows[:10] *= 0  # zero rows (a stored all-zero feature): scale 0, score exactly 0
    rows[10] = 0
    rows[10, 3] = 1.0  # one dominant component
    codes, scale, resid = quantised(rows)
    assert np.abs(codes).max() <= 127 and (scale[:10] == 0).all() and (resid[:10] < 1e-5).all()
    scan = gallery_scan.Int8Scan(DIM, "numpy")
    for probe in unit_rows(rng, 30):
        probe_codes, b, sigma = gallery_scan.quantise_probe(probe)
        c = np.empty(len(rows), dtype=np.float32)
        scan.scores(codes, probe_codes, c)
        assert np.array_equal(c, codes.astype(np.int64) @ probe_codes.astype(np.int64))
        c *= scale
        c *= np.float32(b)
        a, bb = gallery_scan.margin_terms(sigma, DIM)
        f = a + bb * resid.astype(np.float64)
        exact = rows.astype(np.float64) @ probe.astype(np.float64)
        fp32 = rows @ probe
        assert (np.abs(exact - c) <= f).all() and (np.abs(fp32 - c) <= f).all()
        # The bound is not vacuous: about 2x the typical error, not 100x.
        assert f.mean() < 0.03


@pytest.mark.skipif(gallery_scan._import_simsimd() is None, reason="simsimd not installed")
def test_both_kernels_compute_the_same_exact_integers_in_one_or_two_threads(monkeypatch):
    rng = np.random.default_rng(2)
    codes = rng.integers(-127, 128, size=(9000, DIM), dtype=np.int8)
    probe = rng.integers(-127, 128, size=DIM, dtype=np.int8)
    expected = codes.astype(np.int64) @ probe.astype(np.int64)
    monkeypatch.setattr(gallery_scan, "PARALLEL_MIN_CODES", 1000 * DIM)  # split in two
    for name in ("numpy", "simsimd"):
        for threads in (1, 2):
            out = np.empty(len(codes), dtype=np.float32)
            gallery_scan.Int8Scan(DIM, name, threads).scores(codes, probe, out)
            assert np.array_equal(out, expected), (name, threads)


@pytest.mark.parametrize("kernel", kernels())
def test_near_ties_the_codes_cannot_separate_come_out_as_the_float32_winner(kernel):
    """Faces a hair apart (far below the int8 step): the compressed scores tie or even
    disagree with float32, and re-ranking every face within the margin restores the
    float32 order."""
    rng = np.random.default_rng(3)
    base = unit_rows(rng, 1)[0]
    near = base + 0.03 * unit_rows(rng, 300)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    others = unit_rows(rng, 3000)
    matrix = np.vstack([near, others]).astype(np.float32)
    gallery = Gallery(DIM, scan_kernel=kernel)
    gallery.apply([AddFace(f"f{i}", f"p{i}", row) for i, row in enumerate(matrix)])
    snapshot = gallery.snapshot()
    exact = snapshot.matrix
    order_disagreements = checked = 0
    for probe in base + 0.03 * unit_rows(rng, 60):
        probe = probe / np.linalg.norm(probe)
        scores = exact.astype(np.float64) @ probe.astype(np.float64)
        want = int(np.argmax(scores))
        if np.sort(scores)[-2] > scores[want] - 1e-5:
            continue  # a tie at float32 precision: either face is the float32 answer
        checked += 1
        match = gallery.search(probe)
        assert match is not None and match.face_id == snapshot.face_ids[want]
        assert match.score == pytest.approx(float(exact[want] @ probe), abs=1e-6)
        codes_best = int(np.argmax((snapshot.codes.astype(np.int64)
                                    @ np.round(probe * 127 / np.abs(probe).max()).astype(np.int64))
                                   * gallery._lib.scale[:len(exact)]))
        order_disagreements += codes_best != want
    assert checked >= 15
    assert order_disagreements > 0  # the int8 order alone would have been wrong


@pytest.mark.parametrize("kernel", kernels())
def test_search_equals_numpy_top1_on_random_data(kernel):
    rng = np.random.default_rng(4)
    matrix = unit_rows(rng, 20000)
    gallery = Gallery(DIM, scan_kernel=kernel)
    gallery.apply([AddFace(str(uuid.UUID(int=i)), f"p{i}", row) for i, row in enumerate(matrix)])
    exact = gallery.snapshot().matrix  # the gallery's rows, in row order
    probes = unit_rows(rng, 100)
    probes[::2] = matrix[rng.integers(0, len(matrix), 50)] + 0.03 * probes[::2]
    for probe in probes:
        probe = probe / np.linalg.norm(probe)
        assert int(uuid.UUID(gallery.search(probe).face_id)) == int(np.argmax(exact @ probe))


def test_a_store_backed_gallery_reads_candidates_in_the_transaction(tmp_path):
    rng = np.random.default_rng(5)
    features = unit_rows(rng, 50)

    def create(txn):
        changes = []
        ids = []
        for i, feature in enumerate(features):
            record = faces.make_record(str(uuid.uuid4()), f"p{i}", str(uuid.uuid4()), feature)
            faces.put(txn, record)
            changes.append(AddFace(record["face_id"], f"p{i}", faces.feature(record)))
            ids.append(record["face_id"])
        return ids, changes

    async def scenario():
        store = Store(tmp_path, gallery=Gallery(DIM))
        await store.open()
        try:
            ids = await store.write(create)
            gallery = store.gallery
            assert gallery.features_in_store
            with pytest.raises(TypeError, match="read transaction"):
                gallery.search(features[0])
            first = await store.read(gallery.search_in, features[7])
            # A commit whose gallery change is not applied yet: the face is gone from the
            # transaction's snapshot, so the search leaves it out and answers exactly
            # among the faces still there.
            await store.write(lambda t: (faces.delete(t, ids[7]), None))
            second = await store.read(gallery.search_in, features[7])
            return ids, first, second, gallery.count()
        finally:
            await store.close()

    ids, first, second, count = asyncio.run(scenario())
    assert first.face_id == ids[7] and first.score == pytest.approx(1.0)
    scores = features @ features[7]
    scores[7] = -2
    assert count == 50 and second.face_id == ids[int(np.argmax(scores))]


@pytest.mark.parametrize("kernel", kernels())
def test_searching_leaves_reference_counts_alone(kernel):
    """simsimd 6.5's ``cdist(out=...)`` returns None without a reference: ten thousand
    searches later the interpreter aborted. The scan must not lose references."""
    rng = np.random.default_rng(6)
    gallery = Gallery(DIM, scan_kernel=kernel)
    gallery.apply([AddFace(f"f{i}", "p", row) for i, row in enumerate(unit_rows(rng, 64))])
    probe = unit_rows(rng, 1)[0]
    gallery.search(probe)
    before = sys.getrefcount(None)
    for _ in range(500):
        gallery.search(probe)
    assert sys.getrefcount(None) >= before - 50  # others may release a few meanwhile


def test_a_slot_without_a_face_is_left_out_of_the_rebuild(tmp_path, caplog):
    """A slot neither used nor free (never written by this code: a record deleted behind
    faces.py's back) costs a warning, not a wrong gallery: the blocks' owners count one
    face more than the records, so the rebuild matches records and blocks face by face."""
    rng = np.random.default_rng(7)
    features = unit_rows(rng, 6)
    records = [faces.make_record(str(uuid.uuid4()), f"p{i}", str(uuid.uuid4()), f)
               for i, f in enumerate(features)]

    async def scenario():
        store = Store(tmp_path, gallery=Gallery(DIM))
        await store.open()
        await store.write(lambda t: (faces.put_many(t, records), None))
        await store.write(lambda t: (t.raw.delete(
            uuid.UUID(records[2]["face_id"]).bytes, db=t.dbs.faces), None))
        await store.close()
        store = Store(tmp_path, gallery=Gallery(DIM))
        await store.open()
        try:
            return (store.gallery.count(),
                    await store.read(store.gallery.search_in, features[4]),
                    await store.read(store.gallery.search_in, features[2]))
        finally:
            await store.close()

    count, hit, other = asyncio.run(scenario())
    assert count == 5 and hit.face_id == records[4]["face_id"]
    assert other.face_id != records[2]["face_id"]
    assert "matching them face by face" in caplog.text
    assert "1 feature slots hold no face" in caplog.text


def test_a_face_whose_slot_is_listed_free_is_refused(tmp_path):
    rng = np.random.default_rng(8)
    records = [faces.make_record(str(uuid.uuid4()), f"p{i}", str(uuid.uuid4()), f)
               for i, f in enumerate(unit_rows(rng, 4))]

    async def scenario():
        store = Store(tmp_path, gallery=Gallery(DIM))
        await store.open()
        await store.write(lambda t: (faces.put_many(t, records), None))
        await store.write(lambda t: (t.raw.put(keys.feature_slot_key(DIM, 1), b"",
                                               db=t.dbs.feature_free), None))
        await store.close()
        await Store(tmp_path, gallery=Gallery(DIM)).open()

    with pytest.raises(StoreFormatError, match="disagree"):
        asyncio.run(scenario())
