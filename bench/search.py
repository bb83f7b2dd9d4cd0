"""Gallery scale: 1:N search latency, cold start, memory, and enrolment throughput.

Sections (all by default; ``--only`` picks some):

``search``     exact top-1 search, one probe at a time as the daemon does, over N random unit
               features (10k, 50k, 200k, 1M; dim 128 and 512): our ``Gallery.search`` side by
               side with a plain numpy baseline (``matrix @ probe``, argmax) and faiss-cpu's
               ``IndexFlatIP`` (k=1), on the same data and probes, taking turns in blocks of
               25 probes (see ``take_turns``).
``gallery``    the 512-d gallery as the daemon runs it: a Store fixture (100k, 1M faces) opened
               with its Gallery (int8 codes in memory, exact features in LMDB), searched in a
               read transaction, side by side with numpy's exact float32 ``matrix @ probe`` +
               argmax over the same unit rows, taking turns (``take_turns``): p50/p99 per
               probe for the whole library and for one 10 % group, then top-1 agreement on
               10k more probes (the reference by blocks of matrix products, re-checked with
               the matrix-vector product wherever its two best rows are within rounding).
``coldstart``  a Store holding 1M faces (one identity each, in 10 permission groups) is
               opened and its gallery rebuilt, in a fresh process: wall time and resident
               memory against the raw feature bytes. Once with the LMDB file evicted from the
               page cache (a boot), once with it cached (a restart). The fixture is written
               once and cached under bench/results/ (1M x 512: about 2.5 GB).
``enrol``      createidentity throughput (faces/s) against a daemon subprocess with 1, 4 and
               16 concurrent keep-alive clients, by ``register_feature`` (the store path:
               one fsynced write transaction per request) and by ``register_image`` (the
               inference path, ``fiqa_level: no``, photos from tests/data and the devset).

Run (from the project root):
    .venv/bin/python bench/search.py                 # everything, ~10-15 min on 2 cores
    .venv/bin/python bench/search.py --quick         # 10k/50k, dim 128, 100k cold start
    .venv/bin/python bench/search.py --only search --sizes 50k,1M --dims 512 --probes 100
    .venv/bin/python bench/search.py --only gallery,coldstart --coldstart-dims 512
Prints markdown; writes bench/results/search-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import http.client
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from daemon import DaemonProcess
from measure import (DEVSET_DIR, IMAGE_SUFFIXES, PROJECT_DIR, RESULTS_DIR, TEST_DATA_DIR,
                     CpuShare, Stats, describe_machine, machine, markdown_table, memory_of, mib,
                     ratio, save_results)

from sophon_face.store import faces, feature_blocks, identities, keys, permissions
from sophon_face.store import gallery_library
from sophon_face.store.env import Store, Txn
from sophon_face.store.gallery import AddFace, Gallery

DEFAULT_SIZES = (10_000, 50_000, 200_000, 1_000_000)
DEFAULT_DIMS = (128, 512)
#: Goals from the design brief, per probe.
GOAL_MS = {50_000: 2.0, 1_000_000: 40.0}
COLDSTART_GOAL_S = 5.0
MEMORY_GOAL_RATIO = 1.2
#: Faces per write transaction of the fixture: like a bulk import. LMDB keeps the pages the
#: last transactions freed (copy-on-write) as free space inside the file, about 8 KB per face
#: of a transaction: 10k would leave 70 MiB of free pages in the 1M x 512 file.
FIXTURE_FACES_PER_TXN = 2_000
FIXTURE_GROUPS = 10
CONCURRENCY = (1, 4, 16)


def parse_size(text: str) -> int:
    text = text.strip().lower()
    for suffix, factor in (("k", 1_000), ("m", 1_000_000)):
        if text.endswith(suffix):
            return int(float(text[:-1]) * factor)
    return int(text)


def size_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def random_unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    """(n, dim) float32 unit rows, generated in chunks (no float64 temporaries of n x dim)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    step = 65536
    for start in range(0, n, step):
        block = out[start:start + step]
        block[:] = rng.standard_normal(block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out


def face_id_of(row: int) -> str:
    """Face ids shaped like the daemon's (canonical UUID strings), mapping back to rows."""
    return str(uuid.UUID(int=row))


# ============================================================== search

def gallery_from_matrix(matrix: np.ndarray, batch: int = 10_000) -> Gallery:
    """A Gallery holding ``matrix`` row by row, one identity per face, no groups.

    Built through the public ``apply`` (what the writer thread does after each commit), in
    batches, so the benchmark follows the Gallery whatever its internals become; the bulk
    path of a restart is measured by the cold-start section.
    """
    n, dim = matrix.shape
    gallery = Gallery(dim)
    for start in range(0, n, batch):
        gallery.apply([AddFace(face_id_of(row), f"identity-{row}", matrix[row])
                       for row in range(start, min(n, start + batch))])
    return gallery


def probes_for(matrix: np.ndarray, count: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Half noisy copies of gallery rows (their row should win), half random vectors."""
    rng = np.random.default_rng(seed)
    n, dim = matrix.shape
    rows = rng.integers(0, n, size=count)
    probes = rng.standard_normal((count, dim)).astype(np.float32)
    near = np.arange(count) % 2 == 0
    probes[near] = matrix[rows[near]] + 0.03 * probes[near]
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    expected = np.where(near, rows, -1)
    return probes, expected


#: Probes per turn. Each method answers a block of probes in a row, then the next method
#: takes over; the order rotates block by block. Interleaving probe by probe would make
#: every method pay for the previous one's idle thread pool still spinning on the other
#: core (faiss's OpenMP threads spin ~100 ms after a call), which measured a 10k search at
#: 3.7 ms instead of 0.2 ms.
PROBES_PER_TURN = 25
#: Untimed probes at the start of each turn: the previous method's threads settle.
WARM_PROBES_PER_TURN = 3


def take_turns(methods: Sequence[Tuple[str, Callable[[np.ndarray], int]]],
               probes: np.ndarray) -> Tuple[Dict[str, List[float]], Dict[str, List[int]]]:
    """Milliseconds and answers per method and probe, methods taking turns in blocks."""
    times: Dict[str, List[float]] = {name: [] for name, _ in methods}
    answers: Dict[str, List[int]] = {name: [] for name, _ in methods}
    for turn, start in enumerate(range(0, len(probes), PROBES_PER_TURN)):
        block = probes[start:start + PROBES_PER_TURN]
        shift = turn % len(methods)
        for name, fn in list(methods[shift:]) + list(methods[:shift]):
            for p in probes[:WARM_PROBES_PER_TURN]:
                fn(p)
            for p in block:
                t0 = time.perf_counter()
                row = fn(p)
                times[name].append((time.perf_counter() - t0) * 1000.0)
                answers[name].append(row)
    return times, answers


def time_search(matrix: np.ndarray, probes: np.ndarray, expected: np.ndarray,
                faiss_module: Any) -> Dict[str, Any]:
    n, dim = matrix.shape
    gc.collect()
    anon_before = memory_of()["anon"]
    started = time.perf_counter()
    gallery = gallery_from_matrix(matrix)
    build_s = time.perf_counter() - started
    gallery_anon = memory_of()["anon"] - anon_before
    index = None
    if faiss_module is not None:
        index = faiss_module.IndexFlatIP(dim)
        index.add(matrix)

    def ours(p: np.ndarray) -> int:
        match = gallery.search(p)
        assert match is not None
        return int(uuid.UUID(match.face_id))

    def plain(p: np.ndarray) -> int:
        return int(np.argmax(matrix @ p))

    def flat(p: np.ndarray) -> int:
        return int(index.search(p.reshape(1, -1), 1)[1][0, 0])

    methods: List[Tuple[str, Callable[[np.ndarray], int]]] = [("gallery", ours), ("numpy", plain)]
    if index is not None:
        methods.append(("faiss", flat))
    times, answers = take_turns(methods, probes)
    reference = np.array(answers["numpy"])
    near = expected >= 0
    result: Dict[str, Any] = {
        "n": n, "dim": dim, "probes": len(probes), "gallery_apply_s": round(build_s, 3),
        "raw_bytes": n * dim * 4, "gallery_anon_bytes": gallery_anon,
        "planted_found_by_numpy": float((reference[near] == expected[near]).mean()),
    }
    for name, _ in methods:
        result[name] = Stats.of(times[name]).as_dict()
        result[f"{name}_agrees_with_numpy"] = float((np.array(answers[name]) == reference).mean())
    return result  # the gallery and the index go with this frame


def run_search(sizes: Sequence[int], dims: Sequence[int], probe_count: int) -> Dict[str, Any]:
    try:
        import faiss  # noqa: F401 - optional peer
        faiss_module: Any = faiss
    except ImportError:
        faiss_module = None
    rows: List[Dict[str, Any]] = []
    share = CpuShare().start()
    for dim in dims:
        biggest = random_unit_rows(max(sizes), dim, seed=dim)
        for n in sorted(sizes):
            matrix = biggest[:n]
            probes, expected = probes_for(matrix, probe_count, seed=n + dim)
            rows.append(time_search(matrix, probes, expected, faiss_module))
            print(f"  search dim {dim} n {size_label(n)}: gallery "
                  f"{rows[-1]['gallery']['median']:.3f} ms", file=sys.stderr)
        del biggest
        gc.collect()
    return {"rows": rows, "cpu": share.stop(),
            "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS", "default (all cores)"),
            "faiss_threads": faiss_module.omp_get_max_threads() if faiss_module else None}


def search_table(result: Dict[str, Any]) -> str:
    out = []
    for r in result["rows"]:
        g, npy = r["gallery"], r["numpy"]
        fa = r.get("faiss")
        goal = GOAL_MS.get(r["n"])
        verdict = "" if goal is None else (
            f"< {goal:g} ms: {'met' if g['median'] < goal else 'missed'}")
        gbps = r["raw_bytes"] / (g["median"] / 1000.0) / 1e9
        out.append((r["dim"], size_label(r["n"]), g["median"], g["p90"], npy["median"],
                    npy["p90"], fa["median"] if fa else float("nan"),
                    fa["p90"] if fa else float("nan"), ratio(g["median"], npy["median"]),
                    ratio(g["median"], fa["median"]) if fa else float("nan"), gbps, verdict))
    headers = ("dim", "faces", "Gallery median ms", "p90", "numpy median ms", "p90",
               "faiss Flat median ms", "p90", "Gallery / numpy", "Gallery / faiss",
               "Gallery GB/s", "goal")
    return markdown_table(headers, out)


def memory_table(result: Dict[str, Any]) -> str:
    out = [(r["dim"], size_label(r["n"]), mib(r["raw_bytes"]), mib(r["gallery_anon_bytes"]),
            ratio(r["gallery_anon_bytes"], r["raw_bytes"]), r["gallery_apply_s"],
            r["n"] / r["gallery_apply_s"] if r["gallery_apply_s"] else float("nan"))
           for r in result["rows"]]
    return markdown_table(("dim", "faces", "raw features MiB", "gallery anon MiB",
                           "× raw", "apply() s", "AddFace/s"), out)


# ============================================================== cold start

def fixture_dir(n: int, dim: int) -> Path:
    return RESULTS_DIR / f"coldstart-{size_label(n)}-d{dim}"


async def _write_fixture(data_dir: Path, n: int, dim: int) -> None:
    store = Store(data_dir, gallery=None, min_free_bytes=0,
                  map_size_bytes=int(n * (dim * 4 + 600) * 1.3) + (64 << 20))
    await store.open()
    group_ids = [f"bench-group-{g}" for g in range(FIXTURE_GROUPS)]

    def groups(txn: Txn) -> Tuple[None, None]:
        for gid in group_ids:
            permissions.put(txn, {"permission_id": gid, "permission_name": gid,
                                  "description": "benchmark fixture"})
        return None, None

    def batch(txn: Txn, start: int, block: np.ndarray) -> Tuple[None, None]:
        records = []
        for offset, feature in enumerate(block):
            i = start + offset
            face_id = str(uuid.UUID(bytes=os.urandom(16), version=4))
            image_id = str(uuid.UUID(bytes=os.urandom(16), version=4))
            identity_id = f"bench-{i:08d}"
            records.append(faces.make_record(face_id, identity_id, image_id, feature))
            identities.put(txn, {
                "identity_id": identity_id, "identity_name": f"person {i}",
                "user_type": "employee", "permission_ids": [group_ids[i % FIXTURE_GROUPS]],
                "ext_user_info": {}, "face_ids": [face_id], "register_image_ids": [image_id],
            })
        faces.put_many(txn, records)  # one write per feature block, as a bulk import would
        return None, None

    try:
        await store.write(groups)  # opening stamped the current layout: no upgrade later
        for start in range(0, n, FIXTURE_FACES_PER_TXN):
            count = min(FIXTURE_FACES_PER_TXN, n - start)
            block = random_unit_rows(count, dim, seed=start * 7 + dim)
            await store.write(batch, start, block)
            if start % 200_000 == 0:
                print(f"  fixture {size_label(n)} d{dim}: {start} faces written", file=sys.stderr)
    finally:
        await store.close()


def store_fingerprint() -> str:
    """Digest of the store's sources: a fixture written by other store code is rebuilt, so
    a layout change (and its one-off upgrade at open) never leaks into the timings."""
    digest = hashlib.sha256()
    for path in sorted((PROJECT_DIR / "sophon_face" / "store").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_fixture(n: int, dim: int) -> Tuple[Path, Optional[float]]:
    """The fixture's data dir, and the seconds it took to build (None if cached)."""
    data_dir = fixture_dir(n, dim)
    marker = data_dir / "complete.json"
    fingerprint = store_fingerprint()
    if marker.is_file() and json.loads(marker.read_text()).get("store") == fingerprint:
        return data_dir, None
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    started = time.perf_counter()
    asyncio.run(_write_fixture(data_dir, n, dim))
    took = time.perf_counter() - started
    marker.write_text(json.dumps({"faces": n, "dim": dim, "build_s": round(took, 1),
                                  "store": fingerprint}))
    return data_dir, took


def evict_from_page_cache(data_dir: Path) -> bool:
    """Drop the LMDB file's clean pages from the page cache (no root needed)."""
    ok = True
    for path in (data_dir / "lmdb").glob("*.mdb"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            ok = False
        finally:
            os.close(fd)
    return ok


def coldstart_child(data_dir: str, dim: int) -> None:
    """In a fresh process: open the Store, rebuild the gallery; print one JSON line."""
    before = memory_of()
    gallery = Gallery(dim)
    store = Store(data_dir, gallery=gallery, min_free_bytes=0)

    cpu: Dict[str, float] = {}

    async def cycle() -> Tuple[float, Dict[str, int]]:
        started = time.perf_counter()
        cpu_started = time.process_time()
        await store.open()
        took = time.perf_counter() - started
        cpu["cpu_s"] = time.process_time() - cpu_started  # all threads of this process
        opened = memory_of()  # with the LMDB map still in place
        await store.close()
        return took, opened

    took, after = asyncio.run(cycle())
    print(json.dumps({
        "open_s": took, "open_cpu_s": cpu["cpu_s"], "faces": gallery.count(),
        # The groups must have been loaded too: each fixture group holds a tenth.
        "faces_in_first_group": gallery.count_in_group("bench-group-0"),
        "before": before, "after": after,
    }))


def run_coldstart(n: int, dims: Sequence[int], repeats: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {"faces": n, "runs": []}
    for dim in dims:
        data_dir, build_s = ensure_fixture(n, dim)
        size = sum(p.stat().st_size for p in (data_dir / "lmdb").glob("*.mdb"))
        for attempt in range(repeats):
            # First a boot (file not cached), then restarts (file in the page cache).
            cache = "evicted" if attempt == 0 and evict_from_page_cache(data_dir) else "cached"
            share = CpuShare().start()
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--coldstart-child",
                 str(data_dir), str(dim)],
                check=True, capture_output=True, text=True)
            process_s = time.perf_counter() - started
            child = json.loads(done.stdout.strip().splitlines()[-1])
            raw = n * dim * 4
            anon = child["after"]["anon"] - child["before"]["anon"]
            out["runs"].append({
                "dim": dim, "page_cache": cache, "open_s": round(child["open_s"], 3),
                "open_cpu_s": round(child.get("open_cpu_s", float("nan")), 3),
                "process_s": round(process_s, 3), "faces": child["faces"],
                "faces_in_first_group": child["faces_in_first_group"], "lmdb_bytes": size,
                "fixture_build_s": build_s, "raw_bytes": raw, "gallery_anon_bytes": anon,
                "anon_ratio": anon / raw, "file_rss_bytes": child["after"]["file"],
                "cpu": share.stop(),
            })
            r = out["runs"][-1]
            print(f"  cold start d{dim} ({cache}): {r['open_s']:.2f} s", file=sys.stderr)
    return out


def coldstart_table(result: Dict[str, Any]) -> str:
    rows = []
    for r in result["runs"]:
        rows.append((r["dim"], size_label(r["faces"]), r["page_cache"], r["open_s"],
                     r.get("open_cpu_s"), r["cpu"].get("others_cores"),
                     f"{'met' if r['open_s'] < COLDSTART_GOAL_S else 'missed'}",
                     mib(r["lmdb_bytes"]), mib(r["raw_bytes"]), mib(r["gallery_anon_bytes"]),
                     r["anon_ratio"],
                     f"{'met' if r['anon_ratio'] <= MEMORY_GOAL_RATIO else 'missed'}",
                     mib(r["file_rss_bytes"])))
    return markdown_table(("dim", "faces", "LMDB file", "open + rebuild s",
                           "CPU s (all threads)", "others' cores", "< 5 s",
                           "LMDB MiB", "raw features MiB", "gallery anon MiB", "× raw",
                           "≤ 1.2×", "file-backed RSS MiB"), rows)


# ============================================================== the 512-d gallery

def reference_of(txn: Txn, dim: int) -> Tuple[np.ndarray, List[bytes], np.ndarray]:
    """The fixture's features as one normalised float32 matrix (the exact baseline), each
    row's face key, and each row's fixture group (identity i is in group i % 10)."""
    index = faces.gallery_index(txn)
    order = np.argsort(index.slots, kind="stable")
    matrix = np.empty((len(order), dim), dtype=np.float32)
    start = 0
    for chunk in feature_blocks.iter_feature_rows(txn, dim, index.slots[order]):
        matrix[start:start + len(chunk)] = chunk
        start += len(chunk)
    # The gallery's own routine, so both sides score the very same unit rows.
    gallery_library.normalise_rows(matrix)
    row_keys = [index.keys[i] for i in order.tolist()]
    number = np.array([int(identity[len("bench-"):]) % FIXTURE_GROUPS
                       for identity in index.identity_ids], dtype=np.int16)
    groups = number[index.identities[order]]
    return matrix, row_keys, groups


#: Two float32 scores of one row computed by different BLAS kernels (matrix-matrix vs
#: matrix-vector) differ by at most 2 * gamma_512 = 6.1e-5 (unit rows and probe); a winner
#: ahead by more than twice that is the matrix-vector product's winner too.
KERNEL_GAP = 1.3e-4


def reference_answers(matrix: np.ndarray, probes: np.ndarray,
                      rows: Optional[np.ndarray] = None, block: int = 64) -> np.ndarray:
    """Top-1 row of every probe exactly as numpy's float32 ``matrix @ probe`` and argmax
    gives it, optionally among ``rows`` only. Blocks of probes go through one matrix-matrix
    product; a probe whose two best rows are closer than ``KERNEL_GAP`` (where the two
    kernels' rounding could swap them) is answered by the matrix-vector product itself."""
    scope = matrix if rows is None else matrix[rows]
    out = np.empty(len(probes), dtype=np.int64)
    rechecked = 0
    for start in range(0, len(probes), block):
        part = probes[start:start + block]
        scores = scope @ part.T
        best = np.argmax(scores, axis=0)
        columns = np.arange(len(part))
        top = scores[best, columns].copy()
        scores[best, columns] = -np.inf
        runner_up = scores.max(axis=0)
        for j in range(len(part)):
            if top[j] - runner_up[j] < KERNEL_GAP:
                best[j] = int(np.argmax(scope @ part[j]))
                rechecked += 1
        out[start:start + len(part)] = best if rows is None else rows[best]
    return out


def percentiles(samples: Sequence[float]) -> Dict[str, float]:
    values = np.asarray(samples, dtype=np.float64)
    return {"p50": round(float(np.percentile(values, 50)), 3),
            "p99": round(float(np.percentile(values, 99)), 3),
            "mean": round(float(values.mean()), 3), "n": int(values.size)}


async def _gallery_run(data_dir: Path, n: int, dim: int, timing_probes: int,
                       agreement_probes: int, group_probes: int,
                       kernel: Optional[str]) -> Dict[str, Any]:
    gallery = Gallery(dim, scan_kernel=kernel)
    store = Store(data_dir, gallery=gallery, min_free_bytes=0)
    await store.open()
    try:
        return await store.read(_gallery_measure, gallery, n, dim, timing_probes,
                                agreement_probes, group_probes)
    finally:
        await store.close()


def _gallery_measure(txn: Txn, gallery: Gallery, n: int, dim: int, timing_probes: int,
                     agreement_probes: int, group_probes: int) -> Dict[str, Any]:
    matrix, row_keys, groups = reference_of(txn, dim)
    row_of = {key: row for row, key in enumerate(row_keys)}
    group_id = "bench-group-0"
    group_rows = np.flatnonzero(groups == 0)

    def ours(p: np.ndarray) -> int:
        match = gallery.search(p, None, txn)
        assert match is not None
        return row_of[keys.uuid_key(match.face_id)]

    def ours_in_group(p: np.ndarray) -> int:
        match = gallery.search(p, group_id, txn)
        assert match is not None
        return row_of[keys.uuid_key(match.face_id)]

    def plain(p: np.ndarray) -> int:
        return int(np.argmax(matrix @ p))

    def plain_in_group(p: np.ndarray) -> int:
        return int(group_rows[np.argmax(matrix[group_rows] @ p)])

    share = CpuShare().start()
    probes, _ = probes_for(matrix, timing_probes, seed=n + dim)
    times, answers = take_turns([("gallery", ours), ("numpy", plain)], probes)
    group_times, group_answers = take_turns(
        [("gallery", ours_in_group), ("numpy", plain_in_group)], probes[:max(50, len(probes) // 4)])
    timing_cpu = share.stop()
    # Agreement on many more probes (untimed): the gallery one probe at a time, the
    # reference in blocks (a matrix product is the same float32 arithmetic per probe).
    started = time.perf_counter()
    many, _ = probes_for(matrix, agreement_probes, seed=n + dim + 1)
    got = np.array([ours(p) for p in many])
    gallery_s = time.perf_counter() - started
    want = reference_answers(matrix, many)
    group_many = many[:group_probes]
    got_group = np.array([ours_in_group(p) for p in group_many])
    want_group = reference_answers(matrix, group_many, group_rows)
    disagreements = [{"probe": int(i), "gallery_row": int(got[i]), "numpy_row": int(want[i]),
                      "gallery_score": float(matrix[got[i]] @ many[i]),
                      "numpy_score": float(matrix[want[i]] @ many[i])}
                     for i in np.flatnonzero(got != want)[:10].tolist()]
    return {
        "n": n, "dim": dim, "kernel": gallery.scan_kernel,
        "gallery_ms": percentiles(times["gallery"]), "numpy_ms": percentiles(times["numpy"]),
        "timing_agreement": float(np.mean(np.array(answers["gallery"]) ==
                                          np.array(answers["numpy"]))),
        "group_faces": int(group_rows.size),
        "group_gallery_ms": percentiles(group_times["gallery"]),
        "group_numpy_ms": percentiles(group_times["numpy"]),
        "agreement_probes": int(len(many)),
        "top1_agreement": float(np.mean(got == want)),
        "group_agreement_probes": int(len(group_many)),
        "group_top1_agreement": float(np.mean(got_group == want_group)),
        "disagreements": disagreements,
        "agreement_gallery_ms_mean": round(gallery_s * 1000.0 / max(1, len(many)), 3),
        "cpu": timing_cpu,
    }


def run_gallery(sizes: Sequence[int], dim: int, timing_probes: int, agreement_probes: int,
                group_probes: int, kernel: Optional[str] = None) -> Dict[str, Any]:
    rows = []
    for n in sorted(sizes):
        data_dir, _ = ensure_fixture(n, dim)
        rows.append(asyncio.run(_gallery_run(data_dir, n, dim, timing_probes,
                                             agreement_probes, group_probes, kernel)))
        gc.collect()
        r = rows[-1]
        print(f"  gallery d{dim} {size_label(n)}: {r['gallery_ms']['p50']:.1f} ms vs numpy "
              f"{r['numpy_ms']['p50']:.1f} ms, agreement {r['top1_agreement']:.4f}",
              file=sys.stderr)
    return {"rows": rows}


def gallery_table(result: Dict[str, Any]) -> str:
    out = []
    for r in result["rows"]:
        g, npy = r["gallery_ms"], r["numpy_ms"]
        out.append((size_label(r["n"]), r["kernel"], npy["p50"], npy["p99"], g["p50"], g["p99"],
                    ratio(npy["p50"], g["p50"]),
                    f"{100 * r['top1_agreement']:.2f} % of {r['agreement_probes']}",
                    f"{r['group_numpy_ms']['p50']:.2f} / {r['group_gallery_ms']['p50']:.2f}",
                    f"{100 * r['group_top1_agreement']:.2f} % of {r['group_agreement_probes']}",
                    r["cpu"].get("others_cores")))
    return markdown_table(("faces", "scan", "numpy fp32 p50 ms", "p99", "gallery p50 ms", "p99",
                           "speed-up", "top-1 = numpy", "group of 10 %: numpy / gallery p50 ms",
                           "group top-1 = numpy", "others' cores"), out)


# ============================================================== enrolment

def enrol_daemon(mode: str, threads: int) -> DaemonProcess:
    """A fresh daemon: one worker of ``threads`` intra-op threads, room for 10M faces."""
    return DaemonProcess.in_temp_dir(f"bench-{mode}-", {
        "workers": {"count": 1, "intra_op_threads": threads},
        "recognition": {"library_capacity": 10_000_000},
    })


def run_clients(port: int, bodies: Sequence[bytes], concurrency: int) -> Dict[str, Any]:
    """Every body POSTed to createidentity once, by ``concurrency`` keep-alive clients."""
    lock = threading.Lock()
    cursor = itertools.count()
    latencies: List[float] = []
    errors: Counter = Counter()
    gate = threading.Barrier(concurrency + 1)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        gate.wait()
        while True:
            i = next(cursor)
            if i >= len(bodies):
                break
            t0 = time.perf_counter()
            conn.request("POST", "/sophon/v2/face/createidentity", body=bodies[i],
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            ms = (time.perf_counter() - t0) * 1000.0
            with lock:
                if response.status == 200:
                    latencies.append(ms)
                else:
                    try:
                        errors[json.loads(payload)["error"]["code"]] += 1
                    except (ValueError, KeyError):
                        errors[f"HTTP {response.status}"] += 1
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    gate.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall_s = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": len(bodies), "ok": len(latencies),
            "errors": dict(errors), "wall_s": round(wall_s, 3),
            "faces_per_s": len(latencies) / wall_s if wall_s else float("nan"),
            "latency_ms": Stats.of(latencies).as_dict()}


def feature_bodies(count: int, dim: int, seed: int) -> List[bytes]:
    features = random_unit_rows(count, dim, seed)
    return [json.dumps({"register_feature": base64.b64encode(f.astype("<f4").tobytes()).decode(),
                        "identity_name": "bench"}).encode() for f in features]


def image_bodies(count: int, photos: Sequence[bytes]) -> List[bytes]:
    encoded = [base64.b64encode(p).decode("ascii") for p in photos]
    return [json.dumps({"register_image": encoded[i % len(encoded)], "fiqa_level": "no",
                        "identity_name": "bench"}).encode() for i in range(count)]


def enrol_photos() -> List[bytes]:
    """Photos with one clear face: tests/data (licence-clear) and the devset, read in place."""
    skip = {"no_face_coffee.jpg"}
    paths = [p for p in sorted(TEST_DATA_DIR.iterdir())
             if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in skip]
    if DEVSET_DIR.is_dir():
        paths += sorted(p for p in DEVSET_DIR.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return [p.read_bytes() for p in paths]


def run_enrol(feature_requests: int, image_requests: int, threads: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {"runs": []}
    photos = enrol_photos()
    for mode in ("register_feature", "register_image"):
        daemon = enrol_daemon(mode, threads)
        try:
            idle = memory_of(daemon.process.pid)
            out.setdefault("daemon_idle_memory", idle)
            dim = int(daemon.request("GET", "/health", fresh=True)[1]["feature_dim"])
            for concurrency in CONCURRENCY:
                if mode == "register_feature":
                    bodies = feature_bodies(feature_requests, dim, seed=concurrency)
                    warm = feature_bodies(5, dim, seed=99)
                else:
                    bodies = image_bodies(image_requests, photos[concurrency:] + photos[:concurrency])
                    warm = image_bodies(2, photos)
                run_clients(daemon.port, warm, 1)
                share = CpuShare([daemon.process.pid]).start()
                result = run_clients(daemon.port, bodies, concurrency)
                result["cpu"] = share.stop()
                result["mode"] = mode
                result["daemon_memory"] = memory_of(daemon.process.pid)
                out["runs"].append(result)
                print(f"  enrol {mode} x{concurrency}: {result['faces_per_s']:.1f} faces/s",
                      file=sys.stderr)
        finally:
            daemon.stop()
    return out


def enrol_table(result: Dict[str, Any]) -> str:
    rows = [(r["mode"], r["concurrency"], r["ok"], r["faces_per_s"], r["latency_ms"]["median"],
             r["latency_ms"]["p90"], ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "—",
             r["cpu"].get("ours_cores"), r["cpu"].get("others_cores"))
            for r in result["runs"]]
    return markdown_table(("source", "clients", "faces", "faces/s", "latency median ms",
                           "p90 ms", "errors", "our CPU cores", "others' CPU cores"), rows)


# ============================================================== main

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="search,gallery,coldstart,enrol",
                        help="comma-separated sections: search, gallery, coldstart, enrol")
    parser.add_argument("--sizes", default=",".join(size_label(s) for s in DEFAULT_SIZES))
    parser.add_argument("--dims", default=",".join(str(d) for d in DEFAULT_DIMS))
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--coldstart-faces", default="1M")
    parser.add_argument("--coldstart-dims", default="128,512")
    parser.add_argument("--coldstart-repeats", type=int, default=2,
                        help="first with the LMDB file evicted from the page cache, then cached")
    parser.add_argument("--gallery-sizes", default="100k,1M",
                        help="section gallery: fixture sizes (512-d, store-backed gallery)")
    parser.add_argument("--gallery-dim", type=int, default=512)
    parser.add_argument("--gallery-kernel", default=None, choices=("simsimd", "numpy"),
                        help="the gallery's int8 kernel (default: simsimd when installed)")
    parser.add_argument("--timing-probes", type=int, default=300)
    parser.add_argument("--agreement-probes", type=int, default=10_000)
    parser.add_argument("--group-probes", type=int, default=1000)
    parser.add_argument("--feature-requests", type=int, default=1500)
    parser.add_argument("--image-requests", type=int, default=120)
    parser.add_argument("--threads", type=int, default=2, help="daemon intra-op threads")
    parser.add_argument("--quick", action="store_true",
                        help="10k/50k dim 128, 50 probes; 100k cold start; short enrolment")
    parser.add_argument("--coldstart-child", nargs=2, metavar=("DATA_DIR", "DIM"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.coldstart_child:
        coldstart_child(args.coldstart_child[0], int(args.coldstart_child[1]))
        return 0
    if args.quick:
        args.sizes, args.dims, args.probes = "10k,50k", "128", 50
        args.gallery_sizes, args.timing_probes = "100k", 100
        args.agreement_probes, args.group_probes = 1000, 200
        args.coldstart_faces, args.coldstart_dims = "100k", "128"
        args.feature_requests, args.image_requests = 300, 24
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]

    facts = machine()
    payload: Dict[str, Any] = {"machine": facts, "args": vars(args)}
    print(f"# Gallery benchmark\n\nMachine: {describe_machine(facts)}\n")
    if "search" in sections:
        result = run_search(sizes, dims, args.probes)
        payload["search"] = result
        cpu = result["cpu"]
        print(f"## Exact top-1 search, one probe at a time ({args.probes} probes)\n")
        print(f"BLAS threads: {result['blas_threads_env']}; faiss threads: "
              f"{result['faiss_threads']}; CPU of other processes while measuring: "
              f"{cpu.get('others_cores')} cores\n")
        print(search_table(result) + "\n")
        disagree = [r for r in result["rows"]
                    if r["gallery_agrees_with_numpy"] < 1.0 or r.get("faiss_agrees_with_numpy", 1.0) < 1.0]
        print("Top-1 agreement with numpy: " + ("100% everywhere" if not disagree else
              "; ".join(f"d{r['dim']} {size_label(r['n'])}: gallery "
                        f"{r['gallery_agrees_with_numpy']:.3f}, faiss "
                        f"{r.get('faiss_agrees_with_numpy', float('nan')):.3f}" for r in disagree)) + "\n")
        print("### Gallery built by apply() (in-process RssAnon delta; capacity grows 1.25x)\n")
        print(memory_table(result) + "\n")
    if "gallery" in sections:
        result = run_gallery([parse_size(x) for x in args.gallery_sizes.split(",")],
                             args.gallery_dim, args.timing_probes, args.agreement_probes,
                             args.group_probes, args.gallery_kernel)
        payload["gallery"] = result
        print(f"## The {args.gallery_dim}-d gallery: int8 scan + exact re-ranking vs numpy's "
              "exact float32 matrix-vector product (same process, same probes)\n")
        print(gallery_table(result) + "\n")
    if "coldstart" in sections:
        result = run_coldstart(parse_size(args.coldstart_faces),
                               [int(d) for d in args.coldstart_dims.split(",")],
                               args.coldstart_repeats)
        payload["coldstart"] = result
        print("## Cold start: Store.open() with the gallery rebuild, fresh process\n")
        print(coldstart_table(result) + "\n")
    if "enrol" in sections:
        result = run_enrol(args.feature_requests, args.image_requests, args.threads)
        payload["enrol"] = result
        idle = result.get("daemon_idle_memory", {})
        print("## Enrolment throughput: createidentity against a daemon subprocess\n")
        print(f"Daemon idle (models loaded, empty store): RSS {mib(idle.get('rss', 0)):.0f} MiB "
              f"(anon {mib(idle.get('anon', 0)):.0f} MiB)\n")
        print(enrol_table(result) + "\n")
    path = save_results("search", payload)
    print(f"Results: {path.relative_to(PROJECT_DIR)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
